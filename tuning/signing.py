"""HMAC signatures of the experiment files that Ray unpickles, so `--resume` loads only what this user's runs wrote.

Ray Tune's `Tuner.restore` unpickles `tuner.pkl`, the newest `searcher-state-*.pkl`, `search_gen_state-*.json`,
`basic-variant-state-*.json` and `callback-states-*.pkl` (cloudpickle despite the name), the cloudpickle fields
inside `experiment_state-*.json`, and a trial's `error.pkl` and `params.pkl`: whoever can write the storage
could run code in the next `--resume`. Each of those files gets an HMAC-SHA256 with a key of this user's, kept
outside the storage (`$XDG_CONFIG_HOME/multivae-tune/hmac.key`, else `~/.config/...`, mode 0600), in the
manifest `signatures.json` of the experiment folder; `verify` checks them all before anything is loaded.
`sign` runs after each of Ray's saves and signs a file only when it is the copy Ray itself just wrote (equal to
the driver's staging copy) or already carries a valid signature, so a file planted while the search runs stays
unsigned and is refused at the next `--resume`. docs/security.md says what is trusted.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path
from typing import Iterable

from multivae.errors import UserError
from tuning import experiment

MANIFEST = "signatures.json"
KEY_ENV = "XDG_CONFIG_HOME"
# The experiment folder's own files that Ray unpickles (or may: every *.pkl), and in trial folders every *.pkl.
ROOT_PATTERNS = ("*.pkl", "experiment_state-*.json", "search_gen_state-*.json", "basic-variant-state-*.json")
TRIAL_PATTERNS = ("*.pkl",)
TRUST_HINT = ("if you reviewed the experiment (a colleague's search, say), resume it with --trust-storage, which "
              "signs its files with your key")


def key_path() -> Path:
    base = os.environ.get(KEY_ENV) or str(Path.home() / ".config")
    return Path(base) / "multivae-tune" / "hmac.key"


def load_key(*, create: bool) -> bytes | None:
    """This user's signing key; created (32 random bytes, mode 0600) when `create` and absent. A key that others
    can read or write is refused: anyone who has it can sign a planted pickle."""
    path = key_path()
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_key(create=False)   # made meanwhile by another run
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise UserError(f"{path}: cannot read the signing key ({exc.strerror or exc})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UserError(f"{path}: the signing key is readable or writable by others (mode {stat.S_IMODE(mode):o}); "
                        f"run `chmod 600 {path}`")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise UserError(f"{path}: not a signing key (expected at least 32 hex digits); remove it and a new one is made")
    return key


def covered(relpath: str) -> bool:
    """Whether Ray may unpickle this file of the experiment (a path relative to the experiment folder)."""
    parts = relpath.split("/")
    patterns = ROOT_PATTERNS if len(parts) == 1 else TRIAL_PATTERNS
    return parts[-1] != MANIFEST and any(fnmatch.fnmatchcase(parts[-1], p) for p in patterns)


def covered_files(exp_path: str) -> list[str]:
    return [f for f in experiment.list_files(exp_path) if covered(f)]


def _mac(key: bytes, relpath: str, data: bytes) -> str:
    # the path is signed too: a valid file moved to another name (an old searcher state made the newest) fails
    return hmac.new(key, relpath.encode() + b"\0" + data, hashlib.sha256).hexdigest()


def read_manifest(exp_path: str) -> dict[str, str] | None:
    """relative path -> HMAC; None when there is no manifest or it is not one."""
    path = experiment.join(exp_path, MANIFEST)
    if not experiment.exists(path):
        return None
    try:
        data = experiment.read_json(path, "the signature manifest")
    except UserError:
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        return None
    return files


def _write_manifest(exp_path: str, files: dict[str, str]) -> None:
    experiment.write_json(experiment.join(exp_path, MANIFEST), {"algorithm": "hmac-sha256", "key": "per user, see docs/security.md",
                                                                 "files": dict(sorted(files.items()))})


def verify(exp_path: str) -> None:
    """Refuse, naming the file, an experiment in which a file Ray unpickles has no valid signature of this user's,
    or a signed one is gone (Ray would then quietly rebuild that part of the search). Reads, writes nothing."""
    manifest_path = experiment.join(exp_path, MANIFEST)
    key = load_key(create=False)
    if key is None:
        raise UserError(f"{exp_path}: no signing key at {key_path()}, so nothing of this experiment can be checked "
                        f"(another user or machine wrote it); {TRUST_HINT}")
    manifest = read_manifest(exp_path)
    if manifest is None:
        raise UserError(f"{manifest_path}: missing or unreadable, so the files Ray would unpickle cannot be checked; "
                        f"nothing was loaded; {TRUST_HINT}")
    files = covered_files(exp_path)
    for rel in files:
        want = manifest.get(rel)
        if want is None or not hmac.compare_digest(want, _mac(key, rel, experiment.read_bytes(experiment.join(exp_path, rel)))):
            why = "has no signature" if want is None else "does not match its signature"
            raise UserError(f"{experiment.join(exp_path, rel)}: {why} (HMAC-SHA256 with your key {key_path()}): it was "
                            f"changed or put there after tuning.run last saved the experiment, or by another user; "
                            f"nothing was loaded; {TRUST_HINT}")
    missing = sorted(set(manifest) - set(files))
    if missing:
        raise UserError(f"{experiment.join(exp_path, missing[0])}: signed at the last save but gone; Tune would resume "
                        f"without it (a search half restored); nothing was loaded")


def sign(exp_path: str, *, staging: str | Path | None = None, trusted: Iterable[str] = (), everything: bool = False) -> None:
    """Rewrite the manifest for the files as they are now. A file is signed when `everything` (--trust-storage),
    when it is in `trusted` (just written by this driver, as tuner.pkl), or when it equals the copy in Ray's driver
    staging folder `staging` (what Ray just uploaded); a file that already has a valid signature keeps it.
    Anything else is left unsigned, and `verify` refuses it."""
    key = load_key(create=True)
    old = read_manifest(exp_path) or {}
    trusted, staging = set(trusted), Path(staging) if staging else None
    new = {}
    for rel in covered_files(exp_path):
        data = experiment.read_bytes(experiment.join(exp_path, rel))
        mac = _mac(key, rel, data)
        if everything or rel in trusted or hmac.compare_digest(old.get(rel, ""), mac) or _same_as(staging, rel, data):
            new[rel] = mac
    if new != old or not experiment.exists(experiment.join(exp_path, MANIFEST)):
        _write_manifest(exp_path, new)


def _same_as(staging: Path | None, rel: str, data: bytes) -> bool:
    if staging is None:
        return False
    try:
        return (staging / rel).read_bytes() == data
    except OSError:
        return False


__all__ = ["MANIFEST", "covered", "covered_files", "key_path", "load_key", "read_manifest", "sign", "verify"]
