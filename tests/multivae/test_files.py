"""multivae/files.py: every output file gets the umask's mode, as a plain `open` gives it; a folder replaced as a
whole, and what a killed replacement leaves behind."""

import os
import stat

import pytest

from multivae.files import (atomic_write_json, atomic_write_text, current_umask, remove_stale_staging, staging_dir,
                            swap_into_place)


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



def test_swap_into_place_replaces_the_whole_folder(tmp_path):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "weights.pt").write_text("old")
    new = staging_dir(run)
    assert new.parent == tmp_path and new.name.startswith(".run.new-")
    (new / "metrics.json").write_text("new")
    swap_into_place(new, run)
    assert sorted(p.name for p in run.iterdir()) == ["metrics.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_killed_replacement_is_cleaned_up_and_a_folder_moved_aside_is_put_back(tmp_path):
    run = tmp_path / "run"
    half = staging_dir(run)                     # killed while writing the new run
    (half / "checkpoint.pt").write_text("half")
    aside = tmp_path / f".run.old-{os.getpid()}-1"   # killed between the two renames: the old run is aside
    aside.mkdir()
    (aside / "metrics.json").write_text("old")
    remove_stale_staging(run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert (run / "metrics.json").read_text() == "old"
    # with the folder in place, an aside copy is only a leftover
    aside.mkdir()
    remove_stale_staging(run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
