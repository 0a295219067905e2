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


def read_torch_file(path: str | Path, unreadable: str, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(path, weights_only=True)` with every failure as one line of our own (`unreadable`: what a
    damaged file is called): torch's own message would advise retrying with weights_only=False, which runs
    whatever code the file holds."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc.__class__.__name__})") from None
    if not head.startswith((b"PK\x03\x04", b"\x80")):   # torch.save writes a zip archive (a pickle before torch 1.6)
        raise UserError(f"{path}: {unreadable} (not a file that torch.save writes)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path}: refused to load: it holds objects other than tensors and plain values, which are never "
                        "unpickled (weights_only=True)") from None
    except Exception as exc:  # torch raises many kinds (RuntimeError, EOFError, KeyError, ...) on a damaged file
        raise UserError(f"{path}: {unreadable} (truncated or corrupt: {exc.__class__.__name__})") from None


def check_weights(state: Any, n_items: Any, model_config: Any, where: str) -> None:
    """Refuse weights read from a file unless they are exactly what `model_config` builds for `n_items`
    items: names, shapes and float dtype, checked before anything is allocated (a forged config asking for a
    573 GB layer is refused here, not by the allocator)."""
    from multivae.model import state_shapes

    if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 1:
        raise UserError(f"{where}: n_items must be an integer >= 1, got {short_repr(n_items)}")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f"{where}: the weights are not a mapping of names to tensors")
    expected = state_shapes(n_items, model_config)
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise UserError(f"{where}: weights do not match the model config (missing {short_repr(missing)}, unexpected {short_repr(extra)})")
    for name, shape in expected.items():
        t = state[name]
        if tuple(t.shape) != shape or not t.is_floating_point():
            raise UserError(f"{where}: weights do not match the model config ({name} is {t.dtype} {list(t.shape)}, "
                            f"the config needs floats of shape {list(shape)})")


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
    payload = read_torch_file(path, "not a readable checkpoint", map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path}: not a multivae checkpoint (no format tag {FORMAT!r})")
    if payload.get("version") != VERSION:
        raise UserError(f"{path}: checkpoint version {short_repr(payload.get('version'))} is not supported (expected {VERSION})")
    bad = non_finite_weights(payload)
    if bad:
        raise UserError(f"{path}: refused to load: the model weights are not finite ({bad})")
    return payload
