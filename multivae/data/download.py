"""MovieLens archives: find an extracted copy, or download the official GroupLens zip, verify, extract.

Downloads only ever go to `<base URL>/<archive file name>`; the base URL is GroupLens unless a mirror is
given (`base_url=` or `$MULTIVAE_BASE_URL`). Every archive is checked against the published MD5 (and a
SHA-256 where one is recorded) before anything is extracted, members that would land outside the target
(absolute paths, `..`, symlinks) reject the whole archive, and the dataset folder appears in the cache by
one rename, so an interrupted or failed download never leaves half a dataset behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from multivae.data.readers import MOVIELENS_FILES
from multivae.errors import UserError

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens"
BASE_URL_ENV = "MULTIVAE_BASE_URL"
DATA_DIR_ENV = "MULTIVAE_DATA_DIR"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    filename: str          # the zip's name under the base URL
    folder: str            # top-level folder inside the zip
    md5: str | None        # GroupLens' published .md5 sidecar (None: not recorded)
    sha256: str | None = None   # with md5 None too: no trusted checksum, never downloaded


# Values from ../shared/PROTOCOL.md (GroupLens' .md5 sidecars; SHA-256 as recorded by other projects).
ARCHIVES: dict[str, Archive] = {
    "ml-100k": Archive("ml-100k.zip", "ml-100k", "0e33842e24a9c977be4e0107933c0723"),
    "ml-1m": Archive("ml-1m.zip", "ml-1m", "c4d9eecfca2ab87c1945afe126590906",
                     "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"),
    "ml-10m": Archive("ml-10m.zip", "ml-10M100K", "ce571fd55effeba0271552578f2648bd"),
    "ml-20m": Archive("ml-20m.zip", "ml-20m", "cd245b17a1ae2cc31bb14903e1204af3",
                      "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3"),
    "ml-25m": Archive("ml-25m.zip", "ml-25m", "6b51fb2759a8657d3bfcbfc42b592ada"),
    # GroupLens' .md5 sidecar for this zip is not recorded here; its SHA-256 is, as TensorFlow Datasets records
    # it (tensorflow_datasets/url_checksums/movielens.txt at 1c076ac3: 978,202 bytes, next to ml-1m's and
    # ml-20m's SHA-256 above, which agree) and several independent projects do for the 2018-09-26 release
    # (100,836 ratings; one of them lists ratings.csv / movies.csv digests equal to ../shared/datasets').
    # GroupLens regenerates "latest" releases: a new one fails this check, and says so, rather than being used.
    "ml-latest-small": Archive("ml-latest-small.zip", "ml-latest-small", None,
                               "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436"),
}


def default_cache_dir() -> Path:
    """$MULTIVAE_DATA_DIR (which must be a folder that exists), else ~/.cache/multivae."""
    return env_data_dir() or Path.home() / ".cache" / "multivae"


def env_data_dir() -> Path | None:
    """$MULTIVAE_DATA_DIR when it is set; a missing folder or a file there is a one-line error (a typo must not
    send us downloading into a new folder)."""
    env = os.environ.get(DATA_DIR_ENV)
    return existing_dir(env, f"${DATA_DIR_ENV}") if env else None


def existing_dir(path: str | Path, label: str) -> Path:
    """`path` as a folder that exists, else a one-line UserError naming `label`; nothing is created."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise UserError(f"{label} {folder}: no such folder")
    if not folder.is_dir():
        raise UserError(f"{label} {folder}: is a file, not a folder")
    return folder


def archive_url(name: str, base_url: str | None = None) -> str:
    base = base_url or os.environ.get(BASE_URL_ENV) or GROUPLENS_URL
    if not base.startswith(("https://", "http://")):
        raise UserError(f"base URL {base!r} (from {'the argument' if base_url else BASE_URL_ENV}) must start with https:// or http://")
    return f"{base.rstrip('/')}/{ARCHIVES[name].filename}"


def find_local(name: str, data_dir: str | Path) -> Path | None:
    """The folder holding the ratings file of `name`: the child of `data_dir` named after the dataset
    (`ml-1m`, or the zip's folder name such as `ml-10M100K`), else `data_dir` itself; None when none has it.
    A local copy is taken as it is: checksums are only for downloads."""
    data_dir = Path(data_dir).expanduser()
    ratings = MOVIELENS_FILES[name]
    for folder in (data_dir / name, data_dir / ARCHIVES[name].folder, data_dir):
        if (folder / ratings).is_file():
            return folder
    return None


def download(name: str, cache_dir: str | Path | None = None, base_url: str | None = None, verbose: bool = True) -> Path:
    """Download, verify and extract `name` into `<cache_dir>/<name>/`; returns that folder. A copy already
    there is reused without touching the network."""
    archive = ARCHIVES[name]
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache / name
    if (target / MOVIELENS_FILES[name]).is_file():
        return target
    url = archive_url(name, base_url)
    if archive.md5 is None and archive.sha256 is None:
        raise UserError(f"{name}: no published checksum is recorded for {url}, so it is not downloaded automatically; "
                        f"download and extract it yourself and pass its folder as data_dir (--data-dir)")
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{archive.filename}.", suffix=".part", dir=cache)
    zip_path = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            md5, sha256 = _fetch(url, out, verbose)
        _verify(url, archive, md5, sha256)
        _extract(zip_path, url, archive, target, name)
    finally:
        zip_path.unlink(missing_ok=True)   # kept neither on failure nor on success (the extracted copy is what we use)
    return target


def _fetch(url: str, out: BinaryIO, verbose: bool) -> tuple[str, str]:
    """Stream `url` into `out`; returns its MD5 and SHA-256."""
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0)
            done, shown = 0, -1
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                md5.update(chunk)
                sha256.update(chunk)
                done += len(chunk)
                if verbose and total and (pct := 100 * done // total) // 10 != shown:
                    shown = pct // 10
                    print(f"\rdownloading {url}: {pct}% of {total / 1e6:.1f} MB", end="", file=sys.stderr, flush=True)
            if verbose:
                print(f"\rdownloaded {url} ({done / 1e6:.1f} MB)" + " " * 10, file=sys.stderr)
    except urllib.error.HTTPError as exc:
        raise UserError(f"{url}: download failed (HTTP {exc.code} {exc.reason})") from None
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"{url}: download failed ({getattr(exc, 'reason', exc)})") from None
    return md5.hexdigest(), sha256.hexdigest()


def _verify(url: str, archive: Archive, md5: str, sha256: str) -> None:
    checks = [("md5", archive.md5, md5), ("sha256", archive.sha256, sha256)]
    for kind, expected, got in checks:
        if expected is not None and expected.lower() != got:
            raise UserError(f"{url}: {kind} checksum mismatch (expected {expected}, got {got}); the download was deleted")


def _extract(zip_path: Path, url: str, archive: Archive, target: Path, name: str) -> None:
    """Extract into a temporary folder next to `target`, then rename the dataset folder into place."""
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".extract", dir=target.parent))
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                members = zf.infolist()
                for info in members:
                    _check_member(info, url)
                for info in members:
                    zf.extract(info, tmp_dir)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
            raise UserError(f"{url}: not a readable zip archive ({exc})") from None
        folder = find_local(name, tmp_dir / archive.folder) or find_local(name, tmp_dir)
        if folder is None:
            raise UserError(f"{url}: the archive has no {archive.folder}/{MOVIELENS_FILES[name]}")
        try:
            folder.rename(target)
        except OSError:
            # Another process finished first: keep its copy when it is whole, else report.
            if not (target / MOVIELENS_FILES[name]).is_file():
                raise UserError(f"{target}: exists but holds no {MOVIELENS_FILES[name]}; remove it and try again") from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _check_member(info: zipfile.ZipInfo, url: str) -> None:
    path = PurePosixPath(info.filename.replace("\\", "/"))
    mode = info.external_attr >> 16
    if path.is_absolute() or (path.parts and path.parts[0].endswith(":")) or ".." in path.parts:
        raise UserError(f"{url}: unsafe path in archive: {info.filename!r}; nothing was extracted")
    if stat.S_ISLNK(mode):
        raise UserError(f"{url}: the archive holds a symbolic link {info.filename!r}; nothing was extracted")
