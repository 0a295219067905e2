"""The model a user keeps: one self-contained folder with everything `multivae.recommend` needs.

    <dir>/model.json        format tag and version, model config, item and user counts, what the scores mean,
                            the dataset config and source, the metrics, the command, the train config
    <dir>/weights.pt        the model's state_dict (best-by-validation weights), read with weights_only=True
    <dir>/interactions.npz  item ids, user ids and, as CSR (indptr, indices), every item each known user has:
                            training rows, and fold-in *and* held-out target rows of validation and test users
    <dir>/ease_weights.npy  only for a model blended with EASE (train.ease_blend, multivae.blend): EASE's
                            items x items matrix B, float32, read with allow_pickle=False

`multivae.train` writes `<out>/model/`; the search's final step writes `<experiment>/best_model/` with the
same `save_model_dir`. Nothing here reads the processed-split cache, so deleting the cache (or moving the
folder to another machine) keeps recommendations working.
"""

from __future__ import annotations

import io
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import scipy.sparse as sp
import torch

from multivae.checkpoint import CHECKPOINT_NAME, check_weights, read_torch_file
from multivae.config import from_dict, to_dict
from multivae.errors import UserError, short_repr
from multivae.files import atomic_write_bytes, atomic_write_json, staging_dir, swap_into_place
from multivae.model import ModelConfig, build_model

FORMAT = "multivae-model"
VERSION = 1
MODEL_JSON = "model.json"
WEIGHTS = "weights.pt"
INTERACTIONS = "interactions.npz"
EASE_WEIGHTS = "ease_weights.npy"
# Where a model folder sits inside the folders users point at: a train run, a search experiment.
MODEL_SUBDIRS = ("model", "best_model")
RUN_METRICS = "metrics.json"   # a train run's summary, beside its checkpoint.pt and model/
# Files that mark a folder as a model folder or a run: no output of another command is written inside one.
OWNED_MARKERS = (MODEL_JSON, WEIGHTS, INTERACTIONS, EASE_WEIGHTS, CHECKPOINT_NAME, RUN_METRICS)


@dataclass
class ModelDir:
    """A loaded model folder: the model in eval mode on the CPU, its ids and what each known user has."""

    path: Path
    model: torch.nn.Module
    model_config: ModelConfig
    item_ids: np.ndarray          # column j is original item id item_ids[j]
    user_ids: np.ndarray          # row r of `known` is original user user_ids[r]
    known: sp.csr_matrix          # users x items, binary: everything the data says each user has
    meta: dict                    # the rest of model.json (metrics, dataset, command, ...)
    ease_weights: torch.Tensor | None = None   # EASE's B of a blended model (meta["ease_blend"]: weight, lambda)


def known_from_split(split) -> tuple[np.ndarray, sp.csr_matrix]:
    """(user ids, rows) of every user of a `SplitData`: training rows, and for validation and test users
    their fold-in and held-out target together (a recommendation must never return any of them)."""
    if split.info.get("protocol") == "weak":   # fixed files (multivae.data.given): one row per user in every matrix
        rows = (split.test_fold_in + split.test_target).tocsr()
        rows.data[:] = 1.0
        rows.sort_indices()
        return np.asarray(split.train_user_ids), rows.astype(np.float32)
    users = np.concatenate([np.asarray(split.train_user_ids), np.asarray(split.val_user_ids), np.asarray(split.test_user_ids)])
    rows = sp.vstack([split.train, split.val_fold_in + split.val_target, split.test_fold_in + split.test_target], format="csr")
    rows.data[:] = 1.0     # fold-in and target are disjoint; this only guards against a 2 from overlap
    rows.sort_indices()
    return users, rows.astype(np.float32)


def _plain_ids(ids: Any) -> np.ndarray:
    """Ids as a numpy array savable without pickle: integers stay integers, anything else becomes str."""
    arr = np.asarray(ids)
    if arr.dtype == object or arr.dtype.kind in "SU":
        return arr.astype(str)
    return arr


def save_model_dir(path: str | Path, model: torch.nn.Module | Mapping[str, torch.Tensor], model_config: ModelConfig | Mapping,
                   item_ids: Any, known: tuple[Any, sp.csr_matrix], metrics: Mapping | None = None, command: str | None = None, *,
                   dataset: Mapping | None = None, source_path: str | None = None, train_config: Mapping | None = None,
                   extra: Mapping | None = None, ease_weights: torch.Tensor | None = None) -> Path:
    """Write the model folder `path` (replacing one that is there, only once the new one is complete).

    model: the trained module or its state_dict (the best-by-validation weights); model_config: its config;
    item_ids: original id of every item column; known: (user ids, CSR users x items), e.g. `known_from_split`;
    metrics: what to record (validation/test metrics, best epoch); command: how it was trained;
    dataset: the dataset config as a dict (lets `recommend` find MovieLens titles); source_path: the ratings file.
    ease_weights: EASE's B when `train_config` blends the model with EASE (ease_blend > 0), else None.
    """
    path = Path(path)
    cfg = model_config if isinstance(model_config, ModelConfig) else from_dict(ModelConfig, model_config, where="model_config")
    state = model.state_dict() if isinstance(model, torch.nn.Module) else dict(model)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    item_ids = _plain_ids(item_ids)
    user_ids, rows = _plain_ids(known[0]), sp.csr_matrix(known[1])
    if rows.shape != (len(user_ids), len(item_ids)):
        raise ValueError(f"known rows are {rows.shape}, expected {len(user_ids)} users x {len(item_ids)} items")
    build_model(len(item_ids), cfg).load_state_dict(state)   # the weights must fit the config: fail here, not at load
    blend = float((train_config or {}).get("ease_blend") or 0.0)
    if (ease_weights is not None) != (blend > 0):
        raise ValueError(f"ease_weights must be given exactly when train_config's ease_blend > 0 (ease_blend {blend})")
    if ease_weights is not None and tuple(ease_weights.shape) != (len(item_ids), len(item_ids)):
        raise ValueError(f"ease_weights are {tuple(ease_weights.shape)}, expected {len(item_ids)} x {len(item_ids)} items")
    meta = {"format": FORMAT, "version": VERSION, "model_config": to_dict(cfg), "n_items": len(item_ids),
            "n_users": len(user_ids), "n_interactions": int(rows.nnz), "score": score_meaning(cfg, len(item_ids)),
            "dataset": dict(dataset) if dataset is not None else None, "source_path": source_path,
            "train_config": dict(train_config) if train_config is not None else None,
            "metrics": dict(metrics or {}), "command": command, "multivae_version": _version(), **dict(extra or {})}
    if blend > 0:
        meta["ease_blend"] = {"weight": blend, "lambda": float(train_config["ease_lambda"]), "file": EASE_WEIGHTS}
        meta["score"] = blend_score_meaning(blend)

    tmp = staging_dir(path)
    try:
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(tmp / WEIGHTS, buf.getvalue())
        buf = io.BytesIO()
        np.savez_compressed(buf, item_ids=item_ids, user_ids=user_ids, indptr=rows.indptr.astype(np.int64),
                            indices=rows.indices.astype(np.int32))
        atomic_write_bytes(tmp / INTERACTIONS, buf.getvalue())
        if ease_weights is not None:
            buf = io.BytesIO()
            np.save(buf, ease_weights.detach().to("cpu", torch.float32).numpy(), allow_pickle=False)
            atomic_write_bytes(tmp / EASE_WEIGHTS, buf.getvalue())
        atomic_write_json(tmp / MODEL_JSON, meta)    # last: a folder with model.json is complete
        swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _version() -> str:
    from multivae.version import __version__

    return __version__


def score_meaning(cfg: ModelConfig, n_items: int) -> str:
    """What the `score` column of a recommendation is, for the likelihood the model was trained with."""
    if cfg.likelihood == "multinomial":
        return f"probability: softmax of the model's logits over the whole catalogue of {n_items} items (sums to 1 over it)"
    if cfg.likelihood == "bernoulli":
        return "probability: sigmoid of the item's logit, the Bernoulli likelihood's chance that the user has the item"
    return "predicted value: the Gaussian likelihood's mean for the 0/1 entry (a score for ranking, not a probability)"


def blend_score_meaning(weight: float) -> str:
    """What the `score` column is for a model blended with EASE (multivae.blend)."""
    return (f"blend score: {1 - weight:g} x the model's standardized logits + {weight:g} x EASE's standardized scores, per user "
            "(a score for ranking, not a probability)")


def find_model_dir(path: str | Path) -> Path | None:
    """The model folder meant by `path`: the folder itself, or its `model/` (a train run) or `best_model/`
    (a search experiment); None when there is none."""
    path = Path(path)
    if (path / MODEL_JSON).is_file():
        return path
    for sub in MODEL_SUBDIRS:
        if (path / sub / MODEL_JSON).is_file():
            return path / sub
    return None


def enclosing_model_or_run(path: str | Path) -> Path | None:
    """The model folder, train run or search experiment that `path` (a file to write) would land in: the
    nearest parent holding one of `OWNED_MARKERS` or a model folder (`find_model_dir`); None when there is none."""
    for parent in Path(path).expanduser().absolute().parents:
        if any((parent / m).exists() for m in OWNED_MARKERS) or find_model_dir(parent) is not None:
            return parent
    return None


def load_model_dir(path: str | Path) -> ModelDir:
    """Read and check a model folder; every problem is one UserError line naming the file."""
    import json

    path = Path(path)
    found = find_model_dir(path)
    if found is None:
        raise UserError(f"{path}: no model folder there (no {MODEL_JSON} in it or in {' or '.join(s + '/' for s in MODEL_SUBDIRS)})")
    path = found
    meta_path, weights_path, inter_path = path / MODEL_JSON, path / WEIGHTS, path / INTERACTIONS
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{meta_path}: not a readable model description ({exc.__class__.__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{meta_path}: not a multivae model folder (no format tag {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise UserError(f"{meta_path}: model folder version {meta.get('version')!r} is not supported (expected {VERSION})")
    cfg = from_dict(ModelConfig, meta.get("model_config"), where=f"{meta_path}:model_config")
    for key in ("n_items", "n_users"):
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "n_items" else 0):
            raise UserError(f"{meta_path}: {key} must be an integer >= {1 if key == 'n_items' else 0}, got {short_repr(value)}")
    n_items, n_users = meta["n_items"], meta["n_users"]
    state = read_torch_file(weights_path, "not readable as plain weights")
    check_weights(state, n_items, cfg, str(weights_path))   # names and shapes, before the model is allocated
    try:
        with np.load(inter_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("item_ids", "user_ids", "indptr", "indices")}
    except FileNotFoundError:
        raise UserError(f"{inter_path}: file not found") from None
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{inter_path}: not a readable interactions file ({exc.__class__.__name__})") from None
    _check_interactions(inter_path, arrays, n_items, n_users)
    item_ids, user_ids, indptr, indices = (arrays[k] for k in ("item_ids", "user_ids", "indptr", "indices"))
    ease_weights = _read_ease_weights(path, meta, n_items)
    model = build_model(n_items, cfg)
    model.load_state_dict(state)
    known = sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(len(user_ids), n_items))
    return ModelDir(path, model.eval(), cfg, item_ids, user_ids, known, meta, ease_weights)


def _read_ease_weights(path: Path, meta: dict, n_items: int) -> torch.Tensor | None:
    """A blended model's EASE matrix, checked against model.json (None for a model that is not blended)."""
    meta_path, file = path / MODEL_JSON, path / EASE_WEIGHTS
    blend = meta.get("ease_blend")
    train_blend = (meta.get("train_config") or {}).get("ease_blend") if isinstance(meta.get("train_config"), dict) else None
    if blend is None:
        if train_blend:
            raise UserError(f"{meta_path}: train_config.ease_blend is {train_blend!r} but ease_blend (weight, lambda) is missing")
        return None
    weight = blend.get("weight") if isinstance(blend, dict) else None
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < 1:
        raise UserError(f"{meta_path}: ease_blend.weight must be a number in (0, 1), got {short_repr(weight)}")
    try:
        b = np.load(file, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{file}: file not found (the model is blended with EASE: ease_blend in {MODEL_JSON})") from None
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"{file}: not a readable EASE matrix ({exc.__class__.__name__})") from None
    if b.dtype != np.float32 or b.shape != (n_items, n_items):
        raise UserError(f"{file}: must be a float32 {n_items} x {n_items} matrix, got {b.dtype} of shape {list(b.shape)}")
    if not np.isfinite(b).all():
        raise UserError(f"{file}: holds values that are not finite")
    return torch.from_numpy(b)


def _check_interactions(path: Path, arrays: dict[str, np.ndarray], n_items: int, n_users: int) -> None:
    """Ids and CSR rows of interactions.npz against model.json, before a matrix is built from them."""
    for key, n in (("item_ids", n_items), ("user_ids", n_users)):
        a = arrays[key]
        if a.ndim != 1 or a.dtype.kind not in "iuU" or len(a) != n:
            raise UserError(f"{path}: {key} must be {n} integer or text ids (as {MODEL_JSON} says), got {a.dtype} of shape {list(a.shape)}")
    indptr, indices = arrays["indptr"], arrays["indices"]
    for key, a in (("indptr", indptr), ("indices", indices)):
        if a.ndim != 1 or a.dtype.kind not in "iu":
            raise UserError(f"{path}: {key} must be a list of integers, got {a.dtype} of shape {list(a.shape)}")
    if len(indptr) != n_users + 1 or indptr[0] != 0 or indptr[-1] != len(indices) or (np.diff(indptr) < 0).any():
        raise UserError(f"{path}: indptr is not the row index of {n_users} users' {len(indices)} interactions")
    if len(indices) and (indices.min() < 0 or indices.max() >= n_items):
        bad = int(indices.min()) if indices.min() < 0 else int(indices.max())
        raise UserError(f"{path}: item index {bad} is outside the {n_items} items of {MODEL_JSON}")


__all__ = ["EASE_WEIGHTS", "FORMAT", "INTERACTIONS", "blend_score_meaning", "MODEL_JSON", "VERSION", "WEIGHTS", "ModelDir", "find_model_dir", "known_from_split",
           "load_model_dir", "save_model_dir", "score_meaning"]
