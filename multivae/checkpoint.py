"""Checkpoints: one `torch.save`d dict of tensors and plain values, read back with `weights_only=True`.

Contents: format tag and version, model and train configs, item ids (to map columns back to the original
ids), model and optimizer state, the best-by-validation model, epoch, global_step (so the KL weight goes on
where it was), best metric and the KL weight at the best epoch, per-epoch history, and the RNG states.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from multivae.errors import UserError

FORMAT = "multivae-checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write atomically (temporary file + rename): a crash mid-write never destroys the previous checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)
    os.replace(tmp, path)
    return path


def resolve_checkpoint_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise UserError(f"{path}: checkpoint not found")
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
        raise UserError(f"{path}: checkpoint version {payload.get('version')!r} is not supported (expected {VERSION})")
    return payload
