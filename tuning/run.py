"""Tune Mult-VAE with Ray Tune: Optuna's TPE proposes, ASHA stops the weak early, the best is tested once.

    python -m tuning.run --space smoke --storage /tmp/ray_results            # the offline smoke search
    python -m tuning.run --space default --name ml1m-a --max-failures 2      # ML-1M, the full search
    python -m tuning.run --name ml1m-a --resume [--retry-errored]            # continue an interrupted run

Steps: load the search space (`tuning.space`) and apply the flags; load the dataset once, here in the
driver; start a local Ray bound to 127.0.0.1 (or join --address); run the search, the dataset reaching the
trials through the object store; then take the trial with the best validation NDCG@100 (the maximum over
its epochs), restore its best-by-validation weights from its last checkpoint and evaluate them, once, on
the untouched test users, next to the popularity baseline. Writes `best_config.yaml` and `results.json`
into the experiment directory `<storage>/<name>/`, next to Ray's files; `python -m tuning.report` and
`tensorboard --logdir <storage>/<name>` show the trials.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from multivae.errors import ArgParser, UserError, run_cli

# Nothing here imports Ray at module level: Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is
# imported, and a local Ray must read 0 there to keep every connection on 127.0.0.1 (RAY_NOTES.md).
RAY_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

RUN_META = "tuning_run.json"          # how the run was started; --resume reads it back
SPACE_COPY = "search_space.yaml"      # the space file as it was when the run started
RESULTS = "results.json"
BEST_CONFIG = "best_config.yaml"
EXIT_INTERRUPTED = 130
# Flags that shape the search: Tune restores the searcher, scheduler and trials as they were, so on
# --resume these would be silently ignored; they are refused instead.
SEARCH_FLAGS = ("space", "dataset", "num_samples", "max_concurrent", "cpus_per_trial", "gpus_per_trial", "seed",
                "optuna_storage", "max_failures")


def _parser() -> ArgParser:
    p = ArgParser(prog="python -m tuning.run", description=__doc__.split("\n\n")[0])
    s = p.add_argument_group("search")
    s.add_argument("--space", help="a search space name in search_spaces/ or a YAML path (default: default)")
    s.add_argument("--dataset", help="override the space's dataset name (e.g. synthetic, ml-1m)")
    s.add_argument("--data-dir", help="folder with the extracted dataset (else $MULTIVAE_DATA_DIR, else download)")
    s.add_argument("--cache-dir", help="where downloads and processed splits are cached")
    s.add_argument("--num-samples", type=int, help="trials to run (override the space)")
    s.add_argument("--max-concurrent", type=int, help="trials running at once (override the space)")
    s.add_argument("--seed", type=int, help="seed of the TPE sampler (override the space)")
    s.add_argument("--optuna-storage", metavar="URL", help="an Optuna RDB storage (e.g. sqlite:///study.db) that records "
                   "the study while it runs, for optuna-dashboard; the study is named after the experiment")
    r = p.add_argument_group("resources")
    r.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (override the space); also torch's threads")
    r.add_argument("--gpus-per-trial", type=float, help="GPUs per trial, fractions allowed (override the space)")
    r.add_argument("--address", help="join this Ray cluster (e.g. 127.0.0.1:6379, or auto) instead of starting one; "
                   "default: $RAY_ADDRESS when set (a `ray job submit` driver), else a new local Ray on 127.0.0.1")
    r.add_argument("--num-cpus", type=int, help="CPUs of the local Ray started here (default: what Ray detects)")
    r.add_argument("--max-failures", type=int, default=0, help="restarts of a failed trial from its last checkpoint (default 0)")
    o = p.add_argument_group("experiment")
    o.add_argument("--storage", default="ray_results", help="local folder or URI (s3://, gs://) for experiments (default ./ray_results)")
    o.add_argument("--name", help="experiment name (default <space>-<timestamp>); its directory is <storage>/<name>")
    o.add_argument("--resume", action="store_true", help="continue the interrupted experiment <storage>/<name>")
    o.add_argument("--finalize", action="store_true", help="with --resume: run no more trials; test the best trial so "
                   "far on the test users and write results.json (for a search stopped early)")
    o.add_argument("--retry-errored", action="store_true", help="with --resume: also rerun errored trials from their last checkpoint")
    o.add_argument("--overwrite", action="store_true", help="delete an existing experiment of that name first")
    o.add_argument("--quiet", action="store_true", help="no progress lines and no trial logs")
    return p


def _check_args(args) -> None:
    for flag, low in (("num_samples", 1), ("max_concurrent", 1), ("max_failures", 0), ("num_cpus", 1)):
        v = getattr(args, flag)
        if v is not None and v < low:
            raise UserError(f"--{flag.replace('_', '-')} must be >= {low}, got {v}")
    for flag in ("cpus_per_trial", "gpus_per_trial"):
        v = getattr(args, flag)
        if v is not None and (v < 0 or (flag == "cpus_per_trial" and v == 0)):
            raise UserError(f"--{flag.replace('_', '-')} must be {'> 0' if flag == 'cpus_per_trial' else '>= 0'}, got {v}")
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    if args.finalize and not args.resume:
        raise UserError("--finalize only applies with --resume (it tests the best trial of an existing experiment)")
    if args.retry_errored and not args.resume:
        raise UserError("--retry-errored only applies with --resume")
    if args.resume:
        if not args.name:
            raise UserError("--resume needs --name (the experiment to continue)")
        defaults = vars(_parser().parse_args([]))
        changed = [f"--{k.replace('_', '-')}" for k in SEARCH_FLAGS if getattr(args, k) != defaults[k]]
        if changed:
            raise UserError(f"{', '.join(changed)} cannot change on --resume: the search goes on with the settings it "
                            f"started with (see {RUN_META} in the experiment directory)")
    if args.name is not None and (not args.name or "/" in args.name or args.name.startswith(".")):
        raise UserError(f"--name must be a plain directory name, got {args.name!r}")


def _overrides(args) -> dict[str, Any]:
    names = ("dataset", "data_dir", "num_samples", "max_concurrent", "cpus_per_trial", "gpus_per_trial", "seed")
    return {k: getattr(args, k) for k in names if getattr(args, k) is not None}


# --- storage: a local folder or a URI, through pyarrow's filesystems (what Ray itself uses) --------------

def storage_root(storage: str) -> str:
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def _fs(path: str):
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for an unusable URI
        raise UserError(f"{path}: not a usable storage location ({exc})") from None


def _exists(path: str) -> bool:
    import pyarrow.fs

    fs, p = _fs(path)
    return fs.get_file_info(p).type != pyarrow.fs.FileType.NotFound


def _write_text(path: str, text: str) -> None:
    fs, p = _fs(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(text.encode())


def _read_text(path: str) -> str:
    fs, p = _fs(path)
    with fs.open_input_stream(p) as f:
        return f.read().decode()


def _delete_dir(path: str) -> None:
    fs, p = _fs(path)
    fs.delete_dir(p)


def _local_path(root: str) -> Path | None:
    """The local folder of a storage root (a plain path or a file:// URI); None for a remote URI."""
    if "://" not in root:
        return Path(root)
    if root.startswith("file://"):
        return Path(root[len("file://"):])
    return None


def check_storage(root: str) -> None:
    """Refuse, before the data is read and before Ray starts, a local --storage that cannot be written
    (read-only, a file in the way, a full disk): a probe file is created, synced and removed there. A remote
    URI (s3://, gs://) is not probed: that would need the network and credentials here; Ray reports it."""
    from multivae.files import check_writable_dir

    local = _local_path(root)
    if local is not None:
        check_writable_dir(local, "--storage")


def check_replaceable(exp_path: str) -> None:
    """--overwrite deletes only an experiment directory that `tuning.run` made: a real directory (not a link)
    holding RUN_META. Anything else at that path is refused, never deleted."""
    import pyarrow.fs

    local = _local_path(exp_path)
    if local is not None and local.is_symlink():
        raise UserError(f"{exp_path}: is a symbolic link, not an experiment directory; refusing to delete it with --overwrite")
    fs, p = _fs(exp_path)
    if fs.get_file_info(p).type != pyarrow.fs.FileType.Directory:
        raise UserError(f"{exp_path}: exists and is not a directory; refusing to delete it with --overwrite")
    if not _exists(_join(exp_path, RUN_META)):
        raise UserError(f"{exp_path}: not an experiment directory of tuning.run (no {RUN_META}); refusing to delete it "
                        f"with --overwrite: choose another --name or remove it yourself")


# --- Ray, Optuna, the Tuner ----------------------------------------------------------------------------

def cluster_address(args) -> str | None:
    """The cluster to join: --address, else RAY_ADDRESS (set for a driver that `ray job submit` started)."""
    return args.address or os.environ.get("RAY_ADDRESS") or None


def _start_ray(args) -> bool:
    """Start a local Ray on 127.0.0.1, or join the cluster; False when this process already runs Ray."""
    import ray

    if ray.is_initialized():
        return False
    address = cluster_address(args)
    if address:
        try:
            ray.init(address=address, log_to_driver=not args.quiet)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            hint = "" if os.environ.get("RAY_AUTH_MODE") else "; a cluster with token authentication needs RAY_AUTH_MODE=token"
            raise UserError(f"cannot join the Ray cluster at {address} ({str(exc).splitlines()[0]}{hint})") from None
    else:
        # address="local": a new Ray of our own, never one that `ray start` left running on this machine
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=not args.quiet)
    return True


def open_optuna_storage(url: str, study_name: str, *, overwrite: bool):
    """Open the RDB storage and check the study name is free (or may be replaced); `create_study` makes the
    study later, when the search really starts."""
    import optuna

    try:
        storage = optuna.storages.RDBStorage(url)
    except Exception as exc:  # noqa: BLE001 - bad URL, missing driver, unreachable database
        raise UserError(f"--optuna-storage {url}: cannot open it ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
    if study_name in {s.study_name for s in storage.get_all_studies()} and not overwrite:
        raise UserError(f"--optuna-storage {url}: a study named {study_name!r} exists already; pass --overwrite to replace it")
    return storage


def create_study(storage, study_name: str, mode: str) -> None:
    """Create (replacing one of that name) the study that OptunaSearch then loads and fills (trials, per-epoch
    values), so optuna-dashboard can follow the search: `optuna-dashboard sqlite:///study.db`."""
    import optuna

    if study_name in {s.study_name for s in storage.get_all_studies()}:
        optuna.delete_study(study_name=study_name, storage=storage)
    optuna.create_study(storage=storage, study_name=study_name, direction="maximize" if mode == "max" else "minimize")


def build_tuner(space, split, args, name: str, root: str, exp_path: str, callbacks: Sequence[Any] = (),
                optuna_storage: Any = None):
    """The Tuner of a new experiment, or the restored one with --resume."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from tuning.progress import ProgressLine, TuneScalars, trial_dirname
    from tuning.space import to_tune
    from tuning.trainable import asha_rungs, train_multivae

    search, sched = space.search, space.scheduler
    rungs: list[int] = []
    if sched.type == "asha":
        scheduler = ASHAScheduler(time_attr="epoch", metric=search.metric, mode=search.mode, max_t=sched.max_t,
                                  grace_period=sched.grace_period, reduction_factor=sched.reduction_factor)
        rungs = asha_rungs(sched.grace_period, sched.max_t, sched.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    trainable = tune.with_resources(
        tune.with_parameters(train_multivae, split=split, checkpoint_every=space.checkpoint.every, checkpoint_epochs=tuple(rungs)),
        {"cpu": space.resources.cpus_per_trial, "gpu": space.resources.gpus_per_trial})
    if args.resume:
        # The searcher (with its Optuna study), the scheduler, the run config and the trials come back
        # from the experiment directory; only the trainable (and with it the dataset) is given again.
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_errored=args.retry_errored)
        if sched.type == "asha":
            restore_asha_rungs(tuner, exp_path, search.metric, search.mode, sched.max_t)
        return tuner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=search.seed)
    study = {"storage": optuna_storage, "study_name": name} if optuna_storage is not None else {}
    searcher = OptunaSearch(metric=search.metric, mode=search.mode, sampler=sampler,
                            points_to_evaluate=[dict(p) for p in search.points_to_evaluate] or None, **study)
    progress = [] if args.quiet else [ProgressLine(search.metric, sched.max_t if sched.type == "asha" else None)]
    run_config = tune.RunConfig(
        name=name, storage_path=root, verbose=0,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=space.checkpoint.keep),   # the latest ones
        failure_config=tune.FailureConfig(max_failures=args.max_failures),
        sync_config=tune.SyncConfig(sync_artifacts=True),   # uploads the trials' TensorBoard runs (tuning.trainable)
        callbacks=[TuneScalars(), *progress, *callbacks])
    tune_config = tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=search.max_concurrent),
                                  scheduler=scheduler, num_samples=search.num_samples, trial_dirname_creator=trial_dirname)
    return tune.Tuner(trainable, param_space=to_tune(space), tune_config=tune_config, run_config=run_config)


class _TrialRef:
    """What ASHA's bracket reads of a trial: its id."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def _trial_result_rows(exp_path: str) -> dict[str, list[dict]]:
    """Each trial's reported results (result.json, one JSON object per line), by trial id, in the order reported."""
    import pyarrow.fs

    fs, p = _fs(exp_path)
    out: dict[str, list[dict]] = {}
    for info in fs.get_file_info(pyarrow.fs.FileSelector(p)):
        if info.type != pyarrow.fs.FileType.Directory or fs.get_file_info(f"{info.path}/result.json").type == pyarrow.fs.FileType.NotFound:
            continue
        with fs.open_input_stream(f"{info.path}/result.json") as f:
            lines = f.read().decode(errors="replace").splitlines()
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue   # a line cut short by a crash
            if isinstance(row, dict) and row.get("trial_id"):
                out.setdefault(str(row["trial_id"]), []).append(row)
    return out


def refill_asha_rungs(scheduler, rows_by_trial: dict[str, list[dict]], metric: str, mode: str, max_t: int) -> int:
    """Put back into a restored ASHA scheduler the rung values its trials recorded before the interruption.

    Ray pickles the Tuner's scheduler once, before the search starts (`tuner.pkl`), and never saves it again,
    so `Tuner.restore` brings ASHA back with empty rungs: a cutoff would then be computed from the resumed
    trials alone (no cutoff at all for the first trial at each rung), and a resumed trial already judged at a
    rung would be judged again. Replaying every trial's reported epochs through its bracket, as ASHA saw
    them live, records the same values (the stop decisions themselves are already in the trials' states).
    Returns the number of values recorded."""
    op = 1.0 if mode == "max" else -1.0
    bracket = scheduler._brackets[0]   # tuning.run makes a single-bracket ASHA
    before = sum(len(recorded) for _, recorded in bracket._rungs)
    for trial_id, rows in rows_by_trial.items():
        ref, seen = _TrialRef(trial_id), set()
        rows = [r for r in rows if isinstance(r.get("epoch"), (int, float)) and isinstance(r.get(metric), (int, float))]
        for row in rows:
            if row["epoch"] in seen:
                continue   # a trial restarted from a checkpoint reports some epochs again: the first one counts
            seen.add(row["epoch"])
            if row["epoch"] < max_t:   # on_trial_result: at max_t ASHA stops the trial without recording it
                bracket.on_result(ref, row["epoch"], op * float(row[metric]))
        if rows and rows[-1].get("done"):   # on_trial_complete: the last result once more
            bracket.on_result(ref, rows[-1]["epoch"], op * float(rows[-1][metric]))
    return sum(len(recorded) for _, recorded in bracket._rungs) - before


def snapshot_trials_that_lose_their_worker() -> None:
    """Make Tune's experiment snapshot record a trial that failed because its worker process died.

    In Ray 2.60 `TuneController._schedule_trial_stop` marks a stopped trial for the next snapshot only while
    its actor is alive; when the worker died (SIGKILL, OOM, a lost node) and no retry is left, the trial is
    ERROR in memory but stays RUNNING in `experiment_state-*.json`, so `Tuner.restore` would resume it as
    unfinished even without --retry-errored. This wraps the method (in this driver process only) to mark the
    trial in every case, as it already is for any other stop."""
    import logging

    from ray.tune.execution.tune_controller import TuneController

    original = getattr(TuneController, "_schedule_trial_stop", None)
    if original is None or not hasattr(TuneController, "_mark_trial_to_checkpoint"):
        logging.getLogger(__name__).warning("this Ray version has no TuneController._schedule_trial_stop: a trial whose "
                                            "worker died may be resumed by --resume even without --retry-errored")
        return
    if getattr(original, "_marks_every_stop", False):
        return

    def schedule_trial_stop(self, trial, exception=None):
        try:
            return original(self, trial, exception=exception)
        finally:
            self._mark_trial_to_checkpoint(trial)

    schedule_trial_stop._marks_every_stop = True
    TuneController._schedule_trial_stop = schedule_trial_stop


def restore_asha_rungs(tuner, exp_path: str, metric: str, mode: str, max_t: int) -> None:
    """`refill_asha_rungs` on the scheduler of a restored Tuner (reached through Ray's internals: a warning,
    not an error, if a Ray version moves it)."""
    import logging

    scheduler = getattr(getattr(getattr(tuner, "_local_tuner", None), "_tune_config", None), "scheduler", None)
    if not getattr(scheduler, "_brackets", None) or not hasattr(scheduler._brackets[0], "_rungs"):
        logging.getLogger(__name__).warning("cannot reach the restored ASHA scheduler of this Ray version: its rungs "
                                            "start empty, so the resumed trials are judged among themselves")
        return
    refill_asha_rungs(scheduler, _trial_result_rows(exp_path), metric, mode, max_t)


# --- after the search ----------------------------------------------------------------------------------

@dataclasses.dataclass
class TrialSummary:
    trial_id: str
    config: dict
    status: str                 # completed | stopped_by_asha | errored | unfinished
    epochs: int
    best_value: float           # the best of the trial's reported `metric` values
    best_epoch: int | None
    result: Any                 # its ray.tune.Result


def summarize_trials(results, metric: str, mode: str, max_t: int | None) -> list[TrialSummary]:
    from tuning.report import last_row_done, planned_epochs

    out = []
    for r in results:
        df, last = r.metrics_dataframe, r.metrics or {}
        best_value, best_epoch, epochs = math.nan, None, 0
        if df is not None and len(df) and metric in df and df[metric].notna().any():
            values = df[metric].astype(float)
            i = values.idxmax() if mode == "max" else values.idxmin()
            best_value, best_epoch, epochs = float(values[i]), int(df["epoch"][i]), int(df["epoch"].max())
        # A trial that finished before an interruption comes back from --resume without `done` in its last
        # metrics: one that trained all its planned epochs is complete; else the flag in result.json decides.
        planned = max_t or planned_epochs(r.config or {})
        if r.error is not None:
            status = "errored"
        elif planned is not None and epochs >= planned:
            status = "completed"
        elif not (last.get("done") or ("://" not in r.path and last_row_done(Path(r.path) / "result.json"))):
            status = "unfinished"
        elif max_t is not None:
            status = "stopped_by_asha"
        else:
            status = "completed"
        out.append(TrialSummary(last.get("trial_id") or Path(r.path).name, dict(r.config or {}), status, epochs,
                                best_value, best_epoch, r))
    return out


def evaluate_best(best: TrialSummary, split) -> dict[str, Any]:
    """Restore the best trial's last checkpoint, take its best-by-validation weights, test them once."""
    import torch

    from multivae.checkpoint import CHECKPOINT_NAME
    from multivae.evaluate import evaluate, model_scorer, popularity_scorer
    from multivae.training import best_model, restore_state

    ckpt = best.result.checkpoint
    if ckpt is None:
        raise UserError(f"trial {best.trial_id}: no checkpoint was saved, so its weights cannot be tested")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with ckpt.as_directory() as d:
        state = restore_state(Path(d) / CHECKPOINT_NAME, n_items=split.n_items, device=device)
    cfg = state.train_config
    model, pop = best_model(state), popularity_scorer(split.train)

    def ev(score, fold_in, target):
        return evaluate(score, fold_in, target, cfg.metrics, cfg.eval_batch_size, device)

    out = {
        "checkpoint": ckpt.path, "checkpoint_epoch": state.epoch, "best_epoch": state.best.get("epoch"),
        "beta_at_best": state.best.get("kl_weight"), "global_step": state.global_step,
        "anneal_steps": state.history[-1]["anneal_steps"] if state.history else None,
        "model_config": dataclasses.asdict(state.model_config), "train_config": dataclasses.asdict(cfg),
        "val": ev(model_scorer(model), split.val_fold_in, split.val_target),
        "test": ev(model_scorer(model), split.test_fold_in, split.test_target),
        "popularity": {"val": ev(pop, split.val_fold_in, split.val_target), "test": ev(pop, split.test_fold_in, split.test_target)},
    }
    if state.best.get("epoch") != best.best_epoch:
        out["note"] = (f"the trial's best validation epoch was {best.best_epoch} but its last checkpoint (epoch {state.epoch}) "
                       f"holds the best weights up to then, those of epoch {state.best.get('epoch')}; those were tested")
    return out


def _table(rows: list[tuple[str, dict]], metrics: Sequence[str]) -> str:
    lines = [f"{'':<18}" + "".join(f"{m.replace('ndcg', 'NDCG').replace('recall', 'Recall'):>20}" for m in metrics)]
    for label, r in rows:
        lines.append(f"{label:<18}" + "".join(f"{r.get(m, math.nan):>11.4f} ± {r.get(m + '_se', math.nan):.4f}" for m in metrics))
    return "\n".join(lines)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item):   # numpy scalars
        return _jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _yaml(data: Any) -> str:
    import yaml

    return yaml.safe_dump(_jsonable(data), sort_keys=False)


@dataclasses.dataclass
class Plan:
    """What a run will do, settled before anything is written or started."""
    space: Any                  # tuning.space.SearchSpace, flags applied
    name: str
    root: str                   # the storage (local folder or URI)
    exp_path: str               # <root>/<name>
    meta: dict                  # RUN_META's content
    study_storage: Any = None   # an opened Optuna RDB storage (--optuna-storage, new experiments only)
    replace: bool = False       # --overwrite of an existing experiment: deleted once the search really starts


def plan_run(args) -> Plan:
    """Load the space, apply the flags (or, with --resume, the ones recorded), check the experiment directory."""
    from tuning.space import load_space, with_overrides

    root = storage_root(args.storage)
    check_storage(root)
    if args.resume:
        from ray import tune

        exp_path = _join(root, args.name)
        if not _exists(_join(exp_path, RUN_META)):
            raise UserError(f"{exp_path}: no experiment to resume there (no {RUN_META})")
        if not tune.Tuner.can_restore(exp_path):
            raise UserError(f"{exp_path}: the search never started there (no Tune state to resume); start it again with --overwrite")
        meta = json.loads(_read_text(_join(exp_path, RUN_META)))
        space_file = _join(exp_path, SPACE_COPY)
        if "://" in space_file:   # load_space reads local files
            local = Path(os.environ.get("TMPDIR", "/tmp")) / f"{args.name}-{SPACE_COPY}"
            local.write_text(_read_text(space_file))
            space_file = str(local)
        overrides = {**meta["overrides"], **({"data_dir": args.data_dir} if args.data_dir else {})}
        space = dataclasses.replace(with_overrides(load_space(space_file), **overrides), name=meta["space"])
        check_local_resources(space, args)
        return Plan(space, args.name, root, exp_path, meta)   # OptunaSearch comes back with its study

    space = with_overrides(load_space(args.space or "default"), **_overrides(args))
    name = args.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_local_resources(space, args)
    exp_path = _join(root, name)
    replace = _exists(exp_path)
    if replace:
        if not args.overwrite:
            raise UserError(f"{exp_path}: an experiment of that name exists; pass --resume to continue it or --overwrite to replace it")
        check_replaceable(exp_path)
    study_storage = open_optuna_storage(args.optuna_storage, name, overwrite=args.overwrite) if args.optuna_storage else None
    meta = {"space": space.name, "space_source": str(space.source), "overrides": _overrides(args),
            "optuna_storage": args.optuna_storage, "max_failures": args.max_failures,
            "argv": list(sys.argv[1:] if args.argv is None else args.argv), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return Plan(space, name, root, exp_path, meta, study_storage, replace)


def check_local_resources(space, args) -> None:
    """A local Ray (no --address, no RAY_ADDRESS) has this machine's GPUs and --num-cpus (or all) CPUs: a trial
    asking for more could never start, so it is refused here, before the data is read and Ray starts."""
    if cluster_address(args) is not None:
        return   # the cluster's resources are checked once joined (run_search)
    from tuning.space import validate_resources

    gpus = 0
    if space.resources.gpus_per_trial > 0:
        import torch

        gpus = torch.cuda.device_count()
    validate_resources(space, gpus)
    cpus = args.num_cpus or os.cpu_count() or 1
    if space.resources.cpus_per_trial > cpus:
        raise UserError(f"resources.cpus_per_trial is {space.resources.cpus_per_trial:g} but the local Ray will have {cpus} "
                        f"CPUs (pass --cpus-per-trial, or --num-cpus)")


def run_search(plan: Plan, split, args, callbacks: Sequence[Any]):
    """Start or join Ray, record the run, run (or resume) the search; the ResultGrid and its wall time."""
    import ray

    from tuning.space import validate_resources

    space = plan.space
    started_ray = _start_ray(args)
    try:
        resources = ray.cluster_resources()
        validate_resources(space, resources.get("GPU", 0))
        if space.resources.cpus_per_trial > resources.get("CPU", 0):
            raise UserError(f"cpus_per_trial={space.resources.cpus_per_trial:g} but the Ray cluster has {resources.get('CPU', 0):g} CPUs")
        if plan.replace:   # --overwrite: the old experiment goes only now that the new one really starts
            _delete_dir(plan.exp_path)
            if _exists(plan.exp_path):
                raise UserError(f"{plan.exp_path}: could not delete the old experiment completely; remove it yourself")
        if plan.study_storage is not None:
            create_study(plan.study_storage, plan.name, space.search.mode)
        if not args.resume:
            source = Path(str(space.source))
            _write_text(_join(plan.exp_path, SPACE_COPY), source.read_text() if source.is_file() else _yaml(dataclasses.asdict(space)))
            _write_text(_join(plan.exp_path, RUN_META), json.dumps(_jsonable(plan.meta), indent=2))
        if not args.quiet:
            print(f"{'resuming' if args.resume else 'starting'} {plan.exp_path}: {space.search.num_samples} trials of space "
                  f"{space.name!r}, {space.search.max_concurrent} at a time, {space.resources.cpus_per_trial:g} CPU + "
                  f"{space.resources.gpus_per_trial:g} GPU each", flush=True)
        # Tune snapshots the experiment whenever a trial has checkpointed `keep` times and warns when that is
        # often; with a checkpoint every epoch of a small dataset it is, harmlessly.
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        # Ray's own console output prints its header even at verbose=0, with a TensorBoard hint that names the
        # driver's temporary staging folder; ProgressLine prints what matters, and the real path at the end.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        snapshot_trials_that_lose_their_worker()
        tuner = build_tuner(space, split, args, plan.name, plan.root, plan.exp_path, callbacks, plan.study_storage)
        t0 = time.perf_counter()
        results = tuner.get_results() if args.finalize else tuner.fit()
        return results, time.perf_counter() - t0
    finally:
        if started_ray:
            ray.shutdown()


def finish(plan: Plan, split, results, args, fit_wall: float, t_start: float) -> int:
    """Pick the best trial, test its best weights once, write results.json and best_config.yaml, print."""
    from multivae.config import to_dict

    space, exp_path = plan.space, plan.exp_path
    metric, mode = space.search.metric, space.search.mode
    max_t = space.scheduler.max_t if space.scheduler.type == "asha" else None
    trials = summarize_trials(results, metric, mode, max_t)
    counts = {s: sum(t.status == s for t in trials) for s in ("completed", "stopped_by_asha", "errored", "unfinished")}
    counts["total"] = len(trials)
    resume_cmd = f"python -m tuning.run --resume --name {plan.name} --storage {plan.root}"
    finalized_early = counts["unfinished"] > 0 or len(trials) < space.search.num_samples
    if finalized_early and not args.finalize:
        print(f"the search stopped after {len(trials)} of {space.search.num_samples} trials ({counts['unfinished']} "
              f"unfinished); continue it with: {resume_cmd}", file=sys.stderr)
        return EXIT_INTERRUPTED
    ranked = [t for t in trials if not math.isnan(t.best_value) and t.result.checkpoint is not None]
    if not ranked:
        raise UserError(f"{exp_path}: no trial left a checkpointed result ({counts['errored']} errored); "
                        f"see the error.txt files, then {resume_cmd} --retry-errored")
    best = (max if mode == "max" else min)(ranked, key=lambda t: t.best_value)

    final = evaluate_best(best, split)
    summary = {
        "experiment": exp_path, "space": space.name, "dataset": to_dict(space.dataset), "split": split.stats(),
        "best_trial": {"trial_id": best.trial_id, "path": best.result.path, "status": best.status, "config": best.config,
                       f"best_{metric}": best.best_value, "epochs_trained": best.epochs, "best_epoch": final["best_epoch"],
                       "beta_at_best": final["beta_at_best"]},
        "val": final["val"], "test": final["test"], "popularity": final["popularity"],
        "model_config": final["model_config"], "train_config": final["train_config"],
        "checkpoint": final["checkpoint"], "checkpoint_epoch": final["checkpoint_epoch"],
        "anneal_steps": final["anneal_steps"], "trials": counts, "search_metric": metric, "mode": mode,
        "scheduler": dataclasses.asdict(space.scheduler),
        "wall_time_s": {"search": fit_wall, "total": time.perf_counter() - t_start}, "resumed": bool(args.resume),
        "finalized_early": finalized_early and bool(args.finalize),
    } | ({"note": final["note"]} if "note" in final else {})
    _write_text(_join(exp_path, RESULTS), json.dumps(_jsonable(summary), indent=2))
    _write_text(_join(exp_path, BEST_CONFIG), _yaml({
        "space": space.name, "trial_id": best.trial_id, f"best_{metric}": best.best_value, "best_epoch": final["best_epoch"],
        "beta_at_best": final["beta_at_best"], "config": best.config,
        "model": final["model_config"], "train": final["train_config"]}))

    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(best.config.items()))
    print(f"\nbest trial {best.trial_id}: validation {metric} {best.best_value:.4f} at epoch {final['best_epoch']} of "
          f"{best.epochs} (beta* {final['beta_at_best']:.4f}); {params}")
    print(_table([("validation", final["val"]), ("test", final["test"]), ("popularity test", final["popularity"]["test"])],
                 final["train_config"]["metrics"]))
    print(f"trials: {counts['total']} ({counts['completed']} completed, {counts['stopped_by_asha']} stopped by ASHA, "
          f"{counts['errored']} errored); search {fit_wall:.1f} s, total {time.perf_counter() - t_start:.1f} s")
    if "note" in final:
        print(f"note: {final['note']}")
    print(f"wrote {_join(exp_path, RESULTS)} and {_join(exp_path, BEST_CONFIG)}\n"
          f"next: python -m tuning.report {exp_path}   |   tensorboard --logdir {exp_path}")
    return 0


def main(argv: Sequence[str] | None = None, *, callbacks: Sequence[Any] = ()) -> int:
    """The CLI. `callbacks`: extra `ray.tune.Callback`s for a new experiment (for embedding and tests)."""
    t_start = time.perf_counter()
    args = _parser().parse_args(argv)
    args.argv = None if argv is None else list(argv)
    _check_args(args)
    if cluster_address(args) is None:   # a local Ray: before anything imports Ray (see RAY_LOOPBACK_ENV)
        os.environ.setdefault(RAY_LOOPBACK_ENV, "0")

    from multivae.data import load_dataset

    plan = plan_run(args)
    split = load_dataset(plan.space.dataset, cache_dir=args.cache_dir, verbose=not args.quiet)   # once, here
    results, fit_wall = run_search(plan, split, args, callbacks)
    return finish(plan, split, results, args, fit_wall, t_start)


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m tuning.run"))
