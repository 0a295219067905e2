"""HMAC signatures of the experiment files that Ray unpickles, so `--resume` loads only what this user's runs wrote.

Ray Tune's `Tuner.restore` unpickles `tuner.pkl`, the newest `searcher-state-*.pkl`, `search_gen_state-*.json`,
`basic-variant-state-*.json` and `callback-states-*.pkl` (cloudpickle despite the name), the cloudpickle fields
inside `experiment_state-*.json`, and a trial's `error.pkl` and `params.pkl`: whoever can write the storage
could run code in the next `--resume`. Each of those files gets an HMAC-SHA256 with a key of this user's, kept
outside the storage (`$XDG_CONFIG_HOME/multivae-tune/hmac.key`, else `~/.config/...`, mode 0600), in the
manifest `signatures.json` of the experiment folder; `verify` checks them all before anything is loaded.
`sign` runs after Ray writes each snapshot into its driver staging folder and before Ray uploads it: it signs
what Ray just wrote and keeps only signatures that still verify, so a file planted in the storage while the
search runs stays unsigned and is refused at the next `--resume`. docs/security.md says what is trusted.
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


def read_manifest(exp_path: str) -> dict[str, dict] | None:
    """relative path -> {"hmac": [accepted HMACs, newest first], "required": bool}; None when there is no
    manifest or it is not one."""
    path = experiment.join(exp_path, MANIFEST)
    if not experiment.exists(path):
        return None
    try:
        data = experiment.read_json(path, "the signature manifest")
    except UserError:
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return None
    for entry in files.values():
        if not (isinstance(entry, dict) and isinstance(entry.get("hmac"), list) and all(isinstance(h, str) for h in entry["hmac"])
                and isinstance(entry.get("required"), bool)):
            return None
    return files


def _manifest_text(files: dict[str, dict]) -> str:
    from multivae.files import dumps_json

    return dumps_json({"algorithm": "hmac-sha256", "key": "per user, see docs/security.md", "files": dict(sorted(files.items()))}) + "\n"


def verify(exp_path: str) -> None:
    """Refuse, naming the file, an experiment in which a file Ray unpickles has no valid signature of this user's,
    or a signed one that was there at a save is gone (Ray would then quietly skip that part of the restore).
    Reads, writes nothing."""
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
        accepted = manifest.get(rel, {}).get("hmac", [])
        mac = _mac(key, rel, experiment.read_bytes(experiment.join(exp_path, rel)))
        if not any(hmac.compare_digest(h, mac) for h in accepted):
            why = "does not match its signature" if accepted else "has no signature"
            raise UserError(f"{experiment.join(exp_path, rel)}: {why} (HMAC-SHA256 with your key {key_path()}): it was "
                            f"changed or put there after tuning.run last saved the experiment, or by another user; "
                            f"nothing was loaded; {TRUST_HINT}")
    missing = sorted(rel for rel, entry in manifest.items() if entry["required"] and rel not in files)
    if missing:
        raise UserError(f"{experiment.join(exp_path, missing[0])}: signed at a save and gone since; Tune would resume "
                        f"without it (a search half restored); nothing was loaded")


def sign(exp_path: str, *, staging: str | Path | None = None, trusted: Iterable[str] = (), everything: bool = False) -> None:
    """Rewrite the manifest. Called with Ray's driver staging folder `staging` after Ray wrote a snapshot there and
    before Ray uploads it: each staged file is signed (its new HMAC first, the storage copy's still-valid one
    kept beside it, so a driver killed in the middle of the upload leaves files that verify either way). A file
    of the storage keeps a signature only when it already verifies, or when it is in `trusted` (just written by
    this driver, as tuner.pkl) or `everything` is set (--trust-storage); anything else stays unsigned, and
    `verify` refuses it. The manifest goes into the storage, and into `staging` so that the upload carries the
    same one."""
    key = load_key(create=True)
    old = read_manifest(exp_path) or {}
    trusted = set(trusted)
    new: dict[str, dict] = {}
    for rel in covered_files(exp_path):
        mac = _mac(key, rel, experiment.read_bytes(experiment.join(exp_path, rel)))
        if everything or rel in trusted or any(hmac.compare_digest(h, mac) for h in old.get(rel, {}).get("hmac", [])):
            new[rel] = {"hmac": [mac], "required": True}   # there now, so it must still be there on --resume
    if staging is not None:
        root = Path(staging)
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and covered(rel):
                mac = _mac(key, rel, path.read_bytes())
                there = new.get(rel)
                new[rel] = {"hmac": [mac] + [h for h in (there or {}).get("hmac", []) if h != mac], "required": there is not None}
    text = _manifest_text(new)
    experiment.write_text(experiment.join(exp_path, MANIFEST), text)
    if staging is not None:
        from multivae.files import atomic_write_text

        atomic_write_text(Path(staging) / MANIFEST, text)   # else Ray's upload would put back the copy it staged


__all__ = ["MANIFEST", "covered", "covered_files", "key_path", "load_key", "read_manifest", "sign", "verify"]
