"""Top-K recommendation from a checkpoint: items the user already has are never recommended.

    python -m multivae.recommend --checkpoint runs/ml-1m --user 123 456 -k 10
    python -m multivae.recommend --checkpoint runs/ml-1m --items-file new_users.csv -k 10

Known users are looked up in the processed split the checkpoint was trained on (train, validation or test
users; their fold-in rows are the input). New users come as a CSV with columns `user,item` (original ids).
Output is in original item ids.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from multivae.batch import SparseBatch
from multivae.checkpoint import load_checkpoint
from multivae.config import from_dict
from multivae.errors import ArgParser, UserError, run_cli
from multivae.model import ModelConfig, build_model


def load_model_for_inference(path: str | Path) -> tuple[torch.nn.Module, np.ndarray, dict]:
    """The best-by-validation model of a checkpoint, in eval mode, with its item ids."""
    payload = load_checkpoint(path)
    if "item_ids" not in payload:
        raise UserError(f"{path}: checkpoint has no item ids; it cannot map recommendations back to items")
    model_cfg = from_dict(ModelConfig, payload["model_config"], where=str(path))
    model = build_model(int(payload["n_items"]), model_cfg)
    weights = payload["best_model"] if payload.get("best_model") is not None else payload["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise UserError(f"{path}: weights do not match the model config ({str(exc).splitlines()[0]})") from None
    item_ids = np.asarray(payload["item_ids"])
    if len(item_ids) != model.n_items:
        raise UserError(f"{path}: checkpoint has {len(item_ids)} item ids for a {model.n_items}-item model")
    return model.eval(), item_ids, payload


@torch.no_grad()
def top_k(model: torch.nn.Module, rows: sp.csr_matrix, k: int, batch_size: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """(indices, scores), each (n_rows, min(k, I)), best first, seen items excluded."""
    if k < 1:
        raise UserError(f"k must be >= 1, got {k}")
    k = min(k, rows.shape[1])
    device = next(model.parameters()).device
    idx, val = [], []
    for start in range(0, rows.shape[0], batch_size):
        x = SparseBatch.from_csr(rows, slice(start, start + batch_size)).to(device)
        scores = model(x)[0].float()
        scores[x.row_of_each(), x.indices] = -torch.inf
        top = torch.topk(scores, k, dim=1)
        idx.append(top.indices.cpu().numpy())
        val.append(top.values.cpu().numpy())
    return np.concatenate(idx), np.concatenate(val)


def rows_from_items(item_lists: Sequence[Sequence], item_ids: np.ndarray, where: str) -> tuple[sp.csr_matrix, list[int]]:
    """Binary rows for new users from their original item ids; unknown items are counted and skipped."""
    index = pd.Index(item_ids)
    rows, cols, unknown = [], [], 0
    for r, items in enumerate(item_lists):
        pos = index.get_indexer(pd.Index(list(items), dtype=item_ids.dtype) if len(items) else pd.Index([]))
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


def _known_user_rows(checkpoint_payload: dict, users: Sequence[str], where: str, item_ids: np.ndarray) -> tuple[sp.csr_matrix, list]:
    """Look the users up in the cached split the model was trained on (which must still have the model's items)."""
    split_path = checkpoint_payload.get("extra", {}).get("split_path")
    if not split_path or not Path(split_path).exists():
        raise UserError(f"{where}: the processed split of this checkpoint is not available ({split_path}); "
                        "pass the users' items with --items-file instead")
    from multivae.data.split import SplitData  # only needed on this path

    split = SplitData.load(split_path)
    if split.n_items != len(item_ids) or not np.array_equal(split.item_ids.astype(str), np.asarray(item_ids).astype(str)):
        raise UserError(f"{split_path}: this processed split has {split.n_items} items but the checkpoint {where} was trained "
                        f"on {len(item_ids)} other or differently ordered items; pass the users' items with --items-file instead")
    sources = [(split.train_user_ids, split.train), (split.val_user_ids, split.val_fold_in), (split.test_user_ids, split.test_fold_in)]
    out_rows, found = [], []
    for u in users:
        for ids, mat in sources:
            hit = np.flatnonzero(ids.astype(str) == str(u))
            if hit.size:
                out_rows.append(mat[hit[0]])
                found.append(ids[hit[0]])
                break
        else:
            raise UserError(f"{where}: user {u!r} is not in the dataset the model was trained on")
    return sp.vstack(out_rows, format="csr"), found


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgParser(prog="python -m multivae.recommend", description="Top-K recommendations from a trained checkpoint.")
    p.add_argument("--checkpoint", required=True, help="checkpoint file or the run directory holding checkpoint.pt")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", nargs="+", help="original ids of users in the training data")
    who.add_argument("--items-file", help="CSV with columns user,item (original ids) describing new users")
    p.add_argument("-k", type=int, default=10, help="how many items per user (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    args = p.parse_args(argv)
    if args.k < 1:
        raise UserError(f"-k must be >= 1, got {args.k}")
    model, item_ids, payload = load_model_for_inference(args.checkpoint)
    if args.items_file:
        from multivae.data.readers import ids_like, read_table  # the generic CSV/TSV/Parquet reader with clear errors

        df = read_table(args.items_file, user_col="user", item_col="item", rating_col=None)
        df["item"] = ids_like(df["item"], item_ids, args.items_file, "item")
        groups = df.groupby("user", sort=False)["item"].apply(list)
        rows, _ = rows_from_items(list(groups.values), item_ids, args.items_file)
        users = list(groups.index)
    else:
        rows, users = _known_user_rows(payload, args.user, args.checkpoint, item_ids)
    idx, scores = top_k(model, rows, args.k)
    for u, items, sc in zip(users, idx, scores):
        recs = [item_ids[i].item() if hasattr(item_ids[i], "item") else item_ids[i] for i in items]
        if args.json:
            print(json.dumps({"user": u.item() if hasattr(u, "item") else u, "items": recs, "scores": [round(float(s), 5) for s in sc]}))
        else:
            print(f"{u}\t" + " ".join(str(r) for r in recs))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="multivae.recommend"))
