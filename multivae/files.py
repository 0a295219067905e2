"""Files on local disk: atomic writes, JSON with non-finite numbers as null, and the writable-folder probe.

Every output file of the project is written through `atomic_write_text` (a temporary name in the same folder,
fsync, rename), so a crash or a full disk never leaves a half-written file or mixes old and new results, and
the temporary file is removed when the write fails. The file gets the mode a plain `open` would give it (0666
less the umask), not mkstemp's private 0600, so a colleague on a shared cluster can read the results.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from multivae.errors import UserError


def jsonable(x: Any) -> Any:
    """Plain JSON values: numpy scalars as Python numbers, tuples as lists, NaN and ±inf as None (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 0) == 0:   # numpy / torch scalars
        return jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def dumps_json(data: Any, indent: int | None = 2) -> str:
    """Strict JSON text (`allow_nan=False` after `jsonable`): what every JSON file of the project holds."""
    return json.dumps(jsonable(data), indent=indent, allow_nan=False, default=str)


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file to write `path` through: a temporary file in the same folder, synced and renamed onto
    `path` when the block ends, removed when the block (or the sync, or the rename) fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc), else set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    with atomic_open(path) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, dumps_json(data) + "\n")


def check_writable_dir(path: str | Path, label: str) -> None:
    """Refuse, before any work, an output folder that cannot be created or written (read-only, a file in the
    way, a full disk): a probe file is created, synced and removed in the folder, or in its nearest existing
    parent when the folder does not exist yet. Nothing is left behind."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{label} {path}: exists and is not a directory")
    parent = path
    while not parent.exists():   # exists() is False below a file too (ENOTDIR)
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{label} {path}: cannot create it, {parent} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".multivae-write-probe-", dir=parent)
        try:
            os.write(fd, b"probe")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise UserError(f"{label} {path}: cannot write in {parent} ({exc.strerror or exc})") from None


__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "check_writable_dir", "current_umask", "dumps_json", "jsonable"]
