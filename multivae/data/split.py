"""The paper's strong-generalization protocol (Liang et al. 2018; dawenl/vae_cf notebook), step by step.

Input: a DataFrame with integer-or-string columns `user`, `item` and optionally `rating`, in file order.
Output: `SplitData`, binary CSR matrices for training users and for the fold-in / target halves of the
validation and test users, plus the maps back to the original ids.

Every step is a field of `ProtocolConfig` whose default is the reference code's value:
1. keep rows with rating > 3.5 (`min_rating`; skipped when there is no rating column or it is None);
2. keep items with >= `min_item_count` rows (0 in the paper: no item filter), then users with >= 5;
3. users sorted by id, permuted with `np.random.seed(98765)`; the last 2N become validation (first N)
   and test (last N);
4. items: only those seen by training users, indexed in order of first appearance in the training rows;
   validation/test rows on other items are dropped;
5. per held-out user (in user-id order, the RNG reseeded with 98765 for each of validation and test),
   users with >= 5 items get `int(0.2 * n)` items drawn without replacement as the target, the rest
   are fold-in; users with fewer keep everything as fold-in and have no target.
Duplicated (user, item) rows collapse to a single 1 (the reference would sum them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from multivae.config import check_domains
from multivae.errors import UserError, one_line
from multivae.files import atomic_open, atomic_write_json, dumps_json


PAPER_HELDOUT_USERS = 10_000  # ML-20M in the paper


@dataclass(frozen=True)
class ProtocolConfig:
    min_rating: float | None = 3.5      # keep rating > min_rating (the paper's "ratings >= 4" on 1-5 stars)
    min_user_count: int = 5             # users with at least this many kept rows
    min_item_count: int = 0             # items with at least this many kept rows (0: no filter, as the paper)
    heldout_users: int | float | None = None  # per held-out split (validation and test each): a count, or a
                                              # fraction of users in (0, 0.5); None: the dataset's preset
                                              # (10,000 for ML-20M as the paper, 600 for ML-1M as MS Recommenders)
    target_fraction: float = 0.2        # share of a held-out user's items that becomes the evaluation target
    min_items_for_target: int = 5       # held-out users with fewer items get no target
    seed: int = 98765                   # the reference seed for the user permutation and the target draw

    def __post_init__(self) -> None:
        check_domains(self, {"min_rating": "finite", "min_user_count": ">= 0", "min_item_count": ">= 0",
                             "target_fraction": "in (0, 1)", "min_items_for_target": ">= 1", "seed": "in [0, 2**32)"})
        h = self.heldout_users   # a count, or a fraction of the users
        if isinstance(h, float):
            check_domains(self, {"heldout_users": "in (0, 0.5)"})
        elif h is not None:
            check_domains(self, {"heldout_users": ">= 1"})

    def n_heldout(self, n_users: int) -> int:
        h = PAPER_HELDOUT_USERS if self.heldout_users is None else self.heldout_users
        return int(round(h * n_users)) if isinstance(h, float) else int(h)


@dataclass
class SplitData:
    """A processed dataset: binary float32 CSR matrices, item columns shared by all of them."""

    train: sp.csr_matrix          # training users x items
    val_fold_in: sp.csr_matrix    # validation users x items: the 80 % given to the model
    val_target: sp.csr_matrix     # validation users x items: the 20 % to be ranked
    test_fold_in: sp.csr_matrix
    test_target: sp.csr_matrix
    item_ids: np.ndarray          # column j is original item id item_ids[j]
    train_user_ids: np.ndarray    # row i of `train` is original user train_user_ids[i]
    val_user_ids: np.ndarray
    test_user_ids: np.ndarray
    info: dict = dataclasses.field(default_factory=dict)  # source, protocol, counts of the filters

    @property
    def n_items(self) -> int:
        return int(self.train.shape[1])

    def stats(self) -> dict:
        n_inter = int(self.train.nnz + self.val_fold_in.nnz + self.val_target.nnz + self.test_fold_in.nnz + self.test_target.nnz)
        n_users = int(self.train.shape[0] + self.val_fold_in.shape[0] + self.test_fold_in.shape[0])
        # A weak-generalization split (multivae.data.given) shares its users and its fold-ins: its own totals.
        override = self.info.get("stats_override", {})
        return {
            "users": n_users,
            "items": self.n_items,
            "interactions": n_inter,
            "sparsity": 1.0 - n_inter / max(1, n_users * self.n_items),
            "train_users": int(self.train.shape[0]),
            "train_interactions": int(self.train.nnz),
            "val_users": int(self.val_fold_in.shape[0]),
            "val_users_with_target": int((np.diff(self.val_target.indptr) > 0).sum()),
            "val_fold_in_interactions": int(self.val_fold_in.nnz),
            "val_target_interactions": int(self.val_target.nnz),
            "test_users": int(self.test_fold_in.shape[0]),
            "test_users_with_target": int((np.diff(self.test_target.indptr) > 0).sum()),
            "test_fold_in_interactions": int(self.test_fold_in.nnz),
            "test_target_interactions": int(self.test_target.nnz),
        } | override

    def format_stats(self) -> str:
        s = self.stats()
        return (
            f"{s['users']:,} users x {s['items']:,} items, {s['interactions']:,} interactions "
            f"(sparsity {100 * s['sparsity']:.3f}%); train {s['train_users']:,} users / {s['train_interactions']:,}; "
            f"validation {s['val_users']:,} users ({s['val_users_with_target']:,} with target, "
            f"{s['val_fold_in_interactions']:,} fold-in / {s['val_target_interactions']:,} target); "
            f"test {s['test_users']:,} users ({s['test_users_with_target']:,} with target, "
            f"{s['test_fold_in_interactions']:,} fold-in / {s['test_target_interactions']:,} target)"
        )

    # --- persistence: one .npz for the arrays, one .json for the metadata and a checksum of both ----------
    _MATRICES = ("train", "val_fold_in", "val_target", "test_fold_in", "test_target")
    _IDS = ("item_ids", "train_user_ids", "val_user_ids", "test_user_ids")
    _USERS_OF = {"train": "train_user_ids", "val_fold_in": "val_user_ids", "val_target": "val_user_ids",
                 "test_fold_in": "test_user_ids", "test_target": "test_user_ids"}

    def arrays(self) -> dict[str, np.ndarray]:
        """What the .npz holds: each CSR matrix as indptr, indices and shape (the values are all 1), and the ids."""
        arrays: dict[str, np.ndarray] = {}
        for name in self._MATRICES:
            m: sp.csr_matrix = getattr(self, name)
            arrays[f"{name}__indptr"] = m.indptr
            arrays[f"{name}__indices"] = m.indices
            arrays[f"{name}__shape"] = np.asarray(m.shape, dtype=np.int64)
        for name in self._IDS:
            ids = np.asarray(getattr(self, name))
            # String ids come out of pandas as object arrays, which np.savez would pickle and `load` refuses.
            arrays[name] = ids.astype(str) if ids.dtype == object else ids
        return arrays

    def save(self, path: str | Path) -> None:
        """Write `path` (.npz) and `path` with .json (metadata and a SHA-256 over both), each to a temporary
        name and renamed: a reader never sees half a file, and a crash between the two renames leaves a pair
        whose checksum disagrees, which `load` refuses."""
        path = Path(path)
        arrays = self.arrays()
        meta = json.loads(dumps_json({"info": self.info, "stats": self.stats()}))   # as it will read back
        with atomic_open(path) as f:
            np.savez(f, **arrays)
        try:
            atomic_write_json(path.with_suffix(".json"), {**meta, "sha256": _checksum(arrays, meta)})
        except BaseException:
            path.unlink(missing_ok=True)   # an .npz without its sidecar is no cache
            raise

    @classmethod
    def load(cls, path: str | Path) -> "SplitData":
        """Read a split written by `save`, verified: the checksum, then shapes, index ranges and id counts
        against each other and against the metadata. Any damage is one UserError naming the file."""
        path = Path(path)

        def damaged(reason: str) -> UserError:
            return UserError(f"{path}: not a readable processed split ({reason})")

        try:
            meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
            with np.load(path, allow_pickle=False) as z:
                names = [f"{m}__{part}" for m in cls._MATRICES for part in ("indptr", "indices", "shape")] + list(cls._IDS)
                arrays = {name: z[name] for name in names}
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # missing, truncated or garbage files
            raise damaged(f"{exc.__class__.__name__}: {one_line(exc)[:200]}") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("info"), dict) or not isinstance(meta.get("sha256"), str):
            raise damaged(f"{path.with_suffix('.json').name} has no info and sha256")
        if _checksum(arrays, {"info": meta["info"], "stats": meta.get("stats")}) != meta["sha256"]:
            raise damaged("the checksum of its arrays and metadata does not match")
        mats = {name: _csr(arrays, name, damaged) for name in cls._MATRICES}
        n_items = mats["train"].shape[1]
        for name, m in mats.items():
            if m.shape[1] != n_items:
                raise damaged(f"{name} has {m.shape[1]} item columns, train has {n_items}")
            if len(arrays[cls._USERS_OF[name]]) != m.shape[0]:
                raise damaged(f"{name} has {m.shape[0]} rows but {cls._USERS_OF[name]} has {len(arrays[cls._USERS_OF[name]])} ids")
        if arrays["item_ids"].ndim != 1 or len(arrays["item_ids"]) != n_items:
            raise damaged(f"item_ids has {arrays['item_ids'].shape} ids for {n_items} item columns")
        split = cls(**mats, **{name: arrays[name] for name in cls._IDS}, info=meta["info"])
        if json.loads(dumps_json(split.stats())) != meta.get("stats"):
            raise damaged("its arrays do not match the counts in its metadata")
        return split


def _checksum(arrays: dict[str, np.ndarray], meta: dict) -> str:
    """SHA-256 over every array (name, dtype, shape, bytes) and the metadata as canonical JSON."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    h.update(json.dumps(meta, sort_keys=True, allow_nan=False).encode())
    return h.hexdigest()


def _csr(arrays: dict[str, np.ndarray], name: str, damaged) -> sp.csr_matrix:
    """One binary CSR matrix from its arrays, after checking that they describe one."""
    indptr, indices, shape = arrays[f"{name}__indptr"], arrays[f"{name}__indices"], arrays[f"{name}__shape"]
    if shape.shape != (2,) or shape.dtype.kind not in "iu" or (shape < 0).any():
        raise damaged(f"{name}: shape {shape.tolist()} is not two counts")
    rows, cols = int(shape[0]), int(shape[1])
    if indptr.ndim != 1 or indptr.dtype.kind not in "iu" or len(indptr) != rows + 1:
        raise damaged(f"{name}: indptr has {indptr.shape} entries for {rows} rows")
    if indptr[0] != 0 or (np.diff(indptr) < 0).any() or indptr[-1] != len(indices):
        raise damaged(f"{name}: indptr is not a non-decreasing 0..{len(indices)}")
    if indices.ndim != 1 or indices.dtype.kind not in "iu" or (len(indices) and (indices.min() < 0 or indices.max() >= cols)):
        raise damaged(f"{name}: item indices outside [0, {cols})")
    return sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(rows, cols))


def binary_csr(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """`csr_matrix((ones, (rows, cols)))` as in the reference, but duplicates collapse to 1, not 2."""
    m = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=shape)
    m.sum_duplicates()
    m.data[:] = 1.0
    m.sort_indices()
    return m


def _fold_in_target(rows: pd.DataFrame, protocol: ProtocolConfig) -> np.ndarray:
    """The reference's `split_train_test_proportion`: a boolean `is_target` per row.

    Users are visited in ascending user id (pandas groupby order) with the RNG reseeded, and each user's
    rows stay in file order, so the draw equals `np.random.choice(n, int(0.2 n), replace=False)` there.
    """
    rng = np.random.RandomState(protocol.seed)
    is_target = np.zeros(len(rows), dtype=bool)
    order = np.argsort(rows["user"].to_numpy(), kind="stable")  # group by user, keep file order inside
    users_sorted = rows["user"].to_numpy()[order]
    starts = np.flatnonzero(np.r_[True, users_sorted[1:] != users_sorted[:-1]])
    ends = np.r_[starts[1:], len(order)]
    for s, e in zip(starts, ends):
        n = e - s
        if n >= protocol.min_items_for_target:
            picked = rng.choice(n, size=int(protocol.target_fraction * n), replace=False).astype(np.int64)
            is_target[order[s + picked]] = True
    return is_target


def split_interactions(df: pd.DataFrame, protocol: ProtocolConfig, source: str = "data") -> SplitData:
    """Apply the protocol to `df` (columns user, item[, rating]) and build the CSR matrices."""
    info: dict = {"source": source, "protocol": dataclasses.asdict(protocol), "rows_read": int(len(df))}
    if len(df) == 0:
        raise UserError(f"{source}: no interactions to split")
    if "rating" in df.columns and protocol.min_rating is not None:
        df = df[df["rating"] > protocol.min_rating]
        info["rows_after_rating_filter"] = int(len(df))
    # Deviation by necessity: the reference assumes no duplicated (user, item) rows (MovieLens has none).
    # We keep the first, so an item cannot land in both the fold-in and the target of one user.
    dup = df.duplicated(["user", "item"])
    if dup.any():
        info["duplicate_rows_dropped"] = int(dup.sum())
        df = df[~dup]
    # Items first, then users, as the reference's filter_triplets.
    if protocol.min_item_count > 0:
        counts = df.groupby("item").size()
        df = df[df["item"].isin(counts.index[counts >= protocol.min_item_count])]
    if protocol.min_user_count > 0:
        counts = df.groupby("user").size()
        df = df[df["user"].isin(counts.index[counts >= protocol.min_user_count])]
    info["rows_after_filters"] = int(len(df))
    unique_users = np.sort(df["user"].unique())   # the index of groupby('userId').size()
    n_users = len(unique_users)
    if n_users == 0:
        raise UserError(
            f"{source}: every user was filtered out (min_rating={protocol.min_rating}, "
            f"min_user_count={protocol.min_user_count}, min_item_count={protocol.min_item_count})"
        )
    n_heldout = protocol.n_heldout(n_users)
    if n_heldout < 1 or 2 * n_heldout >= n_users:
        raise UserError(
            f"{source}: heldout_users={protocol.heldout_users} asks for {n_heldout} validation + {n_heldout} test users "
            f"but only {n_users} users pass the filters (need more than {2 * n_heldout})"
        )
    perm = np.random.RandomState(protocol.seed).permutation(n_users)
    unique_users = unique_users[perm]
    train_users = unique_users[: n_users - 2 * n_heldout]
    val_users = unique_users[n_users - 2 * n_heldout: n_users - n_heldout]
    test_users = unique_users[n_users - n_heldout:]

    train_rows = df[df["user"].isin(train_users)]
    item_ids = pd.unique(train_rows["item"])          # order of first appearance, as the reference
    item_index = pd.Index(item_ids)

    def matrix(rows: pd.DataFrame, users: np.ndarray) -> sp.csr_matrix:
        r = pd.Index(users).get_indexer(rows["user"])
        c = item_index.get_indexer(rows["item"])
        return binary_csr(r, c, (len(users), len(item_ids)))

    def heldout(users: np.ndarray) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        rows = df[df["user"].isin(users) & df["item"].isin(item_index)]
        is_target = _fold_in_target(rows, protocol)
        return matrix(rows[~is_target], users), matrix(rows[is_target], users)

    val_fold_in, val_target = heldout(val_users)
    test_fold_in, test_target = heldout(test_users)
    return SplitData(
        train=matrix(train_rows, train_users),
        val_fold_in=val_fold_in,
        val_target=val_target,
        test_fold_in=test_fold_in,
        test_target=test_target,
        item_ids=np.asarray(item_ids),
        train_user_ids=np.asarray(train_users),
        val_user_ids=np.asarray(val_users),
        test_user_ids=np.asarray(test_users),
        info=info,
    )



