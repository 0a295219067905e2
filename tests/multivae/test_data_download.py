"""Downloads against a local HTTP server on 127.0.0.1 serving zips built here from generated rows."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import threading

from pathlib import Path

import pytest

from multivae.data import DatasetConfig, ProtocolConfig, load_dataset
from multivae.data import download as dl
from multivae.errors import UserError

from .conftest import fake_ratings, ml100k_bytes, zip_bytes


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path):
    """(served folder, base URL): an HTTP server on 127.0.0.1, an OS-chosen port, in a thread."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}/movielens"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _publish(server_root: Path, data: bytes, monkeypatch, md5: str | None = None, sha256: str | None = "auto") -> None:
    """Serve `data` as ml-100k.zip and point the registry's checksums at it (or at the values given)."""
    folder = server_root / "movielens"
    folder.mkdir(exist_ok=True)
    (folder / "ml-100k.zip").write_bytes(data)
    entry = dataclasses.replace(dl.ARCHIVES["ml-100k"], md5=md5 or hashlib.md5(data).hexdigest(),
                                sha256=hashlib.sha256(data).hexdigest() if sha256 == "auto" else sha256)
    monkeypatch.setitem(dl.ARCHIVES, "ml-100k", entry)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink())


FAKE_ZIP = zip_bytes({"ml-100k/u.data": ml100k_bytes(fake_ratings()), "ml-100k/README": b"generated for a test\n"})


def test_download_verify_extract(server, tmp_path, monkeypatch, data_env):
    root, base = server
    _publish(root, FAKE_ZIP, monkeypatch)
    cache = tmp_path / "cache"
    folder = dl.download("ml-100k", cache, base_url=base, verbose=False)
    assert folder == cache / "ml-100k"
    assert (folder / "u.data").read_bytes() == ml100k_bytes(fake_ratings())
    assert _files(cache) == [folder / "README", folder / "u.data"]   # no zip, no temporary left behind
    assert dl.find_local("ml-100k", cache) == folder
    # A second call finds the copy and does not ask the server again.
    (root / "movielens" / "ml-100k.zip").unlink()
    assert dl.download("ml-100k", cache, base_url=base, verbose=False) == folder


def test_load_dataset_downloads_through_the_env_base_url(server, tmp_path, monkeypatch, data_env, capsys):
    root, base = server
    _publish(root, FAKE_ZIP, monkeypatch)
    monkeypatch.setenv("MULTIVAE_BASE_URL", base)
    split = load_dataset(DatasetConfig(name="ml-100k"), cache_dir=tmp_path / "cache", verbose=True)
    assert split.info["protocol"]["heldout_users"] == 50
    assert split.val_fold_in.shape[0] == split.test_fold_in.shape[0] == 50
    assert split.info["source_path"] == str((tmp_path / "cache" / "ml-100k" / "u.data").resolve())
    err = capsys.readouterr().err
    assert f"downloaded {base}/ml-100k.zip" in err and "ml-100k: 1" in err


def test_load_dataset_base_url_argument(server, tmp_path, monkeypatch, data_env):
    root, base = server
    _publish(root, FAKE_ZIP, monkeypatch)
    cfg = DatasetConfig(name="ml-100k", protocol=ProtocolConfig(heldout_users=10))
    split = load_dataset(cfg, cache_dir=tmp_path / "cache", verbose=False, base_url=base)
    assert split.val_fold_in.shape[0] == 10


@pytest.mark.parametrize("which", ["md5", "sha256"])
def test_checksum_mismatch_deletes_the_download(server, tmp_path, monkeypatch, data_env, which):
    root, base = server
    bad = "0" * (32 if which == "md5" else 64)
    _publish(root, FAKE_ZIP, monkeypatch, **({"md5": bad} if which == "md5" else {"sha256": bad}))
    got = hashlib.md5(FAKE_ZIP).hexdigest() if which == "md5" else hashlib.sha256(FAKE_ZIP).hexdigest()
    cache = tmp_path / "cache"
    msg = rf"{base}/ml-100k\.zip: {which} checksum mismatch \(expected {bad}, got {got}\); the download was deleted"
    with pytest.raises(UserError, match=msg):
        dl.download("ml-100k", cache, base_url=base, verbose=False)
    assert _files(cache) == []


def test_a_foreign_folder_in_the_way_is_reported(server, tmp_path, monkeypatch, data_env):
    root, base = server
    _publish(root, FAKE_ZIP, monkeypatch)
    (tmp_path / "cache" / "ml-100k").mkdir(parents=True)
    (tmp_path / "cache" / "ml-100k" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"cache/ml-100k: exists but holds no u\.data; remove it and try again"):
        dl.download("ml-100k", tmp_path / "cache", base_url=base, verbose=False)
    assert _files(tmp_path / "cache") == [tmp_path / "cache" / "ml-100k" / "notes.txt"]


def test_http_error_names_the_url(server, tmp_path, data_env):
    _, base = server
    with pytest.raises(UserError, match=rf"{base}/ml-100k\.zip: download failed \(HTTP 404"):
        dl.download("ml-100k", tmp_path / "cache", base_url=base, verbose=False)
    assert _files(tmp_path / "cache") == []


@pytest.mark.parametrize("member", ["../evil.txt", "ml-100k/../../evil.txt", "/ABSOLUTE"])
def test_unsafe_members_are_rejected(server, tmp_path, monkeypatch, data_env, member):
    root, base = server
    outside = tmp_path / "evil.txt"
    absolute = tmp_path / "absolute-evil.txt"
    name = str(absolute) if member == "/ABSOLUTE" else member
    _publish(root, zip_bytes({"ml-100k/u.data": ml100k_bytes(fake_ratings()), name: b"pwned\n"}), monkeypatch)
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match=r"unsafe path in archive: .*evil\.txt'; nothing was extracted"):
        dl.download("ml-100k", cache, base_url=base, verbose=False)
    assert not outside.exists() and not absolute.exists() and not (tmp_path / "evil.txt").exists()
    assert _files(cache) == []


def test_symlink_members_are_rejected(server, tmp_path, monkeypatch, data_env):
    root, base = server
    data = zip_bytes({"ml-100k/u.data": ml100k_bytes(fake_ratings())}, symlinks={"ml-100k/link": "/etc/passwd"})
    _publish(root, data, monkeypatch)
    with pytest.raises(UserError, match=r"symbolic link 'ml-100k/link'; nothing was extracted"):
        dl.download("ml-100k", tmp_path / "cache", base_url=base, verbose=False)
    assert _files(tmp_path / "cache") == []


def test_archive_without_the_ratings_file(server, tmp_path, monkeypatch, data_env):
    root, base = server
    _publish(root, zip_bytes({"other/readme.txt": b"x"}), monkeypatch)
    with pytest.raises(UserError, match=r"the archive has no ml-100k/u\.data"):
        dl.download("ml-100k", tmp_path / "cache", base_url=base, verbose=False)
    assert _files(tmp_path / "cache") == []


def test_not_a_zip(server, tmp_path, monkeypatch, data_env):
    root, base = server
    _publish(root, b"<html>not found</html>", monkeypatch)
    with pytest.raises(UserError, match="not a readable zip archive"):
        dl.download("ml-100k", tmp_path / "cache", base_url=base, verbose=False)
    assert _files(tmp_path / "cache") == []


def test_base_url_must_be_http(tmp_path, monkeypatch, data_env):
    monkeypatch.setenv("MULTIVAE_BASE_URL", "file:///etc")
    with pytest.raises(UserError, match=r"base URL 'file:///etc' \(from MULTIVAE_BASE_URL\) must start with https://"):
        dl.download("ml-100k", tmp_path / "cache", verbose=False)


def test_registry_urls_are_grouplens(data_env):
    assert dl.archive_url("ml-20m") == "https://files.grouplens.org/datasets/movielens/ml-20m.zip"
    assert dl.archive_url("ml-10m") == "https://files.grouplens.org/datasets/movielens/ml-10m.zip"
    assert dl.ARCHIVES["ml-1m"].md5 == "c4d9eecfca2ab87c1945afe126590906"
    assert dl.ARCHIVES["ml-20m"].sha256 == "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3"
    assert all(len(a.md5) == 32 for n, a in dl.ARCHIVES.items() if n != "ml-latest-small")


def test_no_checksum_no_download(tmp_path, monkeypatch, data_env):
    monkeypatch.setitem(dl.ARCHIVES, "ml-latest-small", dataclasses.replace(dl.ARCHIVES["ml-latest-small"], md5=None, sha256=None))
    with pytest.raises(UserError, match=r"ml-latest-small: no published checksum .* pass its folder as data_dir"):
        dl.download("ml-latest-small", tmp_path / "cache", verbose=False)


def test_ml_latest_small_is_checked_by_its_sha256_alone(server, tmp_path, monkeypatch, data_env):
    """ml-latest-small has a SHA-256 and no MD5: a zip that is not the genuine one is refused, deleted."""
    root, base = server
    (root / "movielens").mkdir()
    fake = zip_bytes({"ml-latest-small/ratings.csv": b"userId,movieId,rating,timestamp\n1,1,4.0,0\n"})
    (root / "movielens" / "ml-latest-small.zip").write_bytes(fake)
    assert dl.ARCHIVES["ml-latest-small"].sha256 == "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436"
    with pytest.raises(UserError, match=r"ml-latest-small\.zip: sha256 checksum mismatch \(expected 696d65a3"):
        dl.download("ml-latest-small", tmp_path / "cache", base_url=base, verbose=False)
    assert _files(tmp_path / "cache") == []
    monkeypatch.setitem(dl.ARCHIVES, "ml-latest-small",
                        dataclasses.replace(dl.ARCHIVES["ml-latest-small"], sha256=hashlib.sha256(fake).hexdigest()))
    folder = dl.download("ml-latest-small", tmp_path / "cache", base_url=base, verbose=False)
    assert (folder / "ratings.csv").read_bytes() == b"userId,movieId,rating,timestamp\n1,1,4.0,0\n"


def test_find_local_accepts_the_folder_or_its_parent(tmp_path, fake_ml100k_dir):
    folder = fake_ml100k_dir(tmp_path / "data")
    assert dl.find_local("ml-100k", folder) == folder
    assert dl.find_local("ml-100k", folder.parent) == folder
    assert dl.find_local("ml-1m", folder.parent) is None
    ten = tmp_path / "data" / "ml-10M100K"
    ten.mkdir()
    (ten / "ratings.dat").write_text("1::2::3.5::4\n")
    assert dl.find_local("ml-10m", tmp_path / "data") == ten


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MULTIVAE_DATA_DIR", str(tmp_path))
    assert dl.default_cache_dir() == tmp_path
    monkeypatch.delenv("MULTIVAE_DATA_DIR")
    assert dl.default_cache_dir() == Path.home() / ".cache" / "multivae"
