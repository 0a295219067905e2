"""Bad input to the three CLIs, each run as a user runs it (`python -m ...` in its own process): exit code 2,
exactly one line on stderr naming the file, key or value, no traceback, and nothing written.

Categories: YAML search spaces (`tuning.run`), data files (`multivae.train --data`), command-line flags, and
checkpoints given to `multivae.recommend`. One more case is not an error: duplicated rows are dropped with a
warning and the run succeeds.

The processes start in parallel (two at a time: each spends ~2 s of CPU importing torch), once per test
session, for the cases the session selected; every test then checks its own case. A few extra cases, beyond
the categories above, run in the test process through the same `run_cli` entry (same checks, no start-up).
Each case gets its own folder; the shared input folder and the case's folder are snapshotted (path, size,
mtime, content hash) before and after, and the output paths a case names must not appear. `--cache-dir` always points into the case's
folder (excluded from the snapshot: a fingerprint of the source file may be cached there before the data is
found bad), so no test touches ~/.cache.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

REPO = Path(__file__).absolute().parents[1]
SMOKE = REPO / "search_spaces" / "smoke.yaml"
PARALLEL = 2
TIMEOUT_S = 120


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    module: str           # multivae.train | multivae.recommend | tuning.run | tuning.report
    argv: tuple           # "{d}": the shared input folder, "{t}": the case's own folder
    needles: tuple        # each must be in the stderr line
    outputs: tuple = ()   # paths (templates) the command would write to: must not exist afterwards
    in_process: bool = False   # run through run_cli in the test process (the same checks, no process start-up)
    env: tuple = ()       # (name, value template) pairs set for the command
    without_cuda: bool = False   # the error is "CUDA is not available": skipped where it is


def space_yaml(**changes) -> str:
    """smoke.yaml with `changes` applied: "section.key" -> value (None deletes the key)."""
    data = yaml.safe_load(SMOKE.read_text())
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return yaml.safe_dump(data, sort_keys=False)


# name -> YAML text; each is run as `tuning.run --space {d}/<name>`
SPACES = {
    "syntax_error.yaml": "params:\n  lr: {type: loguniform, low: 1.0e-3, high: 1.0e-2\nsearch: {num_samples: 2}\n",
    "unknown_top.yaml": space_yaml(trainer={"epochs": 3}),
    "unknown_param.yaml": space_yaml(**{"params.learning_rate": {"type": "uniform", "low": 0.1, "high": 0.2}}),
    "unknown_search.yaml": space_yaml(**{"search.trials": 5}),
    "wrong_type.yaml": space_yaml(**{"fixed.batch_size": "big"}),
    "low_gt_high.yaml": space_yaml(**{"params.dropout": {"type": "uniform", "low": 0.6, "high": 0.2}}),
    "loguniform_zero.yaml": space_yaml(**{"params.lr": {"type": "loguniform", "low": 0.0, "high": 0.01}}),
    "empty_choice.yaml": space_yaml(**{"params.latent_dim": {"type": "choice", "values": []}}),
    "int_bounds.yaml": space_yaml(**{"params.latent_dim": {"type": "int", "low": 8.5, "high": 32},
                                     "search.points_to_evaluate": None}),
    "unknown_scheduler.yaml": space_yaml(scheduler={"type": "hyperband", "max_t": 6}),
    "max_t_lt_grace.yaml": space_yaml(scheduler={"type": "asha", "max_t": 6, "grace_period": 8, "reduction_factor": 2}),
    "num_samples_zero.yaml": space_yaml(**{"search.num_samples": 0}),
    "too_many_gpus.yaml": space_yaml(**{"resources.gpus_per_trial": 64}),
    "missing_data_file.yaml": space_yaml(dataset={"name": "file", "path": "no_such_ratings.csv", "rating_col": None}),
    "weight_decay_inf.yaml": space_yaml(**{"fixed.weight_decay": float("inf")}),
    "lr_high_inf.yaml": space_yaml(**{"params.lr": {"type": "uniform", "low": 1.0e-3, "high": float("inf")}}),
    "seed_negative.yaml": space_yaml(**{"fixed.seed": -1}),
    "protocol_seed_too_big.yaml": space_yaml(**{"dataset.protocol": {"heldout_users": 150, "seed": 2**32}}),
    "epochs_nan.yaml": space_yaml(**{"fixed.epochs": float("nan")}),
    "long_value.yaml": space_yaml(**{"fixed.likelihood": "x" * 20_000}),
    "deep.yaml": SMOKE.read_text() + "\nextra: " + "[" * 5000 + "]" * 5000 + "\n",
    "too_big.yaml": "description: " + "x" * (2 << 20) + "\n",
    "recursive_alias.yaml": SMOKE.read_text().replace("description: >", "x: &a [*a]\ndescription: >", 1),
    # nine levels of ten aliases each: 10**9 strings once expanded, a few hundred bytes of YAML
    "billion_laughs.yaml": SMOKE.read_text().replace("description: >", "laughs:\n  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
                                                   + "".join(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9))
                                                   + "description: >", 1),
}


TUNE = ("--storage", "{t}/ray_results", "--name", "x", "--cache-dir", "{t}/cache", "--num-cpus", "2")
# before a case's own flags, which win (argparse keeps the last): a case that wrongly got past its check
# trains one small epoch, not 200
TRAIN_DEFAULTS = ("--out", "{t}/run", "--cache-dir", "{t}/cache", "--quiet", "--epochs", "1", "--hidden-dims", "8", "--latent-dim", "4")


def tune_case(name: str, *needles: str) -> Case:
    return Case(f"space-{name.removesuffix('.yaml')}", "tuning.run", ("--space", f"{{d}}/{name}", *TUNE), (name, *needles),
                ("{t}/ray_results",))


def train_case(id_: str, argv: tuple, *needles: str, in_process: bool = False) -> Case:
    return Case(id_, "multivae.train", (*TRAIN_DEFAULTS, *argv), needles, ("{t}/run",), in_process)


def rec_case(id_: str, argv: tuple, *needles: str, in_process: bool = False) -> Case:
    return Case(id_, "multivae.recommend", argv, needles, in_process=in_process)


def flag_case(id_: str, argv: tuple, *needles: str, in_process: bool = True, without_cuda: bool = False) -> Case:
    """A bad training flag: refused before the data is read (the good file is named so that nothing else fails)."""
    return Case(id_, "multivae.train", (*TRAIN_DEFAULTS, "--data", "{d}/good.csv", *argv), needles, ("{t}/run",), in_process,
                without_cuda=without_cuda)


CASES = [
    # --- YAML search spaces (tuning.run): file, key path and value named; before Ray starts ---
    tune_case("syntax_error.yaml", "invalid YAML at line"),
    tune_case("unknown_top.yaml", "unknown key 'trainer'"),
    tune_case("unknown_param.yaml", "unknown key 'params.learning_rate'"),
    tune_case("unknown_search.yaml", "unknown key 'search.trials'"),
    tune_case("wrong_type.yaml", "fixed.batch_size", "'big'"),
    tune_case("low_gt_high.yaml", "params.dropout.low must be < high", "low=0.6, high=0.2"),
    tune_case("loguniform_zero.yaml", "params.lr.low must be > 0 for loguniform, got 0.0"),
    tune_case("empty_choice.yaml", "params.latent_dim.values must be a non-empty list, got []"),
    tune_case("int_bounds.yaml", "params.latent_dim.low must be an integer, got 8.5"),
    tune_case("unknown_scheduler.yaml", "scheduler.type must be one of fifo, asha, bohb, pbt, got 'hyperband'"),
    tune_case("max_t_lt_grace.yaml", "scheduler.max_t must be >= grace_period (8), got 6"),
    tune_case("num_samples_zero.yaml", "search.num_samples must be >= 1, got 0"),
    tune_case("too_many_gpus.yaml", "resources.gpus_per_trial is 64", "GPUs are available"),
    Case("space-missing_data_file", "tuning.run", ("--space", "{d}/missing_data_file.yaml", *TUNE),
         ("no_such_ratings.csv: file not found",), ("{t}/ray_results",), in_process=True),
    Case("tune-unknown-dataset", "tuning.run", ("--space", "smoke", "--dataset", "ml-99m", *TUNE), ("ml-99m", "unknown dataset name"),
         ("{t}/ray_results",), in_process=True),
    Case("tune-cpus-over-local", "tuning.run", ("--space", "smoke", "--cpus-per-trial", "3", *TUNE),
         ("cpus_per_trial is 3", "2 CPUs"), ("{t}/ray_results",), in_process=True),
    Case("tune-cpus-fractional", "tuning.run", ("--space", "smoke", "--cpus-per-trial", "1.5", *TUNE),
         ("resources.cpus_per_trial must be a fraction <= 1 or a whole number", "1.5"), ("{t}/ray_results",), in_process=True),
    Case("tune-gpus-fractional", "tuning.run", ("--space", "smoke", "--gpus-per-trial", "2.5", *TUNE),
         ("resources.gpus_per_trial must be a fraction <= 1 or a whole number", "2.5"), ("{t}/ray_results",), in_process=True),
    # a fraction Ray cannot represent crashed inside Ray ("Tracked actor is not managed...") and left the folder
    Case("tune-cpus-below-ray-resolution", "tuning.run", ("--space", "smoke", "--cpus-per-trial", "0.00001", *TUNE),
         ("resources.cpus_per_trial must be a multiple of 0.0001", "1e-05"), ("{t}/ray_results",), in_process=True),
    Case("tune-gpus-between-ray-units", "tuning.run", ("--space", "smoke", "--gpus-per-trial", "0.00015", *TUNE),
         ("resources.gpus_per_trial must be a multiple of 0.0001", "0.00015"), ("{t}/ray_results",), in_process=True),
    Case("tune-num-cpus-huge", "tuning.run", ("--space", "smoke", *TUNE, "--num-cpus", str(2**40)),
         ("--num-cpus must be at most 2147483647", str(2**40)), ("{t}/ray_results",), in_process=True),
    Case("tune-name-too-long", "tuning.run", ("--space", "smoke", *TUNE, "--name", "n" * 300),
         ("--name is 300 bytes long", "at most 200"), ("{t}/ray_results",), in_process=True),
    Case("tune-name-with-slash", "tuning.run", ("--space", "smoke", *TUNE, "--name", "a/b"),
         ("--name must be a plain directory name", "'a/b'"), ("{t}/ray_results",), in_process=True),
    Case("tune-name-with-newline", "tuning.run", ("--space", "smoke", *TUNE, "--name", "a\nb"),   # it broke the printed commands
         ("--name must be a plain directory name", "'a\\nb'"), ("{t}/ray_results",), in_process=True),
    Case("tune-address-unreachable", "tuning.run", ("--space", "smoke", *TUNE, "--address", "127.0.0.1:9"),
         ("--address 127.0.0.1:9: nothing answers there",), ("{t}/ray_results",), in_process=True),
    Case("tune-resume-run-meta-corrupt", "tuning.run", ("--resume", "--name", "meta_bad", "--storage", "{d}/exps", "--cache-dir", "{t}/cache"),
         ("meta_bad/tuning_run.json: the run's metadata is not valid JSON",), in_process=True),
    Case("tune-resume-run-meta-not-ours", "tuning.run", ("--resume", "--name", "meta_list", "--storage", "{d}/exps", "--cache-dir", "{t}/cache"),
         ("meta_list/tuning_run.json: not the run metadata tuning.run writes",), in_process=True),
    Case("tune-resume-experiment-state-corrupt", "tuning.run",
         ("--resume", "--name", "state_bad", "--storage", "{d}/exps", "--cache-dir", "{t}/cache"),
         ("state_bad/experiment_state-2026-01-01_00-00-00.json: Tune's experiment state is damaged", "--resume --finalize"),
         in_process=True),
    Case("report-binary-result-json", "tuning.report", ("{d}/exps/binary_results", "--out", "{t}/report"),
         ("binary_results: no trial has a readable result",), ("{t}/report",), in_process=True),

    # --- data files (multivae.train --data) ---
    train_case("data-missing", ("--data", "{d}/missing.csv"), "missing.csv: file not found"),
    train_case("data-empty", ("--data", "{d}/empty.csv"), "empty.csv: file is empty"),
    train_case("data-header-only", ("--data", "{d}/header_only.csv"), "header_only.csv: no rows (only a header)"),
    train_case("data-no-user-column", ("--data", "{d}/no_user.csv"), "no_user.csv: no user column 'user'", "'uid'"),
    train_case("data-no-item-column", ("--data", "{d}/good.csv", "--item-col", "movie"), "good.csv: no item column 'movie'",
               in_process=True),
    train_case("data-non-numeric-rating", ("--data", "{d}/bad_rating.csv"), "bad_rating.csv: column 'rating' has a non-numeric value 'five' on line 7"),
    train_case("data-too-few-users", ("--data", "{d}/good.csv", "--heldout-users", "50"), "good.csv", "heldout_users=50",
               "only 80 users pass the filters"),
    train_case("data-all-filtered", ("--data", "{d}/good.csv", "--min-rating", "5"), "good.csv: every user was filtered out",
               "min_rating=5.0"),

    # --- command-line flags ---
    train_case("cli-train-unknown-flag", ("--bogus",), "unrecognized arguments: --bogus"),
    train_case("cli-negative-epochs", ("--data", "{d}/good.csv", "--epochs", "-3"), "--epochs must be >= 1, got -3"),
    train_case("cli-bad-dropout", ("--data", "{d}/good.csv", "--dropout", "1.5"), "dropout must be in [0, 1), got 1.5", in_process=True),
    rec_case("cli-k-zero", ("--checkpoint", "{d}/run", "--user", "1", "-k", "0"), "-k must be >= 1, got 0"),
    rec_case("cli-out-exists", ("--checkpoint", "{d}/run", "--user", "1", "--out", "{t}/keep.txt"),
             "keep.txt: the file exists; pass --overwrite to replace it", in_process=True),
    rec_case("cli-out-inside-the-model-it-reads", ("--checkpoint", "{d}/run", "--user", "1", "--out", "{d}/run/model/weights.pt",
                                                   "--overwrite"), "is inside the model folder or run", "/run/model", in_process=True),
    train_case("cli-unknown-dataset", ("--dataset", "ml-99m"), "unknown dataset name 'ml-99m'"),
    rec_case("cli-checkpoint-dir-missing", ("--checkpoint", "{t}/no_such_run", "--user", "1"), "no_such_run", "checkpoint not found"),
    train_case("cli-out-below-a-file", ("--data", "{d}/good.csv", "--out", "{d}/good.csv/run"), "good.csv is not a directory", in_process=True),

    # --- checkpoints given to recommend ---
    rec_case("ckpt-truncated", ("--checkpoint", "{d}/truncated.pt", "--user", "1"), "truncated.pt: not a readable checkpoint"),
    rec_case("ckpt-other-torch-file", ("--checkpoint", "{d}/other.pt", "--user", "1"), "other.pt: not a multivae checkpoint"),
    rec_case("ckpt-untrusted-pickle", ("--checkpoint", "{d}/evil.pt", "--user", "1"), "evil.pt: refused to load", "weights_only=True"),
    rec_case("ckpt-weights-for-other-item-count", ("--checkpoint", "{d}/more_items.pt", "--user", "1"),
             "more_items.pt: weights do not match the model config"),
    rec_case("ckpt-split-with-other-items", ("--checkpoint", "{d}/other_split.pt", "--user", "1"),
             "other_split.npz: this processed split has 200 items", "other_split.pt"),
    rec_case("ckpt-new-users-of-other-items", ("--checkpoint", "{d}/run", "--items-file", "{d}/other_items.csv"),
             "other_items.csv: none of its 6 item ids", "10001"),

    # --- numeric domains: every flag checked where the config is built (one rule, one message) ---
    flag_case("cli-lr-inf", ("--lr", "inf"), "command line: lr must be finite, got inf", in_process=False),
    flag_case("cli-lr-nan", ("--lr", "nan"), "lr must be finite, got nan"),
    flag_case("cli-lr-zero", ("--lr", "0"), "lr must be > 0, got 0.0"),
    flag_case("cli-seed-negative", ("--seed", "-1"), "seed must be in [0, 2**32), got -1"),
    flag_case("cli-seed-too-big", ("--seed", str(2**32)), "seed must be in [0, 2**32), got 4294967296"),
    flag_case("cli-seed-over-64-bits", ("--seed", "9" * 30), "seed must fit in 64 bits"),
    flag_case("cli-threads-negative", ("--threads", "-2"), "threads must be >= 1, got -2", in_process=False),
    flag_case("cli-anneal-cap-inf", ("--anneal-cap", "inf"), "anneal_cap must be finite, got inf"),
    flag_case("cli-anneal-cap-negative", ("--anneal-cap", "-0.1"), "anneal_cap must be >= 0, got -0.1"),
    flag_case("cli-anneal-steps-negative", ("--anneal-steps", "-5"), "anneal_steps must be >= 0, got -5"),
    flag_case("cli-weight-decay-negative", ("--weight-decay=-1e-3",), "weight_decay must be >= 0, got -0.001"),
    flag_case("cli-dropout-nan", ("--dropout", "nan"), "dropout must be finite, got nan"),
    flag_case("cli-latent-dim-zero", ("--latent-dim", "0"), "latent_dim must be >= 1, got 0"),
    flag_case("cli-hidden-dim-zero", ("--hidden-dims", "8", "0"), "hidden_dims[1] must be >= 1, got 0"),
    flag_case("cli-min-rating-nan", ("--min-rating", "nan"), "min_rating must be finite, got nan"),
    flag_case("cli-heldout-users-inf", ("--heldout-users", "inf"), "heldout_users must be finite, got inf"),
    flag_case("cli-device-unknown-type", ("--device", "tpu"), "device must be auto, cpu, cuda or cuda:N, got 'tpu'",
              in_process=False),
    flag_case("cli-device-bad-index", ("--device", "cuda:x"), "device must be auto, cpu, cuda or cuda:N, got 'cuda:x'"),
    flag_case("cli-device-cuda-absent", ("--device", "cuda:0"), "device 'cuda:0' requested but CUDA is not available",
              without_cuda=True),

    # --- YAML search spaces: the same domains, and bounds on the document itself ---
    Case("space-weight_decay_inf", "tuning.run", ("--space", "{d}/weight_decay_inf.yaml", *TUNE),
         ("weight_decay_inf.yaml", "fixed.weight_decay must be finite, got inf"), ("{t}/ray_results",), in_process=True),
    Case("space-lr_high_inf", "tuning.run", ("--space", "{d}/lr_high_inf.yaml", *TUNE),
         ("lr_high_inf.yaml", "params.lr", "inf"), ("{t}/ray_results",), in_process=True),
    Case("space-seed_negative", "tuning.run", ("--space", "{d}/seed_negative.yaml", *TUNE),
         ("seed_negative.yaml", "fixed: seed must be in [0, 2**32), got -1"), ("{t}/ray_results",), in_process=True),
    Case("space-protocol_seed_too_big", "tuning.run", ("--space", "{d}/protocol_seed_too_big.yaml", *TUNE),
         ("protocol_seed_too_big.yaml", "dataset.protocol: seed must be in [0, 2**32), got 4294967296"), ("{t}/ray_results",),
         in_process=True),
    Case("space-epochs_nan", "tuning.run", ("--space", "{d}/epochs_nan.yaml", *TUNE),
         ("epochs_nan.yaml", "fixed.epochs", "nan"), ("{t}/ray_results",), in_process=True),
    Case("space-long_value", "tuning.run", ("--space", "{d}/long_value.yaml", *TUNE),
         ("long_value.yaml", "fixed.likelihood must be one of", "xxx..."), ("{t}/ray_results",), in_process=True),
    Case("space-deep", "tuning.run", ("--space", "{d}/deep.yaml", *TUNE), ("deep.yaml", "nested deeper than 64 levels"),
         ("{t}/ray_results",), in_process=True),
    Case("space-too_big", "tuning.run", ("--space", "{d}/too_big.yaml", *TUNE), ("too_big.yaml", "larger than a YAML file"),
         ("{t}/ray_results",), in_process=True),
    Case("space-recursive_alias", "tuning.run", ("--space", "{d}/recursive_alias.yaml", *TUNE),
         ("recursive_alias.yaml", "recursive alias"), ("{t}/ray_results",), in_process=True),
    Case("space-billion_laughs", "tuning.run", ("--space", "{d}/billion_laughs.yaml", *TUNE),
         ("billion_laughs.yaml", "more than 100,000 values once its aliases are expanded"), ("{t}/ray_results",)),

    # --- malformed data files: the file and the line (or row) named ---
    train_case("data-ragged-line", ("--data", "{d}/ragged.csv"), "ragged.csv: line 6 has 4 fields, expected 3 (as in the header)"),
    train_case("data-inf-rating", ("--data", "{d}/inf_rating.csv"), "inf_rating.csv: column 'rating' has a non-finite value inf on line 4",
               in_process=True),
    train_case("data-inf-item-id", ("--data", "{d}/inf_item.csv"), "inf_item.csv: column 'item' has a non-finite id inf on line 3",
               in_process=True),
    train_case("data-corrupt-gz", ("--data", "{d}/corrupt.csv.gz"), "corrupt.csv.gz: not a readable .gz file, corrupt or truncated",
               in_process=True),
    train_case("data-truncated-gz", ("--data", "{d}/truncated.csv.gz"), "truncated.csv.gz: not a readable .gz file, corrupt or truncated"),
    train_case("data-corrupt-bz2", ("--data", "{d}/corrupt.csv.bz2"), "corrupt.csv.bz2: not a readable .bz2 file", in_process=True),
    train_case("data-corrupt-zip", ("--data", "{d}/corrupt.csv.zip"), "corrupt.csv.zip: not a readable .zip file", in_process=True),
    train_case("data-parquet-list-column", ("--data", "{d}/list_items.parquet"),
               "list_items.parquet: column 'item' has Parquet type 'list<element: int64>'", in_process=True),
    train_case("data-parquet-struct-column", ("--data", "{d}/struct_users.parquet"),
               "struct_users.parquet: column 'user' has Parquet type 'struct<", in_process=True),
    train_case("data-path-is-a-folder", ("--data", "{d}/folder.csv"), "folder.csv: is a folder, not a file of interactions",
               in_process=True),
    Case("data-dir-missing", "multivae.train", (*TRAIN_DEFAULTS, "--dataset", "ml-100k", "--data-dir", "{t}/no_such_dir"),
         ("--data-dir", "no_such_dir: no such folder"), ("{t}/run", "{t}/no_such_dir"), in_process=True),
    Case("data-dir-is-a-file", "multivae.train", (*TRAIN_DEFAULTS, "--dataset", "ml-100k", "--data-dir", "{d}/good.csv"),
         ("good.csv: is a file, not a folder",), ("{t}/run",), in_process=True),
    Case("env-data-dir-missing", "multivae.train", (*TRAIN_DEFAULTS, "--dataset", "ml-100k"),
         ("$MULTIVAE_DATA_DIR", "no_such_dir: no such folder"), ("{t}/run", "{t}/no_such_dir"),
         env=(("MULTIVAE_DATA_DIR", "{t}/no_such_dir"),)),
    Case("env-data-dir-is-a-file", "multivae.train", (*TRAIN_DEFAULTS, "--dataset", "ml-100k"),
         ("$MULTIVAE_DATA_DIR", "good.csv: is a file, not a folder"), ("{t}/run",), in_process=True,
         env=(("MULTIVAE_DATA_DIR", "{d}/good.csv"),)),
    train_case("cache-dir-is-a-file", ("--data", "{d}/good.csv", "--cache-dir", "{d}/good.csv"), "cache folder",
               "good.csv: is a file, not a folder", in_process=True),

    # --- checkpoints, processed splits and new-users files given to recommend ---
    rec_case("ckpt-non-finite-weights", ("--checkpoint", "{d}/nan_weights.pt", "--user", "1"),
             "nan_weights.pt: refused to load: the model weights are not finite (model.enc_w.0)"),
    rec_case("ckpt-split-cache-damaged", ("--checkpoint", "{d}/damaged_split.pt", "--user", "1"),
             "damaged_split.npz: not a readable processed split", "checksum", in_process=True),
    rec_case("ckpt-split-cache-truncated", ("--checkpoint", "{d}/truncated_split.pt", "--user", "1"),
             "truncated_split.npz: not a readable processed split", in_process=True),
    rec_case("items-file-ids-of-another-type", ("--checkpoint", "{d}/run", "--items-file", "{d}/string_items.csv"),
             "string_items.csv: item id 'sku-1' on line 2 is not one of the model's ids, which are integers", in_process=True),
    rec_case("items-file-ragged", ("--checkpoint", "{d}/run", "--items-file", "{d}/ragged_items.csv"),
             "ragged_items.csv: line 3 has 3 fields, expected 2", in_process=True),
]
assert len({c.id for c in CASES}) == len(CASES)


class Evil:
    """Unpickling this would create a folder: weights_only=True must refuse it before anything runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def interactions(n_users: int, n_items: int, per_user: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [(u, int(i), int(rng.integers(4, 6))) for u in range(1, n_users + 1)
            for i in rng.choice(n_items, per_user, replace=False)]
    return pd.DataFrame(rows, columns=["user", "item", "rating"])


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("MULTIVAE_", "RAY_ADDRESS"))}
    e["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return e


def run_module(module: str, argv: list[str], extra_env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, env={**env(), **(extra_env or {})}, capture_output=True,
                          text=True, timeout=TIMEOUT_S)


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict:
    out = {}
    for p in sorted(root.rglob("*")):
        if any(p == s or s in p.parents for s in skip):
            continue
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else "dir"
        out[str(p.relative_to(root))] = (st.st_size if digest != "dir" else 0, st.st_mtime_ns if digest != "dir" else 0, digest)
    return out


def make_inputs(d: Path) -> SimpleNamespace:
    """The shared inputs: data files, a trained run (from a file with duplicated rows), damaged checkpoints."""
    import torch

    from multivae.checkpoint import CHECKPOINT_NAME
    from tests.multivae.helpers import small_split

    good = interactions(80, 60, 10)
    good.to_csv(d / "good.csv", index=False)
    pd.concat([good, good.iloc[:7]]).to_csv(d / "with_duplicates.csv", index=False)
    (d / "empty.csv").write_bytes(b"")
    (d / "header_only.csv").write_text("user,item,rating\n")
    good.rename(columns={"user": "uid"}).to_csv(d / "no_user.csv", index=False)
    bad = good.astype({"rating": object})
    bad.loc[5, "rating"] = "five"
    bad.to_csv(d / "bad_rating.csv", index=False)
    pd.DataFrame({"user": [1, 1, 1, 2, 2, 2], "item": [10001, 10002, 10003, 10004, 10005, 10006]}).to_csv(d / "other_items.csv", index=False)
    for name, text in SPACES.items():
        (d / name).write_text(text)
    lines = good.to_csv(index=False).splitlines(keepends=True)
    (d / "ragged.csv").write_text("".join(lines[:5] + [lines[5].rstrip("\n") + ",1\n"] + lines[6:]))   # line 6: 4 fields
    inf = good.astype({"rating": float})
    inf.loc[2, "rating"] = float("inf")
    inf.to_csv(d / "inf_rating.csv", index=False)
    inf_item = good.astype({"item": float})
    inf_item.loc[1, "item"] = float("inf")
    inf_item.to_csv(d / "inf_item.csv", index=False)
    gz = gzip.compress(good.to_csv(index=False).encode())
    (d / "truncated.csv.gz").write_bytes(gz[: len(gz) // 2])
    for suffix in ("gz", "bz2", "zip"):
        (d / f"corrupt.csv.{suffix}").write_bytes(b"these bytes are not compressed\n" * 10)
    pa_table = pa.table({"user": good["user"], "item": pa.array([[i] for i in good["item"]]), "rating": good["rating"]})
    pq.write_table(pa_table, d / "list_items.parquet")
    pa_table = pa.table({"user": pa.array([{"id": u} for u in good["user"]]), "item": good["item"], "rating": good["rating"]})
    pq.write_table(pa_table, d / "struct_users.parquet")
    (d / "folder.csv").mkdir()
    (d / "string_items.csv").write_text("user,item\nu1,sku-1\nu1,sku-2\n")
    (d / "ragged_items.csv").write_text("user,item\nu1,1\nu1,2,3\n")

    # the duplicated-rows case is the run the checkpoint cases start from
    dup = run_module("multivae.train", ["--data", str(d / "with_duplicates.csv"), "--out", str(d / "run"), "--cache-dir",
                                        str(d / "cache"), "--epochs", "1", "--batch-size", "64", "--hidden-dims", "16",
                                        "--latent-dim", "8", "--quiet"])
    ckpt = d / "run" / CHECKPOINT_NAME
    if dup.returncode != 0:
        return SimpleNamespace(dup=dup, ckpt=ckpt)
    payload = torch.load(ckpt, weights_only=True)
    n_items = payload["n_items"]
    (d / "truncated.pt").write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    torch.save({"weights": torch.zeros(3)}, d / "other.pt")
    torch.save({"format": "multivae-checkpoint", "version": 1, "x": Evil(d / "pwned")}, d / "evil.pt")
    torch.save({**payload, "n_items": n_items + 5}, d / "more_items.pt")
    small_split().save(d / "other_split.npz")   # another dataset's processed split: 200 items
    torch.save({**payload, "extra": {**payload["extra"], "split_path": str(d / "other_split.npz")}}, d / "other_split.pt")
    nan_model = {k: v.clone() for k, v in payload["model"].items()}
    nan_model["enc_w.0"][0, 0] = float("nan")
    torch.save({**payload, "model": nan_model}, d / "nan_weights.pt")
    split_npz = Path(payload["extra"]["split_path"])
    for name, damage in (("damaged_split", "index"), ("truncated_split", "truncate")):
        shutil.copy(split_npz.with_suffix(".json"), d / f"{name}.json")
        if damage == "truncate":
            (d / f"{name}.npz").write_bytes(split_npz.read_bytes()[: split_npz.stat().st_size // 2])
        else:   # a well-formed .npz whose first training row now points at another item
            with np.load(split_npz) as z:
                arrays = dict(z)
            arrays["train__indices"][0] = (arrays["train__indices"][0] + 1) % int(arrays["train__shape"][1])
            np.savez(d / f"{name}.npz", **arrays)
        torch.save({**payload, "extra": {**payload["extra"], "split_path": str(d / f"{name}.npz")}}, d / f"{name}.pt")
    make_experiments(d / "exps")
    return SimpleNamespace(dup=dup, ckpt=ckpt, n_items=n_items)


def make_experiments(root: Path) -> None:
    """Experiments of tuning.run damaged in one place each (what --resume and the report must refuse)."""
    def experiment_dir(name: str, meta: str, state: str = '{"trial_data": [], "runner_data": {}}') -> Path:
        exp = root / name
        exp.mkdir(parents=True)
        (exp / "tuner.pkl").write_bytes(b"")
        (exp / "tuning_run.json").write_text(meta)
        (exp / "search_space.yaml").write_text(SMOKE.read_text())
        (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(state)
        return exp

    from tuning.experiment import versions

    good_meta = json.dumps({"space": "smoke", "overrides": {}, **versions()})   # what this version writes
    experiment_dir("meta_bad", '{"space": "smoke", "overrides"')
    experiment_dir("meta_list", "[1, 2]")
    experiment_dir("state_bad", good_meta, '{"trial_data": [{"trial_id": ')
    trial = experiment_dir("binary_results", good_meta) / "trial_0001_0badbeef"
    trial.mkdir()
    (trial / "params.json").write_text(json.dumps({"lr": 0.01}))
    (trial / "result.json").write_bytes(bytes(range(256)) * 8)   # not text at all


def fill(template: str, d: Path, t: Path) -> str:
    return template.replace("{d}", str(d)).replace("{t}", str(t))


@pytest.fixture(scope="session")
def outcomes(request, tmp_path_factory):
    """Run every selected case once (PARALLEL at a time); case id -> what happened."""
    wanted = {item.callspec.params["case"].id for item in request.session.items
              if item.module.__name__ == __name__ and hasattr(item, "callspec") and "case" in item.callspec.params}
    d = tmp_path_factory.mktemp("bad_input")
    inputs = make_inputs(d)
    before = snapshot(d, skip=(d / "cache",))

    def one(case: Case) -> SimpleNamespace:
        t = tmp_path_factory.mktemp(case.id)
        (t / "keep.txt").write_text("a file the command must leave alone\n")
        t_before = snapshot(t)
        proc = run_module(case.module, [fill(a, d, t) for a in case.argv], {k: fill(v, d, t) for k, v in case.env})
        return SimpleNamespace(proc=proc, t_before=t_before, t_after=snapshot(t, skip=(t / "cache",)),
                               leftovers=[fill(o, d, t) for o in case.outputs if Path(fill(o, d, t)).exists()], d=d, t=t)

    results = {}
    todo = [c for c in CASES if c.id in wanted and not c.in_process]
    if inputs.dup.returncode == 0:
        with ThreadPoolExecutor(PARALLEL) as pool:
            results = dict(zip([c.id for c in todo], pool.map(one, todo)))
    return SimpleNamespace(inputs=inputs, cases=results, d=d, before=before, after=snapshot(d, skip=(d / "cache",)))


def run_in_process(case: Case, d: Path, t: Path, capsys) -> SimpleNamespace:
    from multivae import recommend, train
    from multivae.errors import run_cli
    from tuning import report, run

    main, prog = {"multivae.train": (train.main, "multivae.train"), "multivae.recommend": (recommend.main, "multivae.recommend"),
                  "tuning.run": (run.main, "python -m tuning.run"), "tuning.report": (report.main, "python -m tuning.report")}[case.module]
    (t / "keep.txt").write_text("a file the command must leave alone\n")
    t_before = snapshot(t)
    capsys.readouterr()
    rc = run_cli(main, [fill(a, d, t) for a in case.argv], prog=prog)
    out = capsys.readouterr()
    return SimpleNamespace(proc=subprocess.CompletedProcess(case.module, rc, out.out, out.err), t_before=t_before,
                           t_after=snapshot(t, skip=(t / "cache",)),
                           leftovers=[fill(o, d, t) for o in case.outputs if Path(fill(o, d, t)).exists()])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(outcomes, case, tmp_path, capsys, monkeypatch):
    assert outcomes.inputs.dup.returncode == 0, outcomes.inputs.dup.stderr
    if case.without_cuda:
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    if case.in_process:
        monkeypatch.chdir(REPO)
        for name in [k for k in os.environ if k.startswith("MULTIVAE_")]:
            monkeypatch.delenv(name)
        for name, value in case.env:
            monkeypatch.setenv(name, fill(value, outcomes.d, tmp_path))
        got = run_in_process(case, outcomes.d, tmp_path, capsys)
    else:
        got = outcomes.cases[case.id]
    proc = got.proc
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1 and lines[0].strip(), proc.stderr
    assert "Traceback" not in proc.stderr and "error: " in lines[0]
    assert len(lines[0]) <= 1000, len(lines[0])   # a value is quoted short (errors.short_repr), whatever its size
    for needle in case.needles:
        assert needle in lines[0], (needle, lines[0])
    assert proc.stdout == "", proc.stdout
    assert got.leftovers == []                       # no output folder created
    assert got.t_after == got.t_before               # nothing in the case's folder written or changed
    assert not (outcomes.d / "pwned").exists()       # the untrusted pickle never ran


def test_inputs_were_left_alone(outcomes):
    assert outcomes.after == outcomes.before


def test_duplicated_rows_are_dropped_with_a_warning(outcomes):
    """Not an error: the first of each duplicated (user, item) row is kept, the user is told, the run succeeds."""
    dup = outcomes.inputs.dup
    assert dup.returncode == 0, dup.stderr
    assert "Traceback" not in dup.stderr
    warnings = [line for line in dup.stderr.splitlines() if "duplicated" in line]
    assert warnings == ["warning: file: 7 duplicated (user, item) rows were dropped (the first of each kept)"]
    metrics = json.loads((outcomes.d / "run" / "metrics.json").read_text())
    assert metrics["split"]["interactions"] == 80 * 10   # 807 rows, each (user, item) once
    assert outcomes.inputs.ckpt.exists()


def test_multivae_clis_never_import_ray_or_optuna():
    """The core CLIs start fast and alone: neither Ray nor Optuna is imported (nor TensorBoard)."""
    code = ("import sys, multivae.train, multivae.training, multivae.recommend, multivae.data; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'optuna', 'tensorboard')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
