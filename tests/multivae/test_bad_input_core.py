"""Bad input to the core library through its Python API, one table of cases (the CLI cases are in
tests/test_bad_input.py): numeric domains of every config, YAML bounds, malformed data files and folders,
checkpoints, and the processed-split cache, which must rebuild itself exactly after any damage. The
full-disk tests mount a 64 kB tmpfs (root only; skipped elsewhere) so that ENOSPC comes from a real file system.
"""

from __future__ import annotations

import bz2
import json
import lzma
import os
import re
import subprocess
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from multivae.checkpoint import load_checkpoint, save_checkpoint
from multivae.config import check_domains, from_dict
from multivae.data import DatasetConfig, ProtocolConfig, SyntheticConfig, load_dataset
from multivae.data.readers import ids_like, read_movielens, read_table
from multivae.data.split import SplitData, _checksum
from multivae.errors import UserError, run_cli, short_repr
from multivae.evaluate import evaluate, popularity_scorer
from multivae.model import ModelConfig
from multivae.training import TrainConfig
from multivae.yamlfile import MAX_DEPTH, load_yaml_file, load_yaml_text

INF, NAN = float("inf"), float("nan")


# --- one table: (id, what to call, exception, regex the message must match) ------------------------

def _text(tmp: Path, name: str, content: str | bytes) -> Path:
    path = tmp / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


GOOD = "user,item,rating\n1,10,5\n1,11,4\n2,10,5\n"


def laughs(levels: int = 9) -> str:
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


CASES: list[tuple[str, Callable[[Path], object], type, str]] = [
    # numeric domains, Python API (ValueError from __post_init__) ...
    ("train-lr-inf", lambda t: TrainConfig(lr=INF), ValueError, r"^lr must be finite and > 0, got inf$"),
    ("train-lr-negative", lambda t: TrainConfig(lr=-1e-3), ValueError, r"^lr must be > 0, got -0\.001$"),
    ("train-seed-negative", lambda t: TrainConfig(seed=-1), ValueError, r"^seed must be in \[0, 2\*\*32\), got -1$"),
    ("train-seed-2**32", lambda t: TrainConfig(seed=2**32), ValueError, r"^seed must be in \[0, 2\*\*32\), got 4294967296$"),
    ("train-threads-zero", lambda t: TrainConfig(threads=0), ValueError, r"^threads must be >= 1, got 0$"),
    ("train-anneal-cap-inf", lambda t: TrainConfig(anneal_cap=INF), ValueError, r"^anneal_cap must be finite and >= 0, got inf$"),
    ("train-weight-decay-nan", lambda t: TrainConfig(weight_decay=NAN), ValueError, r"^weight_decay must be finite and >= 0, got nan$"),
    ("train-eval-batch-zero", lambda t: TrainConfig(eval_batch_size=0), ValueError, r"^eval_batch_size must be >= 1, got 0$"),
    ("train-lr-text", lambda t: TrainConfig(lr="fast"), ValueError, r"^lr must be a number > 0, got 'fast'$"),
    ("train-device-tpu", lambda t: TrainConfig(device="tpu"), ValueError, r"^device must be auto, cpu, cuda or cuda:N, got 'tpu'$"),
    ("train-device-cuda-x", lambda t: TrainConfig(device="cuda:x"), ValueError, r"got 'cuda:x'$"),
    ("train-device-cpu-0", lambda t: TrainConfig(device="cpu:0"), ValueError, r"got 'cpu:0'$"),
    ("model-dropout-1", lambda t: ModelConfig(dropout=1.0), ValueError, r"^dropout must be in \[0, 1\), got 1\.0$"),
    ("model-dropout-nan", lambda t: ModelConfig(dropout=NAN), ValueError, r"^dropout must be finite and in \[0, 1\), got nan$"),
    ("model-latent-zero", lambda t: ModelConfig(latent_dim=0), ValueError, r"^latent_dim must be >= 1, got 0$"),
    ("model-hidden-negative", lambda t: ModelConfig(hidden_dims=(600, -1)), ValueError, r"^hidden_dims\[1\] must be >= 1, got -1$"),
    ("protocol-target-fraction-inf", lambda t: ProtocolConfig(target_fraction=INF), ValueError, r"target_fraction must be finite"),
    ("synthetic-affinity-inf", lambda t: SyntheticConfig(affinity=INF), ValueError, r"^affinity must be finite and >= 0, got inf$"),
    ("synthetic-seed-negative", lambda t: SyntheticConfig(seed=-3), ValueError, r"^seed must be in \[0, 2\*\*32\), got -3$"),
    # ... and the same through from_dict (YAML, JSON, checkpoints): UserError naming the place
    ("dict-lr-inf", lambda t: from_dict(TrainConfig, {"lr": INF}, where="x.yaml"), UserError, r"^x\.yaml: lr must be finite, got inf$"),
    ("dict-seed-negative", lambda t: from_dict(TrainConfig, {"seed": -1}, where="x.yaml"), UserError,
     r"^x\.yaml: seed must be in \[0, 2\*\*32\), got -1$"),
    ("dict-nested-nan", lambda t: from_dict(DatasetConfig, {"protocol": {"min_rating": NAN}}, where="x.yaml", prefix="dataset"),
     UserError, r"^x\.yaml: dataset\.protocol\.min_rating must be finite, got nan$"),
    ("dict-int-over-64-bits", lambda t: from_dict(ModelConfig, {"latent_dim": 2**70}, where="x.yaml"), UserError,
     r"^x\.yaml: latent_dim must fit in 64 bits, got 1180591620717411303424$"),
    ("dict-long-value-quoted-short", lambda t: from_dict(ModelConfig, {"likelihood": "x" * 100_000}, where="x.yaml"), UserError,
     r"^x\.yaml: likelihood must be one of .{0,80}, got 'x{40,50}\.\.\.x{40,50}'$"),
    ("dict-long-key-quoted-short", lambda t: from_dict(ModelConfig, {"k" * 10_000: 1}, where="x.yaml"), UserError,
     r"^x\.yaml: unknown key 'k{40,50}\.\.\.k{40,50}' \(allowed:"),
    # YAML bounds
    ("yaml-deep-flow", lambda t: load_yaml_text("a: " + "[" * 100_000 + "]" * 100_000, "d.yaml"), UserError,
     rf"^d\.yaml: invalid YAML at line 1, column \d+: nested deeper than {MAX_DEPTH} levels$"),
    ("yaml-deep-block", lambda t: load_yaml_text("".join("- " * 200) + "x\n", "d.yaml"), UserError, r"nested deeper than 64 levels"),
    ("yaml-billion-laughs", lambda t: load_yaml_text(laughs(), "l.yaml"), UserError,
     r"^l\.yaml: invalid YAML at line \d+, column \d+: more than 100,000 values once its aliases are expanded"),
    ("yaml-recursive-alias", lambda t: load_yaml_text("a: &a [1, *a]\n", "r.yaml"), UserError, r"recursive alias"),
    ("yaml-too-long", lambda t: load_yaml_text("a: " + "x" * (1 << 21), "b.yaml"), UserError,
     r"^b\.yaml: 2,097,155 characters, larger than a YAML file here may be \(1,048,576\)$"),
    ("yaml-file-too-big", lambda t: load_yaml_file(_text(t, "big.yaml", b"#" * (3 << 20))), UserError,
     r"big\.yaml: larger than a YAML file here may be \(1,048,576 bytes\)$"),
    ("yaml-duplicate-long-key", lambda t: load_yaml_text(f"{'k' * 1000}: 1\n{'k' * 1000}: 2\n", "k.yaml"), UserError,
     r"found duplicate key 'k{40,50}\.\.\.k{40,50}'$"),
    ("yaml-duplicate-beside-a-merge-key", lambda t: load_yaml_text("base: &b {x: 1}\nrun:\n  <<: *b\n  y: 1\n  y: 2\n", "m.yaml"),
     UserError, r"^m\.yaml: invalid YAML at line 5, column 3: found duplicate key 'y'$"),
    ("yaml-two-merge-keys", lambda t: load_yaml_text("a: &a {x: 1}\nb: &b {x: 2}\nrun:\n  <<: *a\n  <<: *b\n", "m.yaml"),
     UserError, r"^m\.yaml: invalid YAML at line 4, column 3: found duplicate merge key '<<' \(merge several with <<: \[\*a, \*b\]\)$"),
    ("yaml-not-utf8", lambda t: load_yaml_file(_text(t, "b.yaml", b"a: \xff\xfe\n")), UserError, r"b\.yaml: cannot read it"),
    # data files: the file and the line or row
    ("csv-ragged", lambda t: read_table(_text(t, "r.csv", GOOD + "3,12,4,7\n")), UserError,
     r"r\.csv: line 5 has 4 fields, expected 3 \(as in the header\)$"),
    ("csv-inf-rating", lambda t: read_table(_text(t, "i.csv", GOOD + "3,12,-inf\n")), UserError,
     r"i\.csv: column 'rating' has a non-finite value -inf on line 5$"),
    ("csv-infinity-rating", lambda t: read_table(_text(t, "i.csv", GOOD.replace("1,11,4", "1,11,Infinity"))), UserError,
     r"i\.csv: column 'rating' has a non-finite value inf on line 3$"),
    ("csv-inf-user-id", lambda t: read_table(_text(t, "u.csv", GOOD + "inf,12,4\n")), UserError,
     r"u\.csv: column 'user' has a non-finite id inf on line 5$"),
    ("ml100k-ragged", lambda t: read_movielens("ml-100k", _text(t, "u.data", "1\t2\t5\t88\n1\t3\t4\t99\t7\n").parent), UserError,
     r"u\.data: line 2 has 5 fields, expected 4 \(as on line 1: user, item, rating, timestamp\)$"),
    ("ml100k-nan-rating", lambda t: read_movielens("ml-100k", _text(t, "u.data", "1\t2\t5\t88\n1\t3\tnan\t99\n").parent), UserError,
     r"u\.data: column 'rating \(field 3\)' has a non-finite value 'nan' on line 2$"),
    ("xz-corrupt", lambda t: read_table(_text(t, "c.csv.xz", b"not xz" * 20)), UserError, r"c\.csv\.xz: not a readable \.xz file"),
    ("bz2-truncated", lambda t: read_table(_text(t, "c.csv.bz2", bz2.compress(GOOD.encode() * 50)[:60])), UserError,
     r"c\.csv\.bz2: not a readable \.bz2 file, corrupt or truncated"),
    ("xz-truncated", lambda t: read_table(_text(t, "c.tsv.xz", lzma.compress(GOOD.replace(",", "\t").encode() * 50)[:80])), UserError,
     r"c\.tsv\.xz: not a readable \.xz file, corrupt or truncated"),
    ("parquet-map-column", lambda t: read_table(_parquet(t, pa.array([[("a", 1)]] * 3, pa.map_(pa.string(), pa.int64())))), UserError,
     r"m\.parquet: column 'item' has Parquet type .map<string, int64.*; an item id must be a number or a string$"),
    ("parquet-list-rating", lambda t: read_table(_parquet(t, pa.array([1, 2, 3]), rating=pa.array([[1.0]] * 3))), UserError,
     r"column 'rating' has Parquet type 'list<element: double>'; a rating must be a number or a string$"),
    ("data-path-is-a-folder", lambda t: read_table(t), UserError, r": is a folder, not a file of interactions$"),
    ("new-user-ids-not-integers", lambda t: ids_like(pd.Series([5, "a7"]), np.array([5, 6]), "n.csv", "item"), UserError,
     r"^n\.csv: item id 'a7' on line 3 is not one of the model's ids, which are integers"),
    ("new-user-ids-fractional", lambda t: ids_like(pd.Series([5.0, 6.5]), np.array([5, 6]), "n.csv", "item"), UserError,
     r"^n\.csv: item id 6\.5 on line 3 is not one of the model's ids"),
    ("new-user-ids-text-5.0", lambda t: ids_like(pd.Series(["5", "5.0"]), np.array([5, 6]), "n.csv", "item"), UserError,
     r"^n\.csv: item id '5\.0' on line 3 is not one of the model's ids, which are integers"),   # was taken for item 5
    # checkpoints
    ("ckpt-save-nan", lambda t: save_checkpoint({"model": {"w": torch.tensor([1.0, NAN])}}, t / "c.pt"), UserError,
     r"c\.pt: refusing to write a checkpoint whose model weights are not finite \(model\.w\)"),
    ("ckpt-save-inf-best", lambda t: save_checkpoint({"model": {"w": torch.ones(2)}, "best_model": {"b": torch.tensor([INF])}},
                                                     t / "c.pt"), UserError, r"not finite \(best_model\.b\)"),
    ("ckpt-load-inf", lambda t: load_checkpoint(_raw_checkpoint(t, {"w": torch.tensor([[0.0, -INF]])})), UserError,
     r"raw\.pt: refused to load: the model weights are not finite \(model\.w\)$"),
    ("ckpt-load-folder-without-one", lambda t: load_checkpoint(t), UserError, r"checkpoint\.pt: checkpoint not found$"),
    ("ckpt-version-quoted-short", lambda t: load_checkpoint(_raw_checkpoint(t, {}, version="v" * 10_000)), UserError,
     r"checkpoint version 'v{40,50}\.\.\.v{40,50}' is not supported"),
]


def _parquet(t: Path, item: pa.Array, rating: pa.Array | None = None) -> Path:
    pq.write_table(pa.table({"user": [1, 2, 3], "item": item, "rating": rating if rating is not None else [5.0, 4.0, 5.0]}),
                   t / "m.parquet")
    return t / "m.parquet"


def _raw_checkpoint(t: Path, weights: dict, version=1) -> Path:
    torch.save({"format": "multivae-checkpoint", "version": version, "model": weights}, t / "raw.pt")
    return t / "raw.pt"


@pytest.mark.parametrize("call, exc, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_core(tmp_path, call, exc, pattern):
    with pytest.raises(exc) as info:
        call(tmp_path)
    message = str(info.value)
    assert "\n" not in message and len(message) <= 400, message   # one line; values quoted short
    assert exc is ValueError or type(info.value) is UserError
    assert re.search(pattern, message), (pattern, message)
    # nothing was written: no checkpoint, no temporary file
    assert not list(tmp_path.glob(".*tmp*")) and not (tmp_path / "c.pt").exists()


def test_the_table_covers_every_class():
    assert len(CASES) >= 50 and len({c[0] for c in CASES}) == len(CASES)


def test_a_yaml_merge_key_override_is_not_a_duplicate():
    """`<<: *base` then a key of base: YAML's merge rule, the key written here wins (was refused as a duplicate)."""
    text = "base: &b {epochs: 5, lr: 0.01}\nrun:\n  <<: *b\n  epochs: 7\nboth:\n  <<: [*b, {lr: 0.1, seed: 3}]\n  seed: 4\n"
    data = load_yaml_text(text, "m.yaml")
    assert data["run"] == {"epochs": 7, "lr": 0.01}
    assert data["both"]["seed"] == 4 and data["both"]["epochs"] == 5   # written here wins over both merged mappings


def test_domain_rules_on_their_boundaries():
    class Box:
        def __init__(self, v):
            self.v = v

    for rule, inside, outside in [("in [0, 1)", (0, 0.999999), (1, -1e-12)), ("in (0, 0.5)", (1e-9, 0.4999), (0, 0.5)),
                                  ("in [0, 2**32)", (0, 2**32 - 1), (-1, 2**32)), ("> 0", (5e-324,), (0, -0.0)),
                                  (">= 1", (1,), (0.999,)), ("in (0, 1]", (1.0,), (0.0,))]:
        for v in inside:
            check_domains(Box(v), {"v": rule})
        for v in outside:
            with pytest.raises(ValueError, match=rf"^v must be {re.escape(rule)}, got "):
                check_domains(Box(v), {"v": rule})
    with pytest.raises(ValueError, match="not a domain rule"):
        check_domains(Box(1), {"v": "between 0 and 1"})


def test_short_repr_is_short_and_cheap_for_huge_shared_structures():
    node: list = ["lol"] * 10
    for _ in range(40):   # 10**41 leaves if it were expanded
        node = [node] * 10
    text = short_repr(node)
    assert len(text) <= 100 and text.startswith("[[")
    assert short_repr("x" * 10_000) == "'" + "x" * 47 + "..." + "x" * 48 + "'"   # reprlib keeps both ends
    assert short_repr(1.5) == "1.5" and short_repr(INF) == "inf"


def test_a_value_that_is_no_number_in_a_config_is_named_not_crashed():
    with pytest.raises(UserError, match=r"^c: threads must be int or null, got 'four'$"):
        from_dict(TrainConfig, {"threads": "four"}, where="c")


# --- the processed-split cache verifies itself and is rebuilt exactly -------------------------------

SMALL = DatasetConfig(name="synthetic", synthetic=SyntheticConfig(n_users=400, n_items=120, n_topics=6, seed=3),
                      protocol=ProtocolConfig(heldout_users=40))


def _arrays(split: SplitData) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in split.arrays().items()}


def _resave(npz: Path, change: Callable[[dict], None], resign: bool = False) -> None:
    """Rewrite the cache's .npz with `change` applied; `resign`: recompute the checksum too, so that only the
    structural checks stand between the damage and the model."""
    with np.load(npz) as z:
        arrays = dict(z)
    change(arrays)
    np.savez(npz, **arrays)
    if resign:
        meta = json.loads(npz.with_suffix(".json").read_text())
        meta["sha256"] = _checksum(arrays, {"info": meta["info"], "stats": meta["stats"]})
        npz.with_suffix(".json").write_text(json.dumps(meta))


def _out_of_range(a: dict) -> None:
    a["val_fold_in__indices"][3] = a["val_fold_in__shape"][1] + 7


def _cut_item_ids(a: dict) -> None:
    a["item_ids"] = a["item_ids"][:-1]


def _indptr_backwards(a: dict) -> None:
    a["train__indptr"][5] = a["train__indptr"][4] - 1


DAMAGES = {
    "sidecar-garbage": lambda npz: npz.with_suffix(".json").write_text("{ not json"),
    "sidecar-not-an-object": lambda npz: npz.with_suffix(".json").write_text("[1, 2]"),
    "sidecar-missing": lambda npz: npz.with_suffix(".json").unlink(),
    "sidecar-info-edited": lambda npz: npz.with_suffix(".json").write_text(
        npz.with_suffix(".json").read_text().replace('"heldout_users": 40', '"heldout_users": 41')),
    "npz-truncated": lambda npz: npz.write_bytes(npz.read_bytes()[: npz.stat().st_size * 2 // 3]),
    "npz-garbage": lambda npz: npz.write_bytes(b"PK\x03\x04" + b"\0" * 200),
    "npz-index-out-of-range": lambda npz: _resave(npz, _out_of_range),
    "npz-index-out-of-range-resigned": lambda npz: _resave(npz, _out_of_range, resign=True),
    "npz-item-ids-cut-short": lambda npz: _resave(npz, _cut_item_ids),
    "npz-item-ids-cut-short-resigned": lambda npz: _resave(npz, _cut_item_ids, resign=True),
    "npz-indptr-backwards-resigned": lambda npz: _resave(npz, _indptr_backwards, resign=True),
    "npz-array-missing": lambda npz: _resave(npz, lambda a: a.pop("test_target__indices")),
    "npz-one-bit-flipped": lambda npz: npz.write_bytes(_flip(npz.read_bytes())),
}


def _flip(data: bytes) -> bytes:
    b = bytearray(data)
    b[len(b) // 2] ^= 0x01
    return bytes(b)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The split built once into a clean cache, its arrays, and its popularity metrics."""
    cache = tmp_path_factory.mktemp("clean")
    split = load_dataset(SMALL, cache_dir=cache, verbose=False)
    npz = Path(split.info["cache_path"])
    assert npz.exists() and npz.with_suffix(".json").exists()
    score = popularity_scorer(split.train)
    return dict(cache=cache, npz=npz, arrays=_arrays(split), info=split.info,
                metrics=(evaluate(score, split.val_fold_in, split.val_target), evaluate(score, split.test_fold_in, split.test_target)))


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_cache_is_rebuilt_with_one_warning_and_identical_numbers(clean, damage, tmp_path, capsys, data_env):
    cache = tmp_path / "cache"
    (cache / "processed").mkdir(parents=True)
    npz = cache / "processed" / clean["npz"].name
    for src in (clean["npz"], clean["npz"].with_suffix(".json")):
        (cache / "processed" / src.name).write_bytes(src.read_bytes())
    assert np.array_equal(SplitData.load(npz).train.indices, clean["arrays"]["train__indices"])   # the copy is good

    DAMAGES[damage](npz)
    with pytest.raises(UserError, match=rf"^{re.escape(str(npz))}: not a readable processed split \("):
        SplitData.load(npz)
    capsys.readouterr()
    split = load_dataset(SMALL, cache_dir=cache, verbose=False)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: ignoring the damaged processed cache, rebuilding it: {npz}: "), err
    got = _arrays(split)
    assert got.keys() == clean["arrays"].keys()
    for k, v in clean["arrays"].items():
        assert v.dtype == got[k].dtype and np.array_equal(v, got[k]), k
    score = popularity_scorer(split.train)
    assert (evaluate(score, split.val_fold_in, split.val_target), evaluate(score, split.test_fold_in, split.test_target)) == clean["metrics"]

    # the rebuilt cache is whole again: loaded without a warning, the same arrays
    again = load_dataset(SMALL, cache_dir=cache, verbose=False)
    assert capsys.readouterr().err == ""
    assert all(np.array_equal(v, _arrays(again)[k]) for k, v in clean["arrays"].items())
    assert not list((cache / "processed").glob(".*tmp*"))


def test_a_cache_written_by_save_loads_back_exactly(clean):
    split = SplitData.load(clean["npz"])
    for k, v in clean["arrays"].items():
        assert np.array_equal(v, _arrays(split)[k]), k
    assert split.info["protocol"] == clean["info"]["protocol"]


def test_string_ids_survive_the_cache(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"sku-{i}") for u in range(120) for i in rng.choice(40, 8, replace=False)]
    df = pd.DataFrame(rows, columns=["user", "item"])
    from multivae.data.split import split_interactions
    split = split_interactions(df, ProtocolConfig(heldout_users=10), source="s")
    split.save(tmp_path / "s.npz")
    back = SplitData.load(tmp_path / "s.npz")
    assert list(back.item_ids) == list(split.item_ids) and list(back.test_user_ids) == list(split.test_user_ids)


# --- data folders: a missing one is an error, never created, nothing downloaded ----------------------

def test_missing_data_dir_env_is_an_error_and_creates_nothing(tmp_path, monkeypatch):
    missing = tmp_path / "no" / "such"
    monkeypatch.setenv("MULTIVAE_DATA_DIR", str(missing))
    monkeypatch.setenv("MULTIVAE_BASE_URL", "http://127.0.0.1:9/")   # were anything downloaded, it would fail here
    for cfg in (DatasetConfig(name="ml-100k"), SMALL):   # a lookup, and the default cache of a synthetic split
        with pytest.raises(UserError, match=rf"^\$MULTIVAE_DATA_DIR {re.escape(str(missing))}: no such folder$"):
            load_dataset(cfg, verbose=False)
    assert not (tmp_path / "no").exists()


def test_data_dir_that_is_a_file_or_missing(tmp_path, data_env):
    (tmp_path / "f.csv").write_text(GOOD)
    with pytest.raises(UserError, match=r"data folder \(data_dir, --data-dir\) .*f\.csv: is a file, not a folder$"):
        load_dataset(DatasetConfig(name="ml-1m", data_dir=str(tmp_path / "f.csv")), cache_dir=tmp_path / "c", verbose=False)
    with pytest.raises(UserError, match=r"nope: no such folder$"):
        load_dataset(DatasetConfig(name="ml-1m", data_dir=str(tmp_path / "nope")), cache_dir=tmp_path / "c", verbose=False)
    assert not (tmp_path / "nope").exists()


def test_new_user_ids_follow_the_catalogue_type():
    assert ids_like(pd.Series(["5", "6"]), np.array([5, 6]), "n", "item").tolist() == [5, 6]
    assert ids_like(pd.Series([5.0, 6.0]), np.array([5, 6]), "n", "item").dtype == np.int64
    assert ids_like(pd.Series([5, 6]), np.array(["5", "x"]), "n", "item").tolist() == ["5", "6"]


# --- checkpoints: a failed save leaves the previous one and no temporary file -----------------------

def test_a_failed_save_leaves_no_temporary_and_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint({"model": {"w": torch.zeros(3)}, "extra": {"f": lambda: 0}}, path)   # a lambda cannot be pickled
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))


# --- a full disk, for real: a 64 kB tmpfs --------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 64 kB tmpfs with `fill(free_pages)` to leave only that much room; skipped where it cannot be mounted."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a full disk needs a small tmpfs, and mounting one needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")

    def fill(free_pages: int) -> None:
        fd = os.open(mnt / ".filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        size = (mnt / ".filler").stat().st_size
        os.truncate(mnt / ".filler", max(0, size - free_pages * 4096))

    yield mnt, fill
    subprocess.run(["umount", str(mnt)], check=False)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != ".filler")


def test_full_disk_checkpoint_save_is_one_line_and_leaves_nothing(small_disk):
    mnt, fill = small_disk
    fill(0)
    with pytest.raises(UserError, match=r"checkpoint\.pt: cannot write the checkpoint \(No space left on device\); the previous one"):
        save_checkpoint({"model": {"w": torch.zeros(50_000)}}, mnt / "checkpoint.pt")
    assert _files(mnt) == []


def test_full_disk_split_cache_is_skipped_with_a_warning(small_disk, capsys, data_env):
    mnt, fill = small_disk
    fill(0)
    split = load_dataset(SMALL, cache_dir=mnt, verbose=False)
    err = capsys.readouterr().err
    assert "warning: could not write the processed cache" in err and "No space left on device" in err
    assert split.info["cache_path"] is None and _files(mnt) == []


def test_full_disk_during_training_is_exit_2_one_line_nothing_half_written(small_disk, tmp_path, capsys, data_env):
    from multivae import train

    mnt, fill = small_disk
    rng = np.random.default_rng(0)
    pd.DataFrame([(u, int(i), 5) for u in range(80) for i in rng.choice(60, 10, replace=False)],
                 columns=["user", "item", "rating"]).to_csv(tmp_path / "good.csv", index=False)
    fill(1)   # room for the start-up probe of --out, not for a checkpoint
    capsys.readouterr()
    rc = run_cli(train.main, ["--data", str(tmp_path / "good.csv"), "--out", str(mnt / "run"), "--cache-dir", str(tmp_path / "cache"),
                              "--quiet", "--epochs", "1", "--hidden-dims", "16", "--latent-dim", "8"], prog="multivae.train")
    err = capsys.readouterr().err.splitlines()
    assert rc == 2
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1 and "checkpoint.pt: cannot write the checkpoint (No space left on device)" in errors[0], err
    assert not any("Traceback" in line for line in err)
    # no checkpoint, no metrics.json, no temporary file; only the writer's lock beside the folder (docs/faults.md),
    # empty and free again
    assert _files(mnt) == [".run.lock"] and (mnt / ".run.lock").stat().st_size == 0
    from multivae.files import WriterLock
    with WriterLock(mnt / ".run.lock", mnt / "run", "busy", "wait"):
        pass
