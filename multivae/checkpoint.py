"""Checkpoints: one `torch.save`d dict of tensors and plain values, read back with `weights_only=True`.

Contents: format tag and version, model and train configs, item ids (to map columns back to the original
ids), model and optimizer state, the best-by-validation model, epoch, global_step (so the KL weight goes on
where it was), best metric and the KL weight at the best epoch, per-epoch history, and the RNG states.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from multivae.errors import UserError, one_line, short_repr
from multivae.files import atomic_open

FORMAT = "multivae-checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
WEIGHT_KEYS = ("model", "best_model")   # the state dicts a checkpoint's weights are read from


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write atomically (`multivae.files.atomic_open`: temporary file, sync, rename): a crash or a full disk
    mid-write never destroys the previous checkpoint and leaves no temporary file. Weights that are not
    finite are refused before anything is written: such a checkpoint could only spread a diverged model."""
    path = Path(path)
    bad = non_finite_weights(payload)
    if bad:
        raise UserError(f"{path}: refusing to write a checkpoint whose model weights are not finite ({bad}); the training diverged")
    try:
        with atomic_open(path) as f:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, f)
    except (OSError, RuntimeError) as exc:
        # torch reports a failed write (ENOSPC, EIO) as a RuntimeError whose context is the OSError
        cause = exc if isinstance(exc, OSError) else exc.__context__
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else one_line(exc)[:200]
        raise UserError(f"{path}: cannot write the checkpoint ({reason}); the previous one, if any, is unchanged") from None
    return path


def non_finite_weights(payload: dict[str, Any]) -> str | None:
    """`model.<name>` or `best_model.<name>` of the first weight tensor holding nan or inf, else None."""
    for part in WEIGHT_KEYS:
        weights = payload.get(part)
        if not isinstance(weights, dict):
            continue
        for name, t in weights.items():
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return f"{part}.{name}"
    return None


def resolve_checkpoint_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise UserError(f"{path}: checkpoint not found")
    if not path.is_file():
        raise UserError(f"{path}: not a checkpoint file (a folder without {CHECKPOINT_NAME}?)")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint; any problem is a one-line UserError naming the file."""
    path = resolve_checkpoint_path(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UserError(f"{path}: refused to load (not a plain-tensor checkpoint; weights_only=True): {first}") from None
    except Exception as exc:  # torch raises many kinds (RuntimeError, EOFError, KeyError, ...) on a damaged file
        raise UserError(f"{path}: not a readable checkpoint (truncated or corrupt: {exc.__class__.__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path}: not a multivae checkpoint (no format tag {FORMAT!r})")
    if payload.get("version") != VERSION:
        raise UserError(f"{path}: checkpoint version {short_repr(payload.get('version'))} is not supported (expected {VERSION})")
    bad = non_finite_weights(payload)
    if bad:
        raise UserError(f"{path}: refused to load: the model weights are not finite ({bad})")
    return payload
