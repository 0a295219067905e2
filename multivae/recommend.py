"""Top-K recommendation from a trained model: never an item the user already has, scores labelled.

    python -m multivae.recommend --checkpoint runs/ml-1m --user 123 456 -k 10
    python -m multivae.recommend --checkpoint runs/ml-1m --items-file new_users.csv -k 10 --format json
    python -m multivae.recommend --checkpoint runs/ml-1m --all-users --out recs.parquet

`--checkpoint` is a model folder (`multivae.artifact`), a train run (its `model/`), a search experiment (its
`best_model/`), or, for runs made before model folders existed, a checkpoint file whose processed split is
still cached. A known user's input and mask are everything the data has for them: for validation and test
users the fold-in and the held-out target together. New users come as a CSV `user,item` (original ids).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from multivae.artifact import ModelDir, blend_score_meaning, find_model_dir, known_from_split, load_model_dir, score_meaning
from multivae.batch import SparseBatch
from multivae.checkpoint import check_weights, load_checkpoint
from multivae.config import from_dict
from multivae.errors import ArgParser, UserError, run_cli, short_repr
from multivae.model import ModelConfig, build_model

FORMATS = ("table", "csv", "json", "parquet")


def load_model_for_inference(path: str | Path) -> tuple[torch.nn.Module, np.ndarray, dict]:
    """The best-by-validation model of a checkpoint file, in eval mode, with its item ids."""
    payload = load_checkpoint(path)
    if "item_ids" not in payload:
        raise UserError(f"{path}: checkpoint has no item ids; it cannot map recommendations back to items")
    model_cfg = from_dict(ModelConfig, payload.get("model_config"), where=str(path))
    weights = payload["best_model"] if payload.get("best_model") is not None else payload.get("model")
    check_weights(weights, payload.get("n_items"), model_cfg, str(path))   # before the model is allocated
    model = build_model(payload["n_items"], model_cfg)
    model.load_state_dict(weights)
    item_ids = np.asarray(payload["item_ids"])
    if item_ids.ndim != 1 or item_ids.dtype.kind not in "iuU":
        raise UserError(f"{path}: item_ids must be a list of integer or text ids, got {item_ids.dtype} of shape {list(item_ids.shape)}")
    if len(item_ids) != model.n_items:
        raise UserError(f"{path}: checkpoint has {len(item_ids)} item ids for a {model.n_items}-item model")
    return model.eval(), item_ids, payload


@torch.no_grad()
def top_k(model: torch.nn.Module, rows: sp.csr_matrix, k: int, batch_size: int = 2000,
          mask: sp.csr_matrix | None = None, blend: tuple[float, torch.Tensor] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(indices, scores), each (n_rows, min(k, I)), best first. `rows` are the model's input; the items of
    `mask` (default: `rows`) are never returned: their slots, when the catalogue runs out, score -inf.
    Scores are on the likelihood's scale (`multivae.artifact.score_meaning`): softmax probabilities over the
    whole catalogue for the multinomial, sigmoids for the Bernoulli, the logits themselves for the Gaussian.
    `blend` (weight, EASE's B) ranks by the model's blend with EASE (multivae.blend) and returns its scores."""
    if k < 1:
        raise UserError(f"k must be >= 1, got {k}")
    mask = rows if mask is None else mask
    if mask.shape != rows.shape:
        raise ValueError(f"mask {mask.shape} and rows {rows.shape} differ in shape")
    k = min(k, rows.shape[1])
    likelihood = model.config.likelihood
    device = next(model.parameters()).device
    idx, val = [], []
    blended = None
    if blend is not None:
        from multivae.blend import blend_scorer
        from multivae.ease import ease_scorer
        from multivae.evaluate import model_scorer

        blended, likelihood = blend_scorer(model_scorer(model), ease_scorer(blend[1]), blend[0]), "blend"
    for start in range(0, rows.shape[0], batch_size):
        x = SparseBatch.from_csr(rows, slice(start, start + batch_size)).to(device)
        logits = model(x)[0].float() if blended is None else blended(x)
        lse = torch.logsumexp(logits, dim=1, keepdim=True) if likelihood == "multinomial" else None
        m = SparseBatch.from_csr(mask, slice(start, start + batch_size)).to(device)
        logits[m.row_of_each(), m.indices] = -torch.inf
        top = torch.topk(logits, k, dim=1)
        if likelihood == "multinomial":
            scores = torch.exp(top.values - lse)
        elif likelihood == "bernoulli":
            scores = torch.sigmoid(top.values)
        else:
            scores = top.values.clone()
        scores[torch.isneginf(top.values)] = -torch.inf
        idx.append(top.indices.cpu().numpy())
        val.append(scores.cpu().numpy())
    if not idx:
        return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)
    return np.concatenate(idx), np.concatenate(val)


def rows_from_items(item_lists: Sequence[Sequence], item_ids: np.ndarray, where: str) -> tuple[sp.csr_matrix, list[int]]:
    """Binary rows for new users from their original item ids; unknown items are counted and skipped."""
    index = pd.Index(item_ids)
    as_str = pd.Index(np.asarray(item_ids).astype(str))
    rows, cols, unknown = [], [], 0
    for r, items in enumerate(item_lists):
        items = list(items)
        pos = index.get_indexer(pd.Index(items, dtype=item_ids.dtype)) if items and _castable(items, item_ids) else np.full(len(items), -1)
        if items and (pos < 0).any():   # ids typed as text (a CLI, a CSV of strings) for a model with int ids, or back
            pos = np.where(pos < 0, as_str.get_indexer(pd.Index([str(i) for i in items])), pos)
        unknown += int((pos < 0).sum())
        keep = np.unique(pos[pos >= 0])
        rows.extend([r] * len(keep))
        cols.extend(keep.tolist())
    total = sum(len(x) for x in item_lists)
    if total and unknown == total:
        shown = ", ".join(str(i) for i in list(dict.fromkeys(i for items in item_lists for i in items))[:3])
        raise UserError(f"{where}: none of its {total} item ids (e.g. {shown}) is one of the model's {len(item_ids)} items: "
                        "a file for another dataset or item catalogue?")
    if unknown:
        print(f"{where}: {unknown} item id(s) not in the model's catalogue were ignored", file=sys.stderr)
    m = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(item_lists), len(item_ids)))
    return m, [len(x) for x in item_lists]


def _castable(items: list, item_ids: np.ndarray) -> bool:
    try:
        pd.Index(items, dtype=item_ids.dtype)
        return True
    except (ValueError, TypeError, OverflowError):
        return False


class Recommender:
    """A trained model with its catalogue and what each known user has: `recommend` gives a DataFrame."""

    def __init__(self, model: torch.nn.Module, item_ids: np.ndarray, user_ids: np.ndarray | None = None,
                 known: sp.csr_matrix | None = None, titles: pd.DataFrame | None = None, meta: dict | None = None,
                 path: Path | None = None, device: str = "cpu") -> None:
        self.model = model.eval().to(device)
        self.ease_weights: torch.Tensor | None = None   # a model blended with EASE (from_model_dir sets it)
        self.item_ids = np.asarray(item_ids)
        self.user_ids, self.known = user_ids, known
        self.titles = titles
        self.meta = meta or {}
        self.path = path
        self.metrics: dict = dict(self.meta.get("metrics") or {})
        self._user_index: dict[str, int] | None = None
        self._split_users = None   # legacy checkpoints: loads the cached split on first use

    @property
    def blend(self) -> tuple[float, torch.Tensor] | None:
        """(weight, EASE's B) of a model blended with EASE, else None."""
        if self.ease_weights is None:
            return None
        return float(self.meta["ease_blend"]["weight"]), self.ease_weights

    @property
    def score_meaning(self) -> str:
        if self.blend is not None:
            return blend_score_meaning(self.blend[0])
        return score_meaning(self.model.config, len(self.item_ids))

    @classmethod
    def from_model_dir(cls, md: ModelDir, titles: str | Path | None = None, device: str = "cpu") -> "Recommender":
        from multivae import titles as titles_mod

        where = titles if titles is not None else titles_mod.locate(md.meta.get("dataset"), md.meta.get("source_path"))
        table = titles_mod.read_titles(where) if where is not None else None
        rec = cls(md.model, md.item_ids, md.user_ids, md.known, table, md.meta, md.path, device)
        rec.ease_weights = md.ease_weights
        return rec

    # --- input rows -------------------------------------------------------------------------------------
    def rows_for_users(self, users: Sequence) -> tuple[sp.csr_matrix, list]:
        """Everything each known user has, in the order asked (ids matched as text, so '42' finds 42)."""
        if self.known is None:
            self._load_legacy_split()
        if self._user_index is None:
            self._user_index = {str(u): i for i, u in enumerate(self.user_ids)}
        picked = []
        for u in users:
            r = self._user_index.get(str(u))
            if r is None:
                raise UserError(f"{self.path}: user {u!r} is not one of the {len(self.user_ids):,} users the model was trained "
                                "and tested on; give the user's items instead (--items-file)")
            picked.append(r)
        return self.known[picked], [self.user_ids[r] for r in picked]

    def _load_legacy_split(self) -> None:
        """A checkpoint file made before model folders: its users live in the processed split it names."""
        split_path = self.meta.get("extra", {}).get("split_path")
        if not split_path or not Path(split_path).exists():
            raise UserError(f"{self.path}: the processed split of this checkpoint is not available ({split_path}); "
                            "pass the users' items with --items-file instead, or retrain to get a self-contained model folder")
        from multivae.data.split import SplitData

        split = SplitData.load(split_path)
        if split.n_items != len(self.item_ids) or not np.array_equal(split.item_ids.astype(str), self.item_ids.astype(str)):
            raise UserError(f"{split_path}: this processed split has {split.n_items} items but the checkpoint {self.path} was "
                            f"trained on {len(self.item_ids)} other or differently ordered items; pass the users' items with --items-file instead")
        self.user_ids, self.known = known_from_split(split)

    # --- recommendations --------------------------------------------------------------------------------
    def recommend(self, users: Sequence | None = None, items: Sequence[Sequence] | Mapping[Any, Sequence] | None = None,
                  k: int = 10, batch_size: int = 2000) -> pd.DataFrame:
        """Top-k unseen items per user: columns user, rank (1 = best), item, score (see `score_meaning`, also in
        `df.attrs['score']`), and title / genres when the metadata is known. Give `users` (ids of users the
        model knows) or `items` (for new users: a list of item-id lists, or a dict user -> items)."""
        if (users is None) == (items is None):
            raise UserError("give either users (ids the model knows) or items (the items of new users), not both or neither")
        _check_count("k", k)
        _check_count("batch_size", batch_size)
        if isinstance(users, (str, bytes)) or (users is not None and not isinstance(users, Iterable)):
            raise UserError(f"users must be a list of user ids, got {short_repr(users)}")
        if isinstance(items, (str, bytes)) or (items is not None and not isinstance(items, Iterable)):
            raise UserError(f"items must be a list of item-id lists or a dict user -> items, got {short_repr(items)}")
        if users is not None:
            rows, names = self.rows_for_users(list(users))
        else:
            names = list(items.keys()) if isinstance(items, Mapping) else list(range(len(items)))
            lists = list(items.values()) if isinstance(items, Mapping) else list(items)
            rows, _ = rows_from_items(lists, self.item_ids, "items")
        return self._frame(names, rows, k, batch_size)

    def recommend_all(self, k: int = 10, batch_size: int = 2000) -> pd.DataFrame:
        """`recommend` for every user the model knows (batch scoring)."""
        _check_count("k", k)
        _check_count("batch_size", batch_size)
        if self.known is None:
            self._load_legacy_split()
        return self._frame(list(self.user_ids), self.known, k, batch_size)

    def _frame(self, users: list, rows: sp.csr_matrix, k: int, batch_size: int) -> pd.DataFrame:
        idx, scores = top_k(self.model, rows, k, batch_size, blend=self.blend)
        keep = np.isfinite(scores)
        short = int((~keep).any(axis=1).sum())
        if short:
            print(f"note: {short} user(s) have fewer than {k} items they do not already have; they get fewer than {k} "
                  f"recommendations (catalogue of {len(self.item_ids)} items)", file=sys.stderr)
        n, kk = idx.shape
        user_col = np.repeat(np.asarray(users, dtype=object), kk).reshape(n, kk)
        rank = np.tile(np.arange(1, kk + 1), (n, 1))
        df = pd.DataFrame({"user": user_col[keep], "rank": rank[keep], "item": self.item_ids[idx[keep]],
                           "score": scores[keep].astype(np.float64)})
        df["user"] = pd.Series(df["user"].tolist(), dtype=_id_dtype(self.user_ids, users))
        if self.titles is not None:
            meta = self.titles.reindex(df["item"].astype(str))
            df["title"] = meta["title"].to_numpy()
            if "genres" in meta.columns:
                df["genres"] = meta["genres"].to_numpy()
        df.attrs["score"] = self.score_meaning
        return df


def _check_count(name: str, value: Any) -> None:
    """A keyword of the Python API that counts something: an int >= 1 (not "10", not True, not 2.5)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UserError(f"{name} must be an integer >= 1, got {short_repr(value)}")


def _id_dtype(known_ids: np.ndarray | None, users: list) -> Any:
    if users and all(isinstance(u, (int, np.integer)) for u in users):
        return np.int64
    return object


def load(path: str | Path, titles: str | Path | None = None, device: str = "cpu") -> Recommender:
    """A `Recommender` from a model folder, a train run, a search experiment or (older runs) a checkpoint file."""
    path = Path(path)
    found = find_model_dir(path)
    if found is not None:
        return Recommender.from_model_dir(load_model_dir(found), titles, device)
    model, item_ids, payload = load_model_for_inference(path)
    from multivae import titles as titles_mod

    extra = payload.get("extra", {})
    where = titles if titles is not None else titles_mod.locate(extra.get("dataset"), extra.get("source_path"))
    rec = Recommender(model, item_ids, None, None, titles_mod.read_titles(where) if where is not None else None,
                      {"extra": extra}, path, device)
    return rec


# --- output --------------------------------------------------------------------------------------------

def render(df: pd.DataFrame, fmt: str) -> bytes:
    """The recommendations as `fmt` (table, csv, json, parquet). JSON is strict (no NaN or Infinity)."""
    from multivae.files import dumps_json

    if fmt == "csv":
        return df.to_csv(index=False).encode()
    if fmt == "json":
        records = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
                   for r in df.to_dict(orient="records")]
        return (dumps_json({"score": df.attrs.get("score"), "recommendations": records}) + "\n").encode()
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(df.assign(user=df["user"].astype(str) if df["user"].dtype == object else df["user"]),
                                     preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"score": str(df.attrs.get("score")).encode()})
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return buf.getvalue()
    lines = [f"# score = {df.attrs.get('score')}"]
    shown = df.copy()
    shown["score"] = shown["score"].map(lambda s: f"{s:.6g}")
    lines.append(shown.to_string(index=False) if len(shown) else "(no recommendations)")
    return ("\n".join(lines) + "\n").encode()


def _parser() -> ArgParser:
    p = ArgParser(prog="python -m multivae.recommend", description="Top-K recommendations from a trained model (items a user "
                  "already has are never recommended).")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="a model folder, a train run (its model/), a search experiment (its best_model/) or a checkpoint.pt")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", nargs="+", metavar="ID", help="original ids of users the model was trained or tested on")
    who.add_argument("--items-file", metavar="CSV", help="CSV with columns user,item (original ids) describing new users")
    who.add_argument("--all-users", action="store_true", help="every user the model knows (batch scoring; use with --out)")
    p.add_argument("-k", type=int, default=10, help="how many items per user (default 10; fewer when the catalogue runs out)")
    p.add_argument("--format", choices=FORMATS, help="output format (default: from --out's extension, else table)")
    p.add_argument("--json", action="store_true", help="same as --format json")
    p.add_argument("--out", metavar="FILE", help="write here (atomically) instead of printing; never inside a model folder or a run")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--titles", metavar="FILE", help="titles table (u.item, movies.dat, movies.csv, or CSV/Parquet with "
                   "item,title[,genres]); default: the MovieLens metadata next to the model's ratings file, when there")
    p.add_argument("--batch-size", type=int, default=2000, help="users scored per forward pass (default 2000)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    return p


def _output_format(args: Any) -> str:
    if args.json:
        if args.format not in (None, "json"):
            raise UserError(f"--json contradicts --format {args.format}")
        return "json"
    if args.format:
        fmt = args.format
    elif args.out:
        suffix = Path(args.out).suffix.lower()
        fmt = {".csv": "csv", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}.get(suffix, "table")
    else:
        fmt = "table"
    if fmt == "parquet" and not args.out:
        raise UserError("--format parquet needs --out FILE (Parquet is binary)")
    return fmt


def output_lock(out: Path, overwrite: bool):
    """The checks of `--out FILE`, before any work: not a folder, not inside a model folder or a run (whose files
    `recommend` reads), not an existing file unless `--overwrite`, writable, and no other writer at it. Returns
    its `WriterLock`, taken for the write."""
    from multivae.artifact import enclosing_model_or_run
    from multivae.files import WriterLock, check_writable_dir, lock_beside

    if out.is_dir():
        raise UserError(f"--out {out}: is a directory, expected a file name")
    owner = enclosing_model_or_run(out)
    if owner is not None:
        raise UserError(f"--out {out}: is inside the model folder or run {owner}; write recommendations somewhere else")
    refuse_existing(out, overwrite)
    check_writable_dir(out.parent, "--out")
    lock = WriterLock(lock_beside(out), out, "another multivae.recommend is writing this file",
                      "wait for it to finish, or use another --out")
    lock.refuse_if_live()
    return lock


def refuse_existing(out: Path, overwrite: bool) -> None:
    if not overwrite and (out.exists() or out.is_symlink()):
        raise UserError(f"--out {out}: the file exists; pass --overwrite to replace it")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.k < 1:
        raise UserError(f"-k must be >= 1, got {args.k}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    fmt = _output_format(args)
    lock = output_lock(Path(args.out), args.overwrite) if args.out else None
    from multivae.training import resolve_device

    rec = load(args.checkpoint, titles=args.titles, device=str(resolve_device(args.device)))
    if args.items_file:
        from multivae.data.readers import ids_like, read_table  # the generic CSV/TSV/Parquet reader with clear errors

        df = read_table(args.items_file, user_col="user", item_col="item", rating_col=None)
        df["item"] = ids_like(df["item"], rec.item_ids, args.items_file, "item")
        groups = df.groupby("user", sort=False)["item"].apply(list)
        rows, _ = rows_from_items(list(groups.values), rec.item_ids, args.items_file)
        recs = rec._frame(list(groups.index), rows, args.k, args.batch_size)
    elif args.all_users:
        recs = rec.recommend_all(args.k, args.batch_size)
    else:
        recs = rec.recommend(users=args.user, k=args.k, batch_size=args.batch_size)
    data = render(recs, fmt)
    if fmt == "csv":
        print(f"score = {recs.attrs['score']}", file=sys.stderr)
    if lock is not None:
        from multivae.files import atomic_write_bytes

        with lock:
            refuse_existing(Path(args.out), args.overwrite)   # again, under the lock: another run may have written it
            atomic_write_bytes(args.out, data)
        print(f"wrote {len(recs):,} recommendations for {recs['user'].nunique():,} users to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(data.decode())
    return 0


def cli() -> int:
    """Console-script entry point (`multivae-recommend`)."""
    return run_cli(main, prog="multivae.recommend")


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="multivae.recommend"))
