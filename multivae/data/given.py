"""Fixed train/(valid/)test files (LightGCN, RecBole, two CSVs) as a weak-generalization `SplitData`.

Formats (`format`; None: from the train file's name, `.inter` recbole, `.csv`/`.tsv` csv, else lightgcn):
- `lightgcn`: one line per user, `user item item ...` (whitespace-separated integers; LightGCN/NGCF `train.txt`);
- `recbole`: RecBole atomic files (`.train.inter` ...): tab-separated, a header `user_id:token\titem_id:token\t...`;
- `csv`: a CSV/TSV/Parquet table with a header, columns `user_col` / `item_col` (`multivae.data.readers.read_table`).
Every row is a positive; nothing is filtered (the files are the benchmark). Duplicated pairs collapse to one.

Weak generalization: every user is scored from all their training items. In `SplitData` terms (all five
matrices have one row per user of the union of the files, users sorted by id; items are the union too):
- `train`         what the model is fitted on: the train file, minus the validation hold-out when there is
                  no valid file;
- `val_fold_in`   = `train`: the input, and the mask, when validating;
- `val_target`    the valid file, or without one a seeded `valid_fraction` of each user's train rows
                  (round(f * n) of n, at least one row left for training; RNG `protocol.seed`, users in id order);
- `test_fold_in`  every known item: train file + valid file (the input, and the mask, when testing);
- `test_target`   the test file, minus pairs already known (counted in the stats).
So validation masks training items and the test masks training and validation items. With a valid file the
test input also holds the validation items (RecBole feeds the training items only, and masks both).
The test file is used once, for the chosen model. `retrain: train+valid` refits the chosen configuration on
`test_fold_in` before the test (for the epochs / lambda chosen on validation); `none` (default) tests the
model selected on validation as is, as RecBole and LightGCN do.
Items seen only in the test file stay columns (their rows count as misses; no model trained without them
can recommend them) and are counted in the stats, as are test users absent from training.
"""

from __future__ import annotations

import re
import sys

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from multivae.data.readers import SEP_OPTION, exact_ids, numeric_text_id, read_table, text_ids_note
from multivae.data.split import SplitData, binary_csr
from multivae.errors import UserError, short_repr

FORMATS = ("lightgcn", "csv", "recbole")
RETRAIN = ("none", "train+valid")
DEFAULT_VALID_FRACTION = 0.1
_LIGHTGCN_ID = re.compile(r"0|[1-9][0-9]*")   # ASCII digits, no sign, no leading zero (`readers.CANONICAL_INT`)

# What each source reports, and the metric its model selection uses (metric names: multivae.metrics).
PAPER_METRICS = (("ndcg@100", "recall@20", "recall@50"), "ndcg@100")
METRIC_PRESETS: dict[str, tuple[tuple[str, ...], str]] = {
    "lightgcn": (("recall_n@20", "ndcg@20", "precision@20"), "recall_n@20"),         # LightGCN/NGCF: @20, recall over n
    "recbole": (("recall_n@10", "ndcg@10", "hit@10", "precision@10", "recall_n@20", "ndcg@20"), "ndcg@10"),
    "csv": (("recall_n@20", "ndcg@20", "precision@20"), "recall_n@20"),
}


def metric_preset(name: str, fmt: str | None = None, train: str | None = None) -> tuple[tuple[str, ...], str]:
    """(metrics, select_metric) of a dataset: the paper's for its split, the source's for given files."""
    if name != "given":
        return PAPER_METRICS
    return METRIC_PRESETS[fmt or infer_format(train or "")]


def infer_format(path: str) -> str:
    name = Path(path).name.lower()
    if name.endswith(".inter"):
        return "recbole"
    if name.endswith((".csv", ".tsv", ".parquet", ".pq", ".csv.gz", ".tsv.gz")):
        return "csv"
    return "lightgcn"


# --- readers: a DataFrame (user, item) in file order ------------------------------------------------

def _lines(path: Path):
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8-sig") as f:   # a UTF-8 BOM is read past, as `--data` (pandas) does
            yield from enumerate(f, start=1)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_lightgcn(path: str | Path) -> pd.DataFrame:
    """`user item item ...` per line; a user with no items is allowed (LightGCN writes some), blank lines skipped."""
    path = Path(path)
    users: list[int] = []
    items: list[int] = []
    for no, line in _lines(path):
        tokens = line.split()
        if not tokens:
            continue
        bad = next((t for t in tokens if not _LIGHTGCN_ID.fullmatch(t)), None)   # not int(): it takes "7_5", "+5", "０"
        if bad is not None:
            what = f"negative id {bad}" if bad.startswith("-") and _LIGHTGCN_ID.fullmatch(bad[1:]) else \
                f"{short_repr(bad)} is not an integer id"
            raise UserError(f"{path}:{no}: {what} (LightGCN format: 'user item item ...', ids written as plain integers)")
        ids = [int(t) for t in tokens]
        if max(ids) >= 2**63:
            raise UserError(f"{path}:{no}: id {short_repr(max(ids))} does not fit in 64 bits (LightGCN format: 'user item item ...')")
        users.extend([ids[0]] * (len(ids) - 1))
        items.extend(ids[1:])
    if not items:
        raise UserError(f"{path}: no interactions (LightGCN format: 'user item item ...' per line)")
    return pd.DataFrame({"user": np.asarray(users, dtype=np.int64), "item": np.asarray(items, dtype=np.int64)})


def read_recbole(path: str | Path, user_field: str = "user_id", item_field: str = "item_id") -> pd.DataFrame:
    """A RecBole atomic file: header `name:type` fields, tab-separated; ids kept as text tokens."""
    path = Path(path)
    lines = _lines(path)
    header = next(lines, None)
    if header is None:
        raise UserError(f"{path}: file is empty (RecBole format: a header like 'user_id:token<TAB>item_id:token')")
    fields = [f.partition(":")[0] for f in header[1].rstrip("\r\n").split("\t")]
    for want in (user_field, item_field):
        if want not in fields:
            raise UserError(f"{path}:1: no {want!r} field in the header {header[1].strip()!r} "
                            f"(RecBole format: 'user_id:token<TAB>item_id:token...')")
    ui, ii, width = fields.index(user_field), fields.index(item_field), len(fields)
    users: list[str] = []
    items: list[str] = []
    for no, line in lines:
        line = line.rstrip("\r\n")
        if not line:
            continue
        cells = line.split("\t")
        if len(cells) != width:
            raise UserError(f"{path}:{no}: {len(cells)} tab-separated fields, the header has {width}")
        if not cells[ui] or not cells[ii]:
            raise UserError(f"{path}:{no}: empty {user_field if not cells[ui] else item_field}")
        users.append(cells[ui])
        items.append(cells[ii])
    if not users:
        raise UserError(f"{path}: no rows (only a header)")
    return pd.DataFrame({"user": users, "item": items})


def read_given(path: str | Path, fmt: str, user_col: str = "user", item_col: str = "item", sep: str | None = None) -> pd.DataFrame:
    if fmt == "lightgcn":
        return read_lightgcn(path)
    if fmt == "recbole":
        return read_recbole(path)
    return read_table(path, user_col=user_col, item_col=item_col, rating_col=None, sep=sep,
                      sep_option=SEP_OPTION)


# --- the split -------------------------------------------------------------------------------------

def _same_id_type(frames: list[pd.DataFrame]) -> list[pd.DataFrame]:
    """Ids by one rule across the files (`readers.exact_ids`): integers when every id of the column in every
    file is a canonical integer, else text everywhere ("5" in one file and "5.0" in another are two ids)."""
    for col in ("user", "item"):
        for f, values in zip(frames, exact_ids([f[col] for f in frames])):
            f[col] = values
    return frames


def _numeric_text_id(frames: list[pd.DataFrame], col: str) -> str | None:
    return next((v for f in frames if (v := numeric_text_id(f[col])) is not None), None)


def hold_out(rows: np.ndarray, n_users: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean per training row: held out for validation. `rows`: each row's user index (the split passes the
    training matrix's pairs, by user then item column, so the draw does not depend on the file's row order).

    Per user (in index order), round(fraction * n) rows drawn without replacement (half rounds up), at most n - 1."""
    rng = np.random.default_rng(seed)
    out = np.zeros(len(rows), dtype=bool)
    order = np.argsort(rows, kind="stable")
    counts = np.bincount(rows, minlength=n_users)
    start = 0
    for n in counts:
        k = min(int(np.floor(fraction * n + 0.5)), n - 1)
        if k > 0:
            out[order[start + rng.choice(n, size=k, replace=False)]] = True
        start += n
    return out


def build_given_split(train: pd.DataFrame, test: pd.DataFrame, valid: pd.DataFrame | None, *, valid_fraction: float = DEFAULT_VALID_FRACTION,
                      seed: int = 98765, fmt: str = "lightgcn", retrain: str = "none", sources: dict | None = None) -> SplitData:
    """The weak-generalization `SplitData` of train/test(/valid) interaction tables (columns user, item)."""
    frames = _same_id_type([f.copy() for f in [train, test] + ([valid] if valid is not None else [])])
    train, test = frames[0], frames[1]
    valid = frames[2] if valid is not None else None
    everything = pd.concat(frames, ignore_index=True)
    user_ids = np.unique(everything["user"].to_numpy())
    item_ids = np.unique(everything["item"].to_numpy())
    shape = (len(user_ids), len(item_ids))

    def index(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return np.searchsorted(user_ids, df["user"].to_numpy()), np.searchsorted(item_ids, df["item"].to_numpy())

    def pairs(m: sp.csr_matrix) -> int:
        return int(m.nnz)

    tr_r, tr_c = index(train)
    train_all = binary_csr(tr_r, tr_c, shape)
    if valid is None:
        # One row per pair first, so a duplicated pair cannot land on both sides.
        coo = train_all.tocoo()
        held = hold_out(coo.row, shape[0], valid_fraction, seed)
        fit = binary_csr(coo.row[~held], coo.col[~held], shape)
        val_target = binary_csr(coo.row[held], coo.col[held], shape)
        known = train_all
        val_source, val_overlap = f"held out: round({valid_fraction} n) of each user's train rows, seed {seed}", 0
    else:
        fit = train_all
        va_r, va_c = index(valid)
        valid_all = binary_csr(va_r, va_c, shape)
        val_target = _minus(valid_all, fit)
        val_overlap = pairs(valid_all) - pairs(val_target)
        known = _union(fit, valid_all)
        val_source = "valid file"
    te_r, te_c = index(test)
    test_all = binary_csr(te_r, te_c, shape)
    test_target = _minus(test_all, known)
    _check_targets(val_target, test_target, pairs(test_all), valid_fraction, sources or {}, with_valid=valid is not None)

    in_fit = np.zeros(shape[1], dtype=bool)
    in_fit[np.unique(fit.indices)] = True
    in_known = np.zeros(shape[1], dtype=bool)
    in_known[np.unique(known.indices)] = True
    test_cols = test_target.indices
    users_known = np.diff(known.indptr) > 0
    test_users = np.diff(test_target.indptr) > 0
    n_inter = pairs(_union(known, test_target))
    stats_override = {
        "users": int(shape[0]),
        "interactions": n_inter,
        "sparsity": 1.0 - n_inter / max(1, shape[0] * shape[1]),
        "protocol": "weak generalization (given files)",
        "format": fmt,
        "validation": val_source,
        "retrain": retrain,
        "train_file_interactions": pairs(train_all),
        "valid_pairs_already_in_train": val_overlap,
        "test_file_interactions": pairs(test_all),
        "test_pairs_already_known": pairs(test_all) - pairs(test_target),
        "test_only_items": int(len(np.unique(test_cols[~in_known[test_cols]]))),      # seen only in the test file
        "test_interactions_on_test_only_items": int((~in_known[test_cols]).sum()),
        "test_users_without_known_items": int((test_users & ~users_known).sum()),
        "items_not_in_fit": int((~in_fit).sum()),    # items the model is never trained on (test-only, or all held out)
        "ids_read_as_text_because_of": {c: v for c in ("user", "item") if (v := _numeric_text_id(frames, c)) is not None},
    }
    info = {"source": sources or {}, "format": fmt, "protocol": "weak", "retrain": retrain, "valid_fraction": valid_fraction,
            "seed": seed, "stats_override": stats_override}
    return SplitData(train=fit, val_fold_in=fit, val_target=val_target, test_fold_in=known, test_target=test_target,
                     item_ids=item_ids, train_user_ids=user_ids, val_user_ids=user_ids, test_user_ids=user_ids, info=info)


def _check_targets(val_target: sp.csr_matrix, test_target: sp.csr_matrix, test_pairs: int, valid_fraction: float,
                   sources: dict, with_valid: bool) -> None:
    """Refuse a split with nothing to validate or to test on (its metrics would be null, silently)."""
    def name(k: str) -> str:
        return sources.get(k) or f"the {k} file"

    if val_target.nnz == 0:
        if with_valid:
            raise UserError(f"{name('valid')}: every pair of the valid file is already in the train file {name('train')}, so "
                            "nothing is left to validate on (the same file twice?)")
        raise UserError(f"{name('train')}: holding out a {valid_fraction:g} share of each user's training rows leaves nothing to "
                        "validate on (no user has enough rows); give a valid file (valid, --valid-file) or a larger valid_fraction")
    if test_target.nnz == 0:
        raise UserError(f"{name('test')}: every one of its {test_pairs:,} pairs is already in the train"
                        f"{' or valid' if with_valid else ''} file, so nothing is left to test on (the same file twice?)")


def _minus(a: sp.csr_matrix, b: sp.csr_matrix) -> sp.csr_matrix:
    """Pairs of binary `a` that are not in binary `b`."""
    out = (a - a.multiply(b)).tocsr()
    out.eliminate_zeros()
    out.sort_indices()
    return out.astype(np.float32)


def _union(a: sp.csr_matrix, b: sp.csr_matrix) -> sp.csr_matrix:
    out = (a + b).tocsr()
    out.data[:] = 1.0
    out.sort_indices()
    return out.astype(np.float32)


def retrain_split(split: SplitData) -> SplitData:
    """`retrain: train+valid`: the same split with `train` = every known item (train + validation). Its
    validation rows are then inside the training data, so the caller fixes the epochs (or lambda) beforehand."""
    return SplitData(train=split.test_fold_in, val_fold_in=split.test_fold_in, val_target=split.val_target,
                     test_fold_in=split.test_fold_in, test_target=split.test_target, item_ids=split.item_ids,
                     train_user_ids=split.train_user_ids, val_user_ids=split.val_user_ids, test_user_ids=split.test_user_ids,
                     info={**split.info, "retrained_on": "train+valid"})


def load_given(cfg, verbose: bool = True) -> SplitData:
    """The split of a `DatasetConfig(name="given", ...)`: the files are read each time (no cache: they are
    the split already, and reading them is the whole cost)."""
    fmt = cfg.format or infer_format(cfg.train)
    paths = {"train": cfg.train, "test": cfg.test, "valid": cfg.valid}
    frames = {k: read_given(Path(p).expanduser(), fmt, cfg.user_col, cfg.item_col, cfg.sep) for k, p in paths.items() if p is not None}
    split = build_given_split(frames["train"], frames["test"], frames.get("valid"), valid_fraction=cfg.valid_fraction,
                              seed=cfg.protocol.seed, fmt=fmt, retrain=cfg.retrain,
                              sources={k: str(Path(p).expanduser().resolve()) for k, p in paths.items() if p is not None})
    split.info.update({"dataset": "given", "source_path": None, "cache_path": None})
    if verbose:
        s = split.stats()
        print(f"given ({fmt}): {split.format_stats()}", file=sys.stderr)
        print(f"given ({fmt}): validation = {s['validation']}; {s['test_only_items']:,} items "
              f"({s['test_interactions_on_test_only_items']:,} test interactions) are only in the test file and "
              f"cannot be recommended; {s['test_users_without_known_items']:,} test users have no training items; "
              f"{s['test_pairs_already_known']:,} test pairs already known were dropped", file=sys.stderr)
        for col, value in s["ids_read_as_text_because_of"].items():
            print(f"given ({fmt}): {text_ids_note(col, value)}", file=sys.stderr)
    return split


__all__ = ["DEFAULT_VALID_FRACTION", "FORMATS", "METRIC_PRESETS", "PAPER_METRICS", "RETRAIN", "build_given_split", "hold_out",
           "infer_format", "load_given", "metric_preset", "read_given", "read_lightgcn", "read_recbole", "retrain_split"]
