"""The training CLI, run as `python -m multivae.train`: train one Mult-VAE / Mult-DAE (or fit EASE, or score popularity) and test the best model.

    python -m multivae.train --dataset ml-1m --data-dir ../shared/datasets --out runs/ml1m-vae
    python -m multivae.train --dataset synthetic --epochs 20 --out runs/synthetic
    python -m multivae.train --data ratings.csv --user-col uid --item-col sid --out runs/mine
    python -m multivae.train --config ray_results/<experiment>/best_config.yaml --dataset ml-1m --out runs/best
    python -m multivae.train --train-file train.txt --test-file test.txt --model ease --out runs/lg-ease   # a fixed split

Writes `<out>/checkpoint.pt` (latest state + best-by-validation weights), `<out>/metrics.json` (the settings
really used, split statistics, validation curve, test metrics of the best model, time per epoch) and
`<out>/model/`, the self-contained model folder `multivae.recommend` reads (`multivae.artifact`). One run
writes a folder at a time (`RunFolder`): a second one is refused; `--overwrite` swaps the new run in whole.

Settings come from, in rising priority: the defaults, `--config FILE.yaml` (sections `model`, `train`,
`dataset`), the flags given on the command line. On `--resume` the checkpoint's settings win: a flag that
contradicts them is an error, except `--epochs` (to train longer) and the run-time knobs `--device`,
`--threads`, `--malloc`.
"""

from __future__ import annotations

import argparse
import math
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from multivae.allocator import MALLOC_MODES
from multivae.artifact import RUN_METRICS
from multivae.beta_star import SWEEP_DIR, beta_star_report, beta_star_retrain, beta_star_sweep, sweep_run
from multivae.blend import blend_ease_weights, trained_scorer
from multivae.checkpoint import CHECKPOINT_NAME, load_checkpoint
from multivae.config import from_dict, to_dict
from multivae.ease import ease_yardstick
from multivae.errors import ArgParser, UserError
from multivae.files import WriterLock, atomic_write_json, check_writable_dir, lock_beside, remove_stale_staging, staging_dir, swap_into_place
from multivae.given_split import RETRAIN_DIR, retrain_on_train_valid, retrains, run_metrics
from multivae.metrics import metric_definitions
from multivae.evaluate import evaluate, evaluate_on_split, paired_difference, popularity_scorer
from multivae.model import ModelConfig
from multivae.precision import bf16_speed_warning
from multivae.training import (ADAM_KERNELS, PRECISIONS, Callback, TrainConfig, TrainState, best_model, fit, init_state, resolve_device, restore_state,
                               save_state)

MODEL_DIR = "model"
METRICS_NAME = RUN_METRICS
# What a run folder holds; --overwrite replaces exactly these, and refuses a folder with anything else in it.
RUN_ENTRIES = (CHECKPOINT_NAME, METRICS_NAME, MODEL_DIR, SWEEP_DIR, RETRAIN_DIR)
# flag dest -> ModelConfig / TrainConfig key (the flags that set a config field)
MODEL_FLAGS = {"model": "model", "likelihood": "likelihood", "hidden_dims": "hidden_dims", "latent_dim": "latent_dim",
               "dropout": "dropout", "no_normalize": "normalize_input"}
TRAIN_FLAGS = {k: k for k in ("epochs", "batch_size", "lr", "weight_decay", "anneal_cap", "anneal_steps", "seed", "device",
                              "threads", "adam", "malloc", "precision", "tf32")}
DATA_FLAGS = ("dataset", "data", "user_col", "item_col", "rating_col", "sep", "data_dir", "heldout_users", "min_rating",
              "train_file", "test_file", "valid_file", "split_format", "valid_fraction", "retrain")
GIVEN_FLAGS = {"train_file": "train", "test_file": "test", "valid_file": "valid", "split_format": "format",
               "valid_fraction": "valid_fraction", "retrain": "retrain"}   # flag dest -> DatasetConfig key (name: given)
# What may change on --resume: training longer, and where/how fast it runs (not what it computes).
RESUME_MAY_CHANGE = ("epochs", "device", "threads", "malloc")
# Keys of a search's best_config.yaml that describe the search, not the model: read past.
CONFIG_FILE_SECTIONS = ("model", "train", "dataset")
CONFIG_FILE_INFO = ("space", "trial_id", "best_epoch", "beta_at_best", "config")


def _parser() -> ArgParser:
    from multivae.data import DATASET_NAMES

    M, T = ModelConfig, TrainConfig
    p = ArgParser(prog="python -m multivae.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", metavar="FILE.yaml", help="settings file with sections model, train, dataset (a search's "
                   "best_config.yaml works); flags given on the command line override it")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="synthetic", help=f"one of {', '.join(n for n in DATASET_NAMES if n != 'file')} (default synthetic)")
    d.add_argument("--data", metavar="PATH", help="a CSV/TSV/Parquet file of user-item interactions instead of --dataset")
    d.add_argument("--user-col", default="user", help="--data: the user id column (default user)")
    d.add_argument("--item-col", default="item", help="--data: the item id column (default item)")
    d.add_argument("--rating-col", help="--data: the rating column (default: rating when the file has one, else every row is "
                   "a positive: implicit data); none: ignore ratings")
    d.add_argument("--sep", help="--data, or a csv --train-file: the field separator (default: from the extension: "
                   ".csv comma, .tsv/.tab/.txt tab)")
    d.add_argument("--data-dir", help="folder with an extracted MovieLens copy (else $MULTIVAE_DATA_DIR, else download)")
    d.add_argument("--cache-dir", help="where downloads and processed splits are cached (default $MULTIVAE_DATA_DIR or ~/.cache/multivae)")
    d.add_argument("--heldout-users", type=float, help="validation (and test) users: a count, or a fraction < 0.5 (default: the dataset's preset)")
    d.add_argument("--min-rating", type=float, help="keep ratings > this (default 3.5, the paper)")
    g = p.add_argument_group("fixed split (weak generalization; multivae.data.given)")
    g.add_argument("--train-file", metavar="PATH", help="training interactions of a fixed split (with --test-file)")
    g.add_argument("--test-file", metavar="PATH", help="test interactions of a fixed split, used once for the chosen model")
    g.add_argument("--valid-file", metavar="PATH", help="default: hold out --valid-fraction of each user's training rows")
    g.add_argument("--split-format", choices=["lightgcn", "csv", "recbole"], help="default: from the train file's name")
    g.add_argument("--valid-fraction", type=float, help="default 0.1")
    g.add_argument("--retrain", choices=["none", "train+valid"], help="refit the chosen model on train + valid before the test (default none)")
    m = p.add_argument_group("model")
    m.add_argument("--model", choices=["vae", "dae", "ease", "popularity"], default=M.model,
                   help="Mult-VAE, Mult-DAE, EASE, or the popularity baseline (default vae)")
    m.add_argument("--ease-lambda", type=float, nargs="+", metavar="L",
                   help="EASE lambda, or several: the grid chosen from on validation (default 50 100 200 500 1000 2000 5000)")
    m.add_argument("--ease-dtype", choices=["float64", "float32"], default="float64", help="EASE Gram matrix and solve (default float64)")
    m.add_argument("--likelihood", choices=["multinomial", "bernoulli", "gaussian"], default=M.likelihood,
                   help="decoder likelihood (default multinomial, the paper's)")
    m.add_argument("--hidden-dims", type=int, nargs="*", help="hidden layer sizes (default: 600 for vae, none for dae)")
    m.add_argument("--latent-dim", type=int, default=M.latent_dim, help=f"latent dimension (default {M.latent_dim})")
    m.add_argument("--dropout", type=float, default=M.dropout, help=f"input dropout probability (default {M.dropout})")
    m.add_argument("--no-normalize", action="store_true", help="skip the L2 normalization of input rows (ablation)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=T.epochs, help=f"epochs to train (default {T.epochs}); with --resume, train up to this many")
    t.add_argument("--batch-size", type=int, default=T.batch_size, help=f"users per update (default {T.batch_size})")
    t.add_argument("--lr", type=float, default=T.lr, help=f"Adam learning rate (default {T.lr})")
    t.add_argument("--weight-decay", type=float, help="lam in lam*sum||W||^2 (default 0 for vae, 0.01/batch_size for dae)")
    t.add_argument("--anneal-cap", type=float, default=T.anneal_cap, help=f"largest KL weight beta (default {T.anneal_cap})")
    t.add_argument("--anneal-steps", type=int, help="updates until beta reaches the cap (default: the reference schedule)")
    t.add_argument("--beta-star", action="store_true", help="the paper's recipe: anneal to 1 with the same slope, take the beta of "
                   "the best validation epoch (beta*), then retrain with that cap")
    t.add_argument("--seed", type=int, default=T.seed, help=f"seed of the initial weights, dropout, sampling and user order (default {T.seed}; "
                   "the split's seed is the protocol's, also 98765)")
    t.add_argument("--device", default=T.device, help="auto, cpu, cuda or cuda:N (default auto)")
    t.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    t.add_argument("--adam", choices=list(ADAM_KERNELS), default=T.adam,
                   help="Adam kernel (one algorithm; fused is fastest, foreach/single_tensor match each other bit for bit)")
    t.add_argument("--malloc", choices=list(MALLOC_MODES), default=T.malloc,
                   help="keep: glibc keeps freed memory for reuse (faster, same numbers); default: leave it alone")
    t.add_argument("--precision", choices=list(PRECISIONS), default=T.precision,
                   help="bf16: training matmuls under bf16 autocast on fp32 weights, losses in fp32; bf16-sim: bf16's rounding "
                        "on fp32 units (default fp32)")
    t.add_argument("--tf32", action="store_true", help="CUDA: TF32 for the fp32 training matmuls")
    t.add_argument("--checkpoint-every", type=int, default=10, help="epochs between checkpoints (always at the end; default 10)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default="runs/train", help="output directory (default runs/train)")
    o.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt with its settings")
    o.add_argument("--overwrite", action="store_true", help="replace an existing run in --out as a whole (written beside it, swapped in at the end)")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def explicit_flags(argv: Sequence[str]) -> set[str]:
    """The dests of the flags actually on the command line: the same parser with every default suppressed."""
    q = _parser()
    for action in q._actions:
        if not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            action.default = argparse.SUPPRESS
    return set(vars(q.parse_args(list(argv))))


def read_config_file(path: str) -> dict[str, dict]:
    """The `model`, `train` and `dataset` sections of a settings file (each may be absent)."""
    from multivae.yamlfile import load_yaml_file

    data = load_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping with sections {', '.join(CONFIG_FILE_SECTIONS)}, got {type(data).__name__}")
    out = {}
    for key, value in data.items():
        if key in CONFIG_FILE_SECTIONS:
            if not isinstance(value, dict):
                raise UserError(f"{path}: {key} must be a mapping, got {value!r}")
            out[key] = dict(value)
        elif key in CONFIG_FILE_INFO or str(key).startswith("best_"):
            continue   # what a search records about its best trial; the sections above are the settings
        else:
            raise UserError(f"{path}: unknown key {key!r} (allowed: {', '.join(CONFIG_FILE_SECTIONS)}; a search's "
                            f"{', '.join(CONFIG_FILE_INFO)}, best_* are read past)")
    if "config" in data and not ({"model", "train"} & set(out)):
        raise UserError(f"{path}: has only the flat trial parameters (config); retraining needs its model and train sections")
    return out


def _flag_value(args: Any, dest: str) -> Any:
    value = getattr(args, dest)
    return (not value) if dest == "no_normalize" else value


def _flag_name(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def given_settings(args: Any, explicit: set[str], file: dict[str, dict], config_path: str | None) -> tuple[dict, dict, dict]:
    """(model, train, origin): the settings the user asked for (file, then flags) and where each came from."""
    model = dict(file.get("model", {}))
    train = dict(file.get("train", {}))
    origin = {f"model.{k}": f"{config_path}: model.{k}" for k in model} | {f"train.{k}": f"{config_path}: train.{k}" for k in train}
    for dest, key in MODEL_FLAGS.items():
        if dest in explicit and not (dest == "model" and args.model not in ("vae", "dae")):
            model[key] = _flag_value(args, dest)
            origin[f"model.{key}"] = _flag_name(dest)
    for dest, key in TRAIN_FLAGS.items():
        if dest in explicit:
            train[key] = _flag_value(args, dest)
            origin[f"train.{key}"] = _flag_name(dest)
    return model, train, origin


def check_resume_settings(ckpt: Path, payload: dict, model: dict, train: dict, origin: dict, beta_star: bool | None) -> tuple[dict, dict]:
    """The settings to resume with: the checkpoint's; anything given that contradicts them is an error."""
    requested = payload.get("extra", {}).get("requested") or {"model": payload["model_config"], "train": payload["train_config"]}
    saved_model = to_dict(from_dict(ModelConfig, requested["model"], where=str(ckpt)))
    saved_train = to_dict(from_dict(TrainConfig, requested["train"], where=str(ckpt)))
    asked_model = to_dict(from_dict(ModelConfig, {**saved_model, **model}, where="command line"))
    asked_train = to_dict(from_dict(TrainConfig, {**saved_train, **train}, where="command line"))
    for section, saved, asked, given in (("model", saved_model, asked_model, model), ("train", saved_train, asked_train, train)):
        for key in given:
            if section == "train" and key in RESUME_MAY_CHANGE:
                continue
            if asked[key] != saved[key]:
                raise UserError(f"{origin[f'{section}.{key}']} {asked[key]!r} contradicts the checkpoint's {key} {saved[key]!r} "
                                f"({ckpt}); --resume keeps the trained settings: drop it, or start a new run with --overwrite")
    saved_beta_star = bool(payload.get("extra", {}).get("beta_star", False))
    if beta_star and not saved_beta_star:
        raise UserError(f"--beta-star contradicts the checkpoint {ckpt}, which was trained without it")
    return saved_model, {**saved_train, **{k: asked_train[k] for k in RESUME_MAY_CHANGE if k in train}}


def dataset_config_from_args(args: Any, explicit: set[str] | None = None, base: dict | None = None):
    """The dataset: `base` (a config file's or the resumed checkpoint's), with the flags given on top."""
    from multivae.data import DatasetConfig

    explicit = set(DATA_FLAGS) & set(vars(args)) if explicit is None else explicit
    fields: dict[str, Any] = dict(base or {})
    if {"train_file", "test_file"} & explicit:
        if "data" in explicit and args.data:
            raise UserError("--data and --train-file/--test-file exclude each other")
        fields = {k: v for k, v in fields.items() if k in ("protocol", "cache")} | {"name": "given"}
        fields |= {key: getattr(args, dest) for dest, key in GIVEN_FLAGS.items() if dest in explicit}
    elif set(GIVEN_FLAGS) & explicit:
        raise UserError("--valid-file, --split-format, --valid-fraction and --retrain need --train-file and --test-file")
    elif "data" in explicit and args.data:
        if fields.get("name") != "file" or fields.get("path") != args.data:
            fields = {k: v for k, v in fields.items() if k in ("protocol", "cache")}
        fields |= {"name": "file", "path": args.data}
    elif "dataset" in explicit:
        if fields.get("name") != args.dataset:
            fields = {k: v for k, v in fields.items() if k in ("protocol", "cache")}
        fields["name"] = args.dataset
    elif not fields:
        fields = {"name": "file", "path": args.data} if args.data else {"name": args.dataset}
    for dest in ("user_col", "item_col", "sep"):
        if dest in explicit:
            fields[dest] = getattr(args, dest)
    if "rating_col" in explicit and args.rating_col is not None:
        fields["rating_col"] = None if args.rating_col.lower() == "none" else args.rating_col
    if "data_dir" in explicit and args.data_dir:
        fields["data_dir"] = args.data_dir
    protocol = dict(fields.get("protocol") or {})
    if "heldout_users" in explicit and args.heldout_users is not None:
        h = args.heldout_users
        protocol["heldout_users"] = int(h) if h >= 1 and float(h).is_integer() else h
    if "min_rating" in explicit and args.min_rating is not None:
        protocol["min_rating"] = args.min_rating
    fields["protocol"] = protocol
    if fields.get("name") == "file" and "rating_col" not in fields:
        fields["rating_col"] = _default_rating_col(fields)
    return from_dict(DatasetConfig, fields, where="command line")


def _default_rating_col(fields: dict) -> str | None:
    """`rating` when the file has that column, else None (implicit data), said once on stderr."""
    path = Path(str(fields["path"])).expanduser()
    columns = _file_columns(path, fields.get("sep"))
    if columns is None or "rating" in columns:
        return "rating"   # unreadable here: the reader gives the precise error
    print(f"{path}: no 'rating' column, so every row is read as a positive (implicit data); "
          "--rating-col NAME names a rating column", file=sys.stderr)
    return None


def _file_columns(path: Path, sep: str | None) -> list[str] | None:
    import pandas as pd

    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz", ".zst", ".zip"):
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    try:
        if sep is None and suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(path).schema_arrow.names)
        sep = sep or {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t"}.get(suffix)
        if sep is None:
            return None
        return [str(c) for c in pd.read_csv(path, sep=sep, nrows=0, engine="c" if len(sep) == 1 else "python").columns]
    except Exception:  # any unreadable file: let the reader report it with its own message
        return None


class ProgressBar(Callback):
    """A tqdm bar on a terminal; where stderr is a file or a pipe (a log), one plain line per finished epoch
    instead, so the log holds no carriage-return frames."""

    def __init__(self, total: int, start: int, quiet: bool) -> None:
        from tqdm import tqdm

        self.total, self.lines = total, not quiet and not sys.stderr.isatty()
        self.bar = None if quiet or self.lines else tqdm(total=total, initial=start, desc="epochs", unit="ep", file=sys.stderr)

    def on_epoch(self, record: dict, state: TrainState) -> None:
        m = state.train_config.select_metric
        if self.lines:
            print(f"epoch {state.epoch}/{self.total}  {m} {record[m]:.4f}  best {record[f'best_{m}']:.4f}  "
                  f"beta {record['kl_weight']:.3f}", file=sys.stderr, flush=True)
        elif self.bar is not None:
            self.bar.set_postfix({m: f"{record[m]:.4f}", "best": f"{record[f'best_{m}']:.4f}", "beta": f"{record['kl_weight']:.3f}"})
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class PeriodicCheckpoint(Callback):
    def __init__(self, path: Path, every: int, item_ids, extra: dict) -> None:
        self.path, self.every, self.item_ids, self.extra = path, every, item_ids, extra

    def on_epoch(self, record: dict, state: TrainState) -> None:
        if state.epoch % self.every == 0:
            save_state(state, self.path, self.item_ids, self.extra)


class Both(Callback):
    def __init__(self, *cbs: Callback) -> None:
        self.cbs = cbs

    def on_step(self, record: dict) -> None:
        for cb in self.cbs:
            cb.on_step(record)

    def on_epoch(self, record: dict, state: TrainState) -> bool:
        return any([bool(cb.on_epoch(record, state)) for cb in self.cbs])


def train_one(split, model_cfg: ModelConfig, cfg: TrainConfig, out: Path, resume: bool, quiet: bool, every: int, extra: dict) -> TrainState:
    ckpt = out / CHECKPOINT_NAME
    if resume:
        state = restore_state(ckpt, n_items=split.n_items, train_config=cfg, item_ids=split.item_ids)
        print(f"resumed from {ckpt} at epoch {state.epoch}, global step {state.global_step}", file=sys.stderr)
    else:
        state = init_state(split.n_items, model_cfg, cfg)
    bar = ProgressBar(cfg.epochs, state.epoch, quiet)
    try:
        fit(split, state=state, callback=Both(bar, PeriodicCheckpoint(ckpt, every, split.item_ids, extra)))
    finally:
        bar.close()
    save_state(state, ckpt, split.item_ids, extra)
    return state


class RunFolder:
    """The `--out` folder of one run, with one writer at a time: a second `multivae.train` into it is refused
    with one line naming the folder and the holder of its `WriterLock` (`.<out>.lock` beside it). With
    `--overwrite`, the new run is written in a sibling folder and swapped in whole once complete (`commit`),
    so the folder always holds exactly one run; a failed or interrupted run leaves the old one as it was."""

    def __init__(self) -> None:
        self.out: Path | None = None
        self.lock: WriterLock | None = None
        self.staging: Path | None = None

    def open(self, out: Path, *, resume: bool, overwrite: bool) -> None:
        """Refuse, writing nothing, when a live writer holds the folder or the run there does not fit the flags."""
        self.out, self.resume, self.overwrite = out, resume, overwrite
        self.lock = WriterLock(lock_beside(out), out, "another multivae.train is writing this run folder",
                               "wait for it to finish, or use another --out")
        self.lock.refuse_if_live()
        self.check()

    def check(self) -> bool:
        """Whether a run is there to replace (--overwrite); refuses a run the flags do not allow for."""
        out = self.out
        assert out is not None
        if (out / CHECKPOINT_NAME).exists() or (out / METRICS_NAME).exists():
            if not (self.resume or self.overwrite):
                raise UserError(f"{out}: a run already exists there; pass --resume to continue it or --overwrite to replace it")
            if self.overwrite:
                others = sorted(p.name for p in out.iterdir() if not _run_entry(p.name))
                if others:
                    raise UserError(f"{out}: holds {', '.join(others[:5])}, which are not part of a run; --overwrite replaces "
                                    "the run folder as a whole: move them away, or use another --out")
                return True
        elif self.resume and not (out / SWEEP_DIR / CHECKPOINT_NAME).exists():
            raise UserError(f"{out / CHECKPOINT_NAME}: checkpoint not found, nothing to resume")
        return False

    def begin(self) -> Path:
        """Take the lock (every input is good by now) and return the folder to write the run in."""
        assert self.out is not None and self.lock is not None
        self.lock.acquire()
        remove_stale_staging(self.out)   # what a killed --overwrite left beside the folder
        if self.check():   # again, under the lock: another run may have finished there meanwhile
            self.staging = staging_dir(self.out)
            return self.staging
        self.out.mkdir(parents=True, exist_ok=True)
        return self.out

    def commit(self) -> None:
        if self.staging is not None:
            swap_into_place(self.staging, self.out)
            self.staging = None

    def close(self) -> None:
        """Whatever happened: a replacement not committed is removed, and the lock released."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        if self.lock is not None:
            self.lock.release()


def _run_entry(name: str) -> bool:
    """Whether a folder entry is part of a run: its files and folders, or their temporary names while written."""
    return name in RUN_ENTRIES or any(name.startswith(f".{e}.") for e in RUN_ENTRIES)


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI: one run into --out, which nobody else writes meanwhile."""
    folder = RunFolder()
    try:
        return _main(argv, folder)
    finally:
        folder.close()


def _main(argv: Sequence[str] | None, folder: RunFolder) -> int:
    from multivae.data import load_dataset

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    explicit = explicit_flags(argv)
    for flag, value, low in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1), ("--checkpoint-every", args.checkpoint_every, 1)):
        if value < low:
            raise UserError(f"{flag} must be >= {low}, got {value}")
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    out = Path(args.out)
    metrics_path = out / METRICS_NAME
    check_writable_dir(out, "--out")
    folder.open(out, resume=args.resume, overwrite=args.overwrite)   # a live writer, a run there: refused now

    # Every setting is checked before the data is read and before --out is created: a bad value writes nothing.
    file = read_config_file(args.config) if args.config else {}
    model_given, train_given, origin = given_settings(args, explicit, file, args.config)
    kind = args.model if "model" in explicit else model_given.get("model", "vae")
    beta_star = args.beta_star
    dataset_base = file.get("dataset")
    if args.ease_lambda is not None and kind != "ease":
        raise UserError(f"--ease-lambda needs --model ease, got --model {kind}")
    for lam in args.ease_lambda or ():
        if not (math.isfinite(lam) and lam > 0):
            raise UserError(f"--ease-lambda needs values > 0 (and finite), got {lam}")
    model_cfg = cfg = None
    if kind not in ("popularity", "ease"):
        if args.resume:
            ckpt = out / CHECKPOINT_NAME if (out / CHECKPOINT_NAME).exists() else out / SWEEP_DIR / CHECKPOINT_NAME
            payload = load_checkpoint(ckpt)
            model_dict, train_dict = check_resume_settings(ckpt, payload, model_given, train_given, origin, args.beta_star)
            beta_star = beta_star or bool(payload.get("extra", {}).get("beta_star", False))
            if not (set(DATA_FLAGS) & explicit) and dataset_base is None:
                dataset_base = payload.get("extra", {}).get("dataset")
        else:
            model_dict, train_dict = model_given, train_given
        model_cfg = from_dict(ModelConfig, model_dict, where=args.config or "command line")
        cfg = from_dict(TrainConfig, train_dict, where=args.config or "command line")
        resolve_device(cfg.device)
        if beta_star:
            beta_star_sweep(cfg)   # refuses a schedule without a slope, before anything is read
    data_cfg = dataset_config_from_args(args, explicit, dataset_base)
    # Unless given, the metrics (and the selecting one) are those of the split's source: the paper's, LightGCN's, RecBole's.
    metrics, select_metric, cfg = run_metrics(data_cfg, cfg, cfg is not None and ("metrics" in train_dict or "select_metric" in train_dict))
    split = load_dataset(data_cfg, cache_dir=args.cache_dir, verbose=True)
    stats = split.stats()
    if stats["val_users_with_target"] == 0:
        p = data_cfg.protocol
        raise UserError(f"{data_cfg.path or data_cfg.name}: none of the {stats['val_users']} validation users has a held-out target "
                        f"(a user needs at least {p.min_items_for_target} items): there is nothing to select the best epoch on; "
                        "use more data or lower --heldout-users")
    if kind == "ease":
        from multivae.ease import check_memory

        check_memory(split.n_items, args.ease_dtype)   # a refusal now, before --out exists, not after it is made
    work = folder.begin()   # the lock; with --overwrite, the sibling folder the new run is written in
    command = "python -m multivae.train " + shlex.join(argv)
    report: dict[str, Any] = {"dataset": to_dict(data_cfg), "split": stats, "command": command, "resumed": bool(args.resume)}
    extra = {"split_path": split.info.get("cache_path"), "dataset": to_dict(data_cfg), "source_path": split.info.get("source_path"),
             "beta_star": bool(beta_star)}

    report["metric_definitions"] = metric_definitions(metrics)
    if kind == "popularity":
        score = popularity_scorer(split.train)
        report |= {"model": "popularity", "val": evaluate(score, split.val_fold_in, split.val_target, metrics),
                   "test": evaluate(score, split.test_fold_in, split.test_target, metrics)}
    elif kind == "ease":
        from multivae.ease import ease_run

        report |= ease_run(split, args.ease_lambda, metrics, select_metric, args.ease_dtype, args.threads)
        print(f"EASE lambda = {report['lambda']:g} (validation {select_metric}: "
              + ", ".join(f"{c['lambda']:g}: {c['val'][select_metric]:.4f}" for c in report["grid"])
              + f"), {report['time_s']:.1f} s", file=sys.stderr)
    else:
        assert model_cfg is not None and cfg is not None
        extra["requested"] = {"model": to_dict(model_cfg), "train": to_dict(cfg)}
        if (warning := bf16_speed_warning(resolve_device(cfg.device), cfg.precision)) is not None:
            print(warning, file=sys.stderr)      # before training: bf16 without bf16 hardware is right but slow
        t0 = time.perf_counter()
        if beta_star:
            sweep, sweep_cfg = sweep_run(split, cfg, out, work, args.resume, lambda c, folder, again: train_one(
                split, model_cfg, c, folder, again, args.quiet, args.checkpoint_every, extra))
            value = float(sweep.best["kl_weight"])
            print(f"beta* = {value:.4f} (best validation epoch {sweep.best['epoch']} of the anneal-to-1 run)", file=sys.stderr)
            report["beta_star"] = beta_star_report(value, sweep, sweep_cfg)
            cfg = beta_star_retrain(cfg, value)
            resume = args.resume and (out / CHECKPOINT_NAME).exists()
        else:
            resume = args.resume
        state = train_one(split, model_cfg, cfg, work, resume, args.quiet, args.checkpoint_every, extra)
        model = best_model(state)
        if retrains(split):
            epochs = int(state.best["epoch"])   # the chosen epochs again on train + valid; the last one is tested
            print(f"retraining on train + valid for {epochs} epochs (the best validation epoch)", file=sys.stderr)
            model, report["retrain"] = retrain_on_train_valid(split, cfg, epochs, work, lambda s, c, folder: train_one(
                s, model_cfg, c, folder, False, args.quiet, args.checkpoint_every, extra))
        wall = time.perf_counter() - t0
        device = next(model.parameters()).device
        epoch_times = [h["epoch_time_s"] for h in state.history]
        report |= {
            "model": model_cfg.model, "model_config": to_dict(model_cfg), "train_config": to_dict(cfg),
            "best": state.best, "epochs": state.epoch, "global_step": state.global_step,
            "anneal_steps": state.history[-1]["anneal_steps"] if state.history else None,
            "time_per_epoch_s": sum(epoch_times) / max(1, len(epoch_times)),
            "eval_time_per_epoch_s": sum(h["eval_time_s"] for h in state.history) / max(1, len(state.history)),
            "wall_s": wall,
            "history": state.history,
        }
        # the protocol's last step, as the search's: the best model on validation and test, popularity and EASE
        # beside it on the same users, with the paired differences (train.ease_blend: the model beside EASE)
        ease_weights = blend_ease_weights(cfg, split.train)
        report |= evaluate_on_split(trained_scorer(model, cfg, ease_weights=ease_weights), split, cfg.metrics, cfg.eval_batch_size, device,
                                    per_user=True)
        per_user = report.pop("per_user")
        report["ease"] = ease_yardstick(split, cfg.metrics, cfg.select_metric)
        ease_per_user = report["ease"].pop("per_user", {})
        report["vs_ease"] = {k: paired_difference(per_user[k], ease_per_user[k]) for k in per_user if k in ease_per_user}
        from multivae.artifact import known_from_split, save_model_dir

        save_model_dir(work / MODEL_DIR, model, model_cfg, split.item_ids, known_from_split(split),
                       metrics={"val": report["val"], "test": report["test"], "best": state.best, "epochs": state.epoch},
                       command=command, dataset=to_dict(data_cfg), source_path=split.info.get("source_path"),
                       train_config=to_dict(cfg), ease_weights=ease_weights)
        report["model_dir"] = str(out / MODEL_DIR)
    try:
        atomic_write_json(work / METRICS_NAME, report)
    except OSError as exc:
        raise UserError(f"{metrics_path}: cannot write ({exc.strerror or exc})") from None
    folder.commit()   # --overwrite: the new run takes the old one's place, whole
    val, test = report["val"], report["test"]
    print(f"{'':>8} " + " ".join(f"{m:>12}" for m in metrics))
    shown = [("val", val), ("test", test)] + ([("pop test", report["popularity"]["test"])] if "popularity" in report else [])
    for name, r in shown:
        print(f"{name:>8} " + " ".join(f"{r.get(m, float('nan')):12.4f}" for m in metrics))
    if "test" in report.get("ease", {}):
        print(f"{'EASE':>8} " + " ".join(f"{report['ease']['test'].get(m, float('nan')):12.4f}" for m in metrics)
              + f"   (test, λ={report['ease']['lambda']:g} chosen on validation)")
    for name in ("popularity", "EASE"):
        diff = report.get(f"vs_{name.lower()}", {}).get("test")
        if diff:
            print(f"- {name:<10} " + " ".join(f"{diff[m]:+.4f}±{diff[m + '_se']:.4f}" for m in metrics)
                  + "   (test, this model minus it on the same users, paired SE)")
    if "skipped" in report.get("ease", {}):
        print(f"EASE not computed: {report['ease']['skipped']}")
    if kind not in ("popularity", "ease"):
        print(f"best epoch {report['best']['epoch']} (beta {report['best']['kl_weight']:.4f}), "
              f"{report['time_per_epoch_s']:.3f} s/epoch train, {report['eval_time_per_epoch_s']:.3f} s/epoch validation")
        print(f"wrote {metrics_path} and the model folder {out / MODEL_DIR} (python -m multivae.recommend --checkpoint {out} --user ...)")
    else:
        print(f"wrote {metrics_path}")
    return 0


def cli() -> int:
    """Console-script entry point (`multivae-train`)."""
    from multivae.errors import run_cli

    return run_cli(main, prog="multivae.train")


if __name__ == "__main__":
    from multivae.errors import run_cli

    sys.exit(run_cli(main, prog="multivae.train"))
