"""Write a MovieLens dataset as a LightGCN-format split (`train.txt`, `test.txt`: `user item item ...` per line).

    python -m bench.write_lightgcn_split --dataset ml-1m --data-dir /work/shared/datasets --out runs/lightgcn-ml1m

The recipe LightGCN/NGCF describe for their data: ratings > 3.5 kept as positives, users with >= 5 of them,
then per user a seeded 80/20 split of their items (round(0.8 n) to train, at least one to each side); users and
items renumbered 0.. in sorted order of the original ids, as their files are. The files are derived MovieLens
data: they go under runs/ or /tmp, never into the repository.
"""

from __future__ import annotations

import argparse
import sys

from pathlib import Path

import numpy as np

from multivae.data import download as dl
from multivae.data.readers import MOVIELENS_FILES, read_movielens
from multivae.errors import UserError, run_cli
from multivae.files import atomic_write_json, atomic_write_text, check_writable_dir


def lightgcn_split(df, min_rating: float = 3.5, min_user_items: int = 5, train_fraction: float = 0.8, seed: int = 2020):
    """(train, test, stats): per renumbered user, sorted lists of renumbered items."""
    df = df[df["rating"] > min_rating].drop_duplicates(["user", "item"])
    counts = df.groupby("user").size()
    df = df[df["user"].isin(counts.index[counts >= min_user_items])]
    users = np.sort(df["user"].unique())
    items = np.sort(df["item"].unique())
    u = np.searchsorted(users, df["user"].to_numpy())
    i = np.searchsorted(items, df["item"].to_numpy())
    order = np.lexsort((i, u))                 # by user, items ascending: the draw does not depend on file order
    u, i = u[order], i[order]
    starts = np.r_[0, np.flatnonzero(np.diff(u)) + 1, len(u)]
    rng = np.random.default_rng(seed)
    train, test = [], []
    for s, e in zip(starts[:-1], starts[1:]):
        n = e - s
        n_train = min(max(int(round(train_fraction * n)), 1), n - 1)
        perm = rng.permutation(n)
        train.append(np.sort(i[s:e][perm[:n_train]]))
        test.append(np.sort(i[s:e][perm[n_train:]]))
    stats = {"users": len(users), "items": len(items), "interactions": int(len(u)),
             "train_interactions": int(sum(len(t) for t in train)), "test_interactions": int(sum(len(t) for t in test)),
             "min_rating": min_rating, "min_user_items": min_user_items, "train_fraction": train_fraction, "seed": seed}
    return train, test, stats


def lines(rows) -> str:
    return "".join(f"{u} {' '.join(map(str, r))}\n" for u, r in enumerate(rows))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.write_lightgcn_split", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="ml-1m", choices=list(MOVIELENS_FILES))
    p.add_argument("--data-dir", required=True, help="folder with an extracted MovieLens copy (or its parent)")
    p.add_argument("--out", default="runs/lightgcn-ml1m")
    p.add_argument("--seed", type=int, default=2020)
    args = p.parse_args(argv)
    folder = dl.find_local(args.dataset, args.data_dir)
    if folder is None:
        raise UserError(f"{args.data_dir}: no {args.dataset} copy there")
    out = Path(args.out)
    check_writable_dir(out, "--out")
    train, test, stats = lightgcn_split(read_movielens(args.dataset, folder), seed=args.seed)
    atomic_write_text(out / "train.txt", lines(train))
    atomic_write_text(out / "test.txt", lines(test))
    atomic_write_json(out / "split.json", {"source": str(folder), **stats})
    print(f"{args.dataset}: {stats['users']:,} users x {stats['items']:,} items; train {stats['train_interactions']:,} / "
          f"test {stats['test_interactions']:,} interactions -> {out}/train.txt, {out}/test.txt", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="bench.write_lightgcn_split"))
