"""Files on local disk: atomic writes, JSON with non-finite numbers as null, the writable-folder probe, one
writer per output (`WriterLock`) and folders replaced as a whole (`staging_dir`, `swap_into_place`).

Every output file of the project is written through `atomic_write_text` (a temporary name in the same folder,
fsync, rename), so a crash or a full disk never leaves a half-written file or mixes old and new results, and
the temporary file is removed when the write fails. The file gets the mode a plain `open` would give it (0666
less the umask), not mkstemp's private 0600, so a colleague on a shared cluster can read the results. A folder
that is replaced (a train run's `--overwrite`, a model folder) is written complete beside the old one and swapped
in by renames, so it always holds one run.
"""

from __future__ import annotations

import contextlib
import getpass
import glob
import json
import math
import os
import shutil
import socket
import tempfile
import time
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


# --- one writer per output -----------------------------------------------------------------------------

def lock_beside(path: str | Path) -> Path:
    """The lock of an output `path` (a folder or a file): `.<name>.lock` beside it, so it exists before the
    output does and survives the output's replacement."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


class WriterLock:
    """An exclusive lock on one output (a train run, a recommendations file, a search experiment), held from
    before its writer writes anything until it is done.

    The lock is the operating system's (`filelock`: flock on POSIX), so it is released the moment its holder
    dies, whatever kills it: a lock left by a dead writer is simply taken over. Beside it, `<lock>.json` says
    who holds it, for the one-line refusal of a second writer: "<target>: <busy> (<holder>); <advice>"."""

    def __init__(self, path: str | Path, target: str | Path, busy: str, advice: str) -> None:
        from filelock import FileLock

        self.path = Path(path)
        self.info_path = self.path.with_name(self.path.name + ".json")
        self.target, self.busy, self.advice = str(target), busy, advice
        self._lock = FileLock(str(self.path), timeout=0)

    def acquire(self) -> str | None:
        """Take the lock or raise UserError naming the live holder; returns a note when a dead writer's lock
        was taken over."""
        from filelock import Timeout

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except Timeout:
            raise UserError(self._refusal()) from None
        except OSError as exc:
            raise UserError(f"{self.path}: cannot create the lock of {self.target} ({exc.strerror or exc})") from None
        previous = self._holder()
        atomic_write_text(self.info_path, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                      "user": _user(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}))
        return f"took over the lock of a writer that is gone ({previous})" if previous != "holder unknown" else None

    def refuse_if_live(self) -> None:
        """Refuse now, before any work, when a live writer holds the lock; creates nothing (a lock file that
        does not exist yet cannot be held)."""
        if not self.path.exists() or self._lock.is_locked:
            return
        from filelock import Timeout

        try:
            self._lock.acquire()
        except Timeout:
            raise UserError(self._refusal()) from None
        except OSError:
            return   # unreadable: `acquire` says so when the lock is really taken
        self._lock.release()

    def release(self) -> None:
        if self._lock.is_locked:
            self.info_path.unlink(missing_ok=True)
            self._lock.release()

    def _refusal(self) -> str:
        return f"{self.target}: {self.busy} ({self._holder()}); {self.advice}"

    def _holder(self) -> str:
        try:
            h = json.loads(self.info_path.read_text())
            return f"pid {h['pid']} on {h['host']}, since {h['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    def __enter__(self) -> "WriterLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "unknown"


# --- folders replaced as a whole -----------------------------------------------------------------------

STAGING, ASIDE = "new", "old"   # .<name>.new-*: a replacement being written; .<name>.old-*: the one it replaces


def staging_dir(path: str | Path) -> Path:
    """A new empty folder beside `path` (same parent, so same file system) to write its replacement in; made
    with the permissions of any other output (mkdtemp's are 0700)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{STAGING}-", dir=path.parent))
    tmp.chmod(0o777 & ~current_umask())
    return tmp


def swap_into_place(new: str | Path, path: str | Path) -> None:
    """Rename the complete folder `new` to `path`; an old folder there is moved aside first and removed only
    afterwards, so `path` holds the old folder or the new one, never a mix."""
    new, path = Path(new), Path(path)
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.{ASIDE}-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(path, old)
    os.replace(new, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_staging(path: str | Path) -> None:
    """What a killed replacement of `path` left beside it: a half-written `.<name>.new-*` folder is removed;
    an old folder moved aside (`.<name>.old-*`) is put back when `path` is missing, else removed. Only for
    the holder of the folder's `WriterLock`: nobody else can be writing them."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for leftover in sorted(path.parent.glob(f".{glob.escape(path.name)}.{STAGING}-*")):
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in sorted(path.parent.glob(f".{glob.escape(path.name)}.{ASIDE}-*")):
        if not path.exists():
            os.replace(leftover, path)
        else:
            shutil.rmtree(leftover, ignore_errors=True)


__all__ = ["WriterLock", "atomic_open", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "check_writable_dir", "current_umask", "dumps_json", "jsonable", "lock_beside",
           "remove_stale_staging", "staging_dir", "swap_into_place"]
