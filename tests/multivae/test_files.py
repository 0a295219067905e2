"""The atomic writes of multivae/files.py: every output file gets the umask's mode, as a plain `open` gives it."""

import os
import stat

import pytest

from multivae.files import atomic_write_json, atomic_write_text, current_umask


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_keep_the_umask_mode_not_mkstemps_0600(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        text = atomic_write_text(tmp_path / "results.md", "x\n")
        js = atomic_write_json(tmp_path / "sub" / "results.json", {"a": 1})
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(text.stat().st_mode) == mode == stat.S_IMODE(plain.stat().st_mode)
    assert stat.S_IMODE(js.stat().st_mode) == mode
