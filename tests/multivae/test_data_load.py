"""`DatasetConfig` and `load_dataset`: presets, locating the data, and the processed-split cache."""

from __future__ import annotations

import dataclasses

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import multivae.data as data
from multivae.config import from_dict
from multivae.data import DATASET_NAMES, DatasetConfig, ProtocolConfig, SplitData, SyntheticConfig, load_dataset
from multivae.errors import UserError

SMALL_SYNTHETIC = SyntheticConfig(n_users=1200, n_items=300)


@pytest.fixture
def counted_reads(monkeypatch) -> dict[str, int]:
    """Counts every read of a source (file bytes for the hash, the table, or the generator)."""
    counts = {"hash": 0, "read": 0}
    real_hash, real_read = data.file_sha256, data._read_source

    def hash_(path):
        counts["hash"] += 1
        return real_hash(path)

    def read(cfg, source):
        counts["read"] += 1
        return real_read(cfg, source)

    monkeypatch.setattr(data, "file_sha256", hash_)
    monkeypatch.setattr(data, "_read_source", read)
    return counts


def _same(a: SplitData, b: SplitData) -> bool:
    mats = ("train", "val_fold_in", "val_target", "test_fold_in", "test_target")
    return all(getattr(a, m).shape == getattr(b, m).shape and (getattr(a, m) != getattr(b, m)).nnz == 0 for m in mats) \
        and all(np.array_equal(getattr(a, n).astype(str), getattr(b, n).astype(str)) for n in ("item_ids", "train_user_ids"))


# --- the config ---------------------------------------------------------------------------------------

def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown dataset name 'ml-2m'; valid names: synthetic, ml-100k, ml-1m, .*, file"):
        DatasetConfig(name="ml-2m")


def test_file_needs_a_path_and_only_file_takes_one():
    with pytest.raises(ValueError, match="name='file' needs path"):
        DatasetConfig(name="file")
    with pytest.raises(ValueError, match="path is only used with name='file'"):
        DatasetConfig(name="ml-1m", path="x.csv")


def test_built_from_a_nested_dict_with_strict_checks():
    cfg = from_dict(DatasetConfig, {"name": "ml-1m", "protocol": {"heldout_users": 600}, "synthetic": {"seed": 3}})
    assert cfg.protocol == ProtocolConfig(heldout_users=600) and cfg.synthetic.seed == 3
    with pytest.raises(UserError, match=r"unknown key 'protocol.heldout'"):
        from_dict(DatasetConfig, {"protocol": {"heldout": 5}}, where="space.yaml")
    with pytest.raises(UserError, match="space.yaml: unknown dataset name 'nope'"):
        from_dict(DatasetConfig, {"name": "nope"}, where="space.yaml")


def test_every_name_has_a_preset():
    assert set(data.HELDOUT_PRESETS) == set(DATASET_NAMES)
    assert data.HELDOUT_PRESETS["ml-20m"] == 10_000 and data.HELDOUT_PRESETS["ml-1m"] == 600


# --- presets and sources ------------------------------------------------------------------------------

def test_synthetic_preset_is_resolved_and_recorded(tmp_path, data_env, capsys):
    split = load_dataset(DatasetConfig(synthetic=SMALL_SYNTHETIC), cache_dir=tmp_path)
    assert split.info["protocol"]["heldout_users"] == 500
    assert split.val_fold_in.shape[0] == split.test_fold_in.shape[0] == 500
    assert "synthetic: 1,200 users" in capsys.readouterr().err


def test_an_explicit_protocol_wins_over_the_preset(tmp_path, data_env):
    cfg = DatasetConfig(synthetic=SMALL_SYNTHETIC, protocol=ProtocolConfig(heldout_users=0.05))
    split = load_dataset(cfg, cache_dir=tmp_path, verbose=False)
    assert split.info["protocol"]["heldout_users"] == 0.05 and split.val_fold_in.shape[0] == 60


def test_movielens_from_data_dir_with_preset(tmp_path, data_env, fake_ml100k_dir):
    folder = fake_ml100k_dir(tmp_path / "datasets")
    for given in (folder, folder.parent):               # the folder itself or its parent
        split = load_dataset(DatasetConfig(name="ml-100k", data_dir=str(given)), cache_dir=tmp_path / "cache", verbose=False)
        assert split.info["protocol"]["heldout_users"] == 50
        assert split.info["source_path"] == str((folder / "u.data").resolve())


def test_data_dir_from_the_environment(tmp_path, monkeypatch, data_env, fake_ml100k_dir):
    folder = fake_ml100k_dir(tmp_path / "datasets")
    monkeypatch.setenv("MULTIVAE_DATA_DIR", str(folder.parent))
    split = load_dataset(DatasetConfig(name="ml-100k"), verbose=False)
    assert split.info["source_path"] == str((folder / "u.data").resolve())
    assert Path(split.info["cache_path"]).parent == folder.parent / "processed"   # the cache defaults there too


def test_explicit_data_dir_without_the_data_is_an_error(tmp_path, data_env):
    with pytest.raises(UserError, match=r"no ml-1m copy there \(looked for ratings\.dat in it and in ml-1m/ below it\)"):
        load_dataset(DatasetConfig(name="ml-1m", data_dir=str(tmp_path)), cache_dir=tmp_path / "cache", verbose=False)


def test_file_with_string_ids_end_to_end(tmp_path, data_env, capsys):
    rng = np.random.default_rng(0)
    n = 4000
    df = pd.DataFrame({"customer": [f"c{u:04d}" for u in rng.integers(0, 300, n)],
                       "sku": [f"sku-{i}" for i in rng.integers(0, 150, n)]})
    path = tmp_path / "clicks.csv"
    df.to_csv(path, index=False)
    cfg = DatasetConfig(name="file", path=str(path), user_col="customer", item_col="sku", rating_col=None)
    split = load_dataset(cfg, cache_dir=tmp_path / "cache")
    err = capsys.readouterr().err
    assert split.info["protocol"]["heldout_users"] == 0.1
    assert split.item_ids[0].startswith("sku-") and split.val_user_ids[0].startswith("c")
    assert split.info["duplicate_rows_dropped"] > 0 and "duplicated (user, item) rows were dropped" in err
    again = load_dataset(cfg, cache_dir=tmp_path / "cache", verbose=False)
    assert _same(split, again) and again.item_ids[0].startswith("sku-")


def test_missing_file(tmp_path, data_env):
    with pytest.raises(UserError, match=r"nope\.csv: file not found"):
        load_dataset(DatasetConfig(name="file", path=str(tmp_path / "nope.csv")), cache_dir=tmp_path, verbose=False)


# --- the processed cache ------------------------------------------------------------------------------

def test_cache_hit_reads_nothing(tmp_path, data_env, fake_ml100k_dir, counted_reads):
    folder = fake_ml100k_dir(tmp_path / "datasets")
    cfg = DatasetConfig(name="ml-100k", data_dir=str(folder))
    first = load_dataset(cfg, cache_dir=tmp_path / "cache", verbose=False)
    assert counted_reads == {"hash": 1, "read": 1}
    cache_file = Path(first.info["cache_path"])
    assert cache_file.name == f"ml-100k-{first.info['cache_key']}.npz" and len(first.info["cache_key"]) == 16
    assert cache_file.with_suffix(".json").exists()
    second = load_dataset(cfg, cache_dir=tmp_path / "cache", verbose=False)
    assert counted_reads == {"hash": 1, "read": 1}      # neither hashed nor parsed again
    assert _same(first, second) and second.info["protocol"] == first.info["protocol"]


def test_a_changed_source_is_read_again(tmp_path, data_env, fake_ml100k_dir, counted_reads):
    from .conftest import fake_ratings

    folder = fake_ml100k_dir(tmp_path / "datasets")
    cfg = DatasetConfig(name="ml-100k", data_dir=str(folder))
    first = load_dataset(cfg, cache_dir=tmp_path / "cache", verbose=False)
    fake_ml100k_dir(tmp_path / "datasets", df=fake_ratings(seed=9))
    second = load_dataset(cfg, cache_dir=tmp_path / "cache", verbose=False)
    assert counted_reads == {"hash": 2, "read": 2}
    assert second.info["cache_key"] != first.info["cache_key"]


def test_cache_key_follows_protocol_and_reader_options(tmp_path, data_env):
    path = tmp_path / "d.csv"
    pd.DataFrame({"user": np.repeat(np.arange(100), 6), "item": np.tile(np.arange(6), 100),
                  "rating": 5.0, "alt": 4.0}).to_csv(path, index=False)
    base = DatasetConfig(name="file", path=str(path))
    variants = [base, dataclasses.replace(base, protocol=ProtocolConfig(min_rating=4.5)),
                dataclasses.replace(base, protocol=ProtocolConfig(heldout_users=5)),
                dataclasses.replace(base, rating_col="alt"), dataclasses.replace(base, rating_col=None)]
    keys = {load_dataset(v, cache_dir=tmp_path / "cache", verbose=False).info["cache_key"] for v in variants}
    assert len(keys) == len(variants)
    # The preset and the same value given explicitly are the same split.
    same = dataclasses.replace(base, protocol=ProtocolConfig(heldout_users=0.1))
    assert load_dataset(same, cache_dir=tmp_path / "cache", verbose=False).info["cache_key"] == \
        load_dataset(base, cache_dir=tmp_path / "cache", verbose=False).info["cache_key"]


def test_synthetic_cache_key_follows_the_generator_config(tmp_path, data_env):
    a = load_dataset(DatasetConfig(synthetic=SMALL_SYNTHETIC), cache_dir=tmp_path, verbose=False)
    b = load_dataset(DatasetConfig(synthetic=dataclasses.replace(SMALL_SYNTHETIC, seed=1)), cache_dir=tmp_path, verbose=False)
    assert a.info["cache_key"] != b.info["cache_key"]
    assert a.info["cache_path"].endswith(f"processed/synthetic-{a.info['cache_key']}.npz")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "drop-json"])
def test_a_damaged_cache_is_reported_and_rebuilt(tmp_path, data_env, capsys, damage):
    cfg = DatasetConfig(synthetic=SMALL_SYNTHETIC)
    first = load_dataset(cfg, cache_dir=tmp_path, verbose=False)
    path = Path(first.info["cache_path"])
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:500])
    elif damage == "garbage":
        path.write_bytes(b"\x00not an npz at all")
    else:
        path.with_suffix(".json").unlink()
    capsys.readouterr()
    again = load_dataset(cfg, cache_dir=tmp_path, verbose=False)
    assert "warning: ignoring the damaged processed cache, rebuilding it" in capsys.readouterr().err
    assert _same(first, again)
    assert _same(first, SplitData.load(path))         # and the cache file is whole again


def test_cache_off_writes_nothing(tmp_path, data_env):
    split = load_dataset(DatasetConfig(synthetic=SMALL_SYNTHETIC, cache=False), cache_dir=tmp_path, verbose=False)
    assert split.info["cache_path"] is None
    assert not (tmp_path / "processed").exists()


def test_a_read_only_cache_is_not_fatal(tmp_path, data_env, monkeypatch, capsys):
    def refuse(self, path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(SplitData, "save", refuse)
    split = load_dataset(DatasetConfig(synthetic=SMALL_SYNTHETIC), cache_dir=tmp_path, verbose=False)
    assert split.info["cache_path"] is None
    assert "could not write the processed cache" in capsys.readouterr().err
