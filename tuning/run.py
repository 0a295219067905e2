"""`python -m tuning.run`: search Mult-VAE's hyperparameters with Ray Tune (Optuna's TPE proposes, ASHA stops
the weak early), then test the best trial once.

    python -m tuning.run --space smoke --storage /tmp/ray_results            # the offline smoke search
    python -m tuning.run --space default --name ml1m-a --max-failures 2      # ML-1M, the full search
    python -m tuning.run --name ml1m-a --resume [--retry-errored]            # continue an interrupted run

The steps, each in its module: the space and the flags (`tuning.space`); the experiment's lock, so one run
at a time writes it (`tuning.experiment`); on --resume, the experiment's format version and the signatures of
the Tune state it would unpickle (`tuning.signing`, docs/security.md); the dataset, loaded once here in the
driver; Ray and the Tuner (`tuning.tuner`), the trials (`tuning.trainable`); the best trial tested once and
the results written (`tuning.finalize`). `python -m tuning.report` and `tensorboard --logdir <storage>/<name>` show the trials.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
import unicodedata
from pathlib import Path
from typing import Any, Sequence

from multivae.config import to_dict
from multivae.errors import ArgParser, UserError, run_cli, short_repr
from tuning import experiment
from tuning.experiment import RUN_META, SPACE_COPY
from tuning.resources import count_problem

# Nothing here imports Ray at module level: Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is imported,
# and a local Ray must read 0 there to keep every connection on 127.0.0.1 (RAY_NOTES.md).
RAY_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
EXIT_INTERRUPTED = 130       # Ctrl-C, or trials left unfinished: `--resume` continues
EXIT_TERMINATED = 143        # SIGTERM (128 + 15), handled like Ctrl-C: the experiment is saved, `--resume` continues
MAX_NAME_BYTES = 200         # a file name holds 255 bytes; the lock beside the experiment adds ".<name>.lock.json"
CONNECT_TIMEOUT_S = 10.0     # an --address where nothing answers fails within this, not after Ray's minutes of retries
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
    o.add_argument("--trust-storage", action="store_true", help="with --resume: load Tune's pickled state without checking its "
                   "signatures (a colleague's search you reviewed, see docs/security.md), and sign it with your key")
    o.add_argument("--overwrite", action="store_true", help="delete an existing experiment of that name first")
    o.add_argument("--quiet", action="store_true", help="no progress lines, no trial logs, no INFO or WARNING lines of Ray")
    return p


def _check_args(args) -> None:
    for flag, low in (("num_samples", 1), ("max_concurrent", 1), ("max_failures", 0), ("num_cpus", 1)):
        v = getattr(args, flag)
        if v is not None and (problem := count_problem(v, low)) is not None:
            raise UserError(f"--{flag.replace('_', '-')} {problem}")
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
    if args.trust_storage and not args.resume:
        raise UserError("--trust-storage only applies with --resume")
    if args.resume:
        if not args.name:
            raise UserError("--resume needs --name (the experiment to continue)")
        defaults = vars(_parser().parse_args([]))
        changed = [f"--{k.replace('_', '-')}" for k in SEARCH_FLAGS if getattr(args, k) != defaults[k]]
        if changed:
            raise UserError(f"{', '.join(changed)} cannot change on --resume: the search goes on with the settings it "
                            f"started with (see {RUN_META} in the experiment directory)")
    if args.name is not None and (not args.name or "/" in args.name or args.name.startswith(".")
                                  or any(unicodedata.category(c) == "Cc" for c in args.name)):   # NUL, newline, ESC...
        raise UserError(f"--name must be a plain directory name, got {short_repr(args.name)}")
    if args.name is not None and len(args.name.encode()) > MAX_NAME_BYTES:
        raise UserError(f"--name is {len(args.name.encode())} bytes long; at most {MAX_NAME_BYTES} fit a file name "
                        f"(with the lock file beside it), got {short_repr(args.name)}")
    if args.address is not None:
        check_reachable(args.address)


def _overrides(args) -> dict[str, Any]:
    names = ("dataset", "data_dir", "num_samples", "max_concurrent", "cpus_per_trial", "gpus_per_trial", "seed")
    return {k: getattr(args, k) for k in names if getattr(args, k) is not None}


def check_reachable(address: str) -> None:
    """Refuse, within CONNECT_TIMEOUT_S, an `--address host:port` (or `ray://host:port`) where nothing listens:
    `ray.init` would retry for minutes. `auto` and addresses without a port are left to Ray."""
    import socket
    from urllib.parse import urlsplit

    target = address if "://" in address else f"tcp://{address}"
    try:
        parts = urlsplit(target)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise UserError(f"--address {short_repr(address)}: not an address like host:port or ray://host:port") from None
    if not host or port is None:
        return
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise UserError(f"--address {address}: nothing answers there ({exc.strerror or exc.__class__.__name__}); "
                        f"is the Ray head running (ray start --head) and the port right?") from None


def cluster_address(args) -> str | None:
    """The cluster to join: --address, else RAY_ADDRESS (set for a driver that `ray job submit` started)."""
    return args.address or os.environ.get("RAY_ADDRESS") or None


def check_storage(root: str) -> None:
    """Refuse, before the data is read and before Ray starts, a local --storage that cannot be written
    (read-only, a file in the way, a full disk). A remote URI (s3://, gs://) is not probed: that would need
    the network and credentials here; Ray reports it."""
    from multivae.files import check_writable_dir

    local = experiment.local_path(root)
    if local is not None:
        check_writable_dir(local, "--storage")


def check_replaceable(exp_path: str) -> None:
    """--overwrite deletes only an experiment directory that `tuning.run` made: a real directory (not a link)
    holding RUN_META. Anything else at that path is refused, never deleted."""
    local = experiment.local_path(exp_path)
    if local is not None and local.is_symlink():
        raise UserError(f"{exp_path}: is a symbolic link, not an experiment directory; refusing to delete it with --overwrite")
    if not experiment.is_dir(exp_path):
        raise UserError(f"{exp_path}: exists and is not a directory; refusing to delete it with --overwrite")
    if not experiment.exists(experiment.join(exp_path, RUN_META)):
        raise UserError(f"{exp_path}: not an experiment directory of tuning.run (no {RUN_META}); refusing to delete it "
                        f"with --overwrite: choose another --name or remove it yourself")


@dataclasses.dataclass
class Plan:
    """What a run will do, settled before anything is written or started."""
    space: Any                  # tuning.space.SearchSpace, flags applied
    name: str
    root: str                   # the storage (local folder or URI)
    exp_path: str               # <root>/<name>
    meta: dict                  # RUN_META's content
    lock: experiment.ExperimentLock
    study_storage: Any = None   # an opened Optuna RDB storage (--optuna-storage, new experiments only)
    replace: bool = False       # --overwrite of an existing experiment: deleted once the search really starts

    @property
    def resume_cmd(self) -> str:
        return f"python -m tuning.run --resume --name {self.name} --storage {self.root}"


def plan_run(args) -> Plan:
    """Load the space, apply the flags (or, with --resume, the ones recorded), check the experiment directory.
    Nothing is written yet (`take_lock` comes once the data has loaded too)."""
    from tuning.space import load_space, with_overrides

    root = experiment.storage_root(args.storage)
    check_storage(root)
    if args.resume:   # a live run is still writing the state the checks below read: say that first
        experiment.ExperimentLock(root, args.name).refuse_if_live()
        plan = _plan_resume(args, root, args.name, experiment.join(root, args.name))
    else:
        space = with_overrides(load_space(args.space or "default"), **_overrides(args))
        name = args.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        exp_path = experiment.join(root, name)
        check_local_resources(space, args)
        replace = experiment.exists(exp_path)
        if replace:
            if not args.overwrite:
                raise UserError(f"{exp_path}: an experiment of that name exists; pass --resume to continue it or --overwrite to replace it")
            check_replaceable(exp_path)
        study_storage = None
        if args.optuna_storage and space.scheduler.type not in ("fifo", "asha"):
            raise UserError(f"--optuna-storage {args.optuna_storage}: {space.source} has scheduler.type {space.scheduler.type}, "
                            f"whose searcher is not Optuna (only fifo and asha search with Optuna's TPE)")
        if args.optuna_storage:
            from tuning.tuner import open_optuna_storage

            study_storage = open_optuna_storage(args.optuna_storage, name, overwrite=args.overwrite)
        meta = {"space": space.name, "space_source": str(space.source), "overrides": _overrides(args),
                "optuna_storage": args.optuna_storage, "max_failures": args.max_failures,
                "argv": list(sys.argv[1:] if args.argv is None else args.argv), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                **experiment.versions()}
        plan = Plan(space, name, root, exp_path, meta, experiment.ExperimentLock(root, name), study_storage, replace)
    plan.lock.refuse_if_live()   # a live run: refused before the data is read (`take_lock` takes it for real later)
    return plan


def take_lock(plan: Plan, args) -> None:
    """The experiment's lock, taken once every check (flags, space, experiment folder, data) has passed, so a
    refused run has written nothing at all; `main` releases it whatever happens next."""
    note = plan.lock.acquire()
    if note and not args.quiet:
        print(f"{plan.exp_path}: {note}", file=sys.stderr)
    if not args.resume and not plan.replace and experiment.exists(plan.exp_path):   # made while we checked
        plan.lock.release()
        raise UserError(f"{plan.exp_path}: an experiment of that name was just created by another run; pass --resume to "
                        f"continue it or --overwrite to replace it")


def _plan_resume(args, root: str, name: str, exp_path: str) -> Plan:
    from ray import tune

    from tuning import ray_compat, signing
    from tuning.space import load_space, with_overrides

    if not experiment.exists(experiment.join(exp_path, RUN_META)):
        raise UserError(f"{exp_path}: no experiment to resume there (no {RUN_META})")
    meta = experiment.read_json(experiment.join(exp_path, RUN_META), "the run's metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("overrides"), dict) or not isinstance(meta.get("space"), str):
        raise UserError(f"{experiment.join(exp_path, RUN_META)}: not the run metadata tuning.run writes (keys space, overrides)")
    experiment.check_format(meta, exp_path)   # before anything of Tune's is read
    if not tune.Tuner.can_restore(exp_path):
        raise UserError(f"{exp_path}: the search never started there (no Tune state to resume); start it again with --overwrite")
    if not args.finalize:   # --finalize reads result rows and weights-only checkpoints: no pickle
        ray_compat.check_snapshot(exp_path)
        if not args.trust_storage:
            signing.verify(exp_path)   # nothing of Tune's is unpickled before this
    space_file = experiment.join(exp_path, SPACE_COPY)
    if "://" in space_file:   # load_space reads local files
        local = Path(os.environ.get("TMPDIR", "/tmp")) / f"{name}-{SPACE_COPY}"
        local.write_text(experiment.read_text(space_file))
        space_file = str(local)
    overrides = {**meta["overrides"], **({"data_dir": args.data_dir} if args.data_dir else {})}
    space = dataclasses.replace(with_overrides(load_space(space_file), **overrides), name=meta["space"])
    if not args.finalize:
        ray_compat.check_state_readable(exp_path, searcher_saved=space.scheduler.type != "pbt")
    check_local_resources(space, args)
    return Plan(space, name, root, exp_path, meta, experiment.ExperimentLock(root, name))   # OptunaSearch comes back with its study


def check_local_resources(space, args) -> None:
    """A local Ray (no --address, no RAY_ADDRESS) has this machine's GPUs and --num-cpus (or all) CPUs: a trial
    asking for more could never start, so it is refused here, before the data is read and Ray starts."""
    if cluster_address(args) is not None:
        return   # the cluster's resources are checked once joined
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


def bf16_trial_warning(space) -> str | None:
    """The CLI's one line for trials that may train in bf16 on CPUs without bf16 matmul units."""
    from multivae.precision import bf16_speed_warning

    dist = space.params.get("precision")
    may_bf16 = space.fixed.get("precision") == "bf16" or (dist is not None and "bf16" in getattr(dist, "choices", ()))
    if not may_bf16 or space.resources.gpus_per_trial > 0:
        return None
    import torch

    return bf16_speed_warning(torch.device("cpu"), "bf16")


def run_search(plan: Plan, split, args, callbacks: Sequence[Any], term: "TerminationAsInterrupt | None" = None) -> float:
    """Start or join Ray, record the run, run (or resume) the search; its wall time."""
    import ray

    from tuning import ray_compat, signing, tuner

    space = plan.space
    if args.finalize:   # no more trials: the results are read from the experiment's files, without Ray
        return 0.0
    staging: list[str] = []   # Ray's driver staging folder, once a snapshot was saved

    def sign_saved(folder: str) -> None:
        staging[:] = [folder]
        signing.sign(plan.exp_path, staging=folder)

    started_ray = tuner.start_ray(cluster_address(args), args.num_cpus, args.quiet)
    if term is not None:
        term.install()   # again: ray.init installs a C++ handler of its own that dies on SIGTERM
    try:
        tuner.check_cluster_resources(space)
        if plan.replace:   # --overwrite: the old experiment goes only now that the new one really starts
            experiment.delete_dir(plan.exp_path)
            if experiment.exists(plan.exp_path):
                raise UserError(f"{plan.exp_path}: could not delete the old experiment completely; remove it yourself")
        if plan.study_storage is not None:
            tuner.create_study(plan.study_storage, plan.name, space.search.mode)
        if not args.resume:
            from tuning.space import space_to_yaml

            source = Path(str(space.source))
            experiment.write_text(experiment.join(plan.exp_path, SPACE_COPY), source.read_text() if source.is_file() else space_to_yaml(space))
            experiment.write_json(experiment.join(plan.exp_path, RUN_META), plan.meta)
        if cluster_address(args) is None and (warning := bf16_trial_warning(space)) is not None:   # trials on this CPU
            print(warning, file=sys.stderr, flush=True)
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
        ray_compat.check_ray_version()
        ray_compat.install_driver_fixes()
        if args.resume:
            if args.trust_storage:   # reviewed and readable (`_plan_resume`): from now on, this user's
                signing.sign(plan.exp_path, everything=True)
            t = tuner.restored_tuner(space, split, plan.exp_path, retry_errored=args.retry_errored)
        else:
            t = tuner.new_tuner(space, split, name=plan.name, root=plan.root, max_failures=args.max_failures, quiet=args.quiet,
                                callbacks=callbacks, optuna_storage=plan.study_storage)
            signing.sign(plan.exp_path, trusted=[ray_compat.TUNER_STATE])   # written just now, by this driver
        ray_compat.after_experiment_saves(sign_saved)   # each snapshot Tune saves is signed before it is uploaded
        t0 = time.perf_counter()
        try:
            t.fit()
        finally:
            ray_compat.after_experiment_saves(None)
            signing.sign(plan.exp_path, staging=staging[0] if staging else None)
        return time.perf_counter() - t0
    finally:
        if started_ray:
            ray.shutdown()
            if term is not None:
                term.install()   # ray.shutdown leaves the process's SIGTERM at the default (death), Python's handler unseen


def main(argv: Sequence[str] | None = None, *, callbacks: Sequence[Any] = (), planned: list | None = None) -> int:
    """The CLI. `callbacks`: extra `ray.tune.Callback`s for a new experiment (for embedding and tests); `planned`:
    a list that receives the experiment's path once it is settled (what `tuning.search` returns)."""
    t_start = time.perf_counter()
    args = _parser().parse_args(argv)
    args.argv = None if argv is None else list(argv)
    _check_args(args)
    if cluster_address(args) is None:   # a local Ray: before anything imports Ray (see RAY_LOOPBACK_ENV)
        os.environ.setdefault(RAY_LOOPBACK_ENV, "0")

    from multivae.data import load_dataset
    from tuning.finalize import finalize

    plan = plan_run(args)
    if planned is not None:
        planned.append(plan.exp_path)
    term = TerminationAsInterrupt()
    final_phase, sigint = False, None
    term.install()   # until main returns: a second SIGTERM (`timeout` sends two) must find it still there
    try:
        split = load_dataset(plan.space.dataset, cache_dir=args.cache_dir, verbose=not args.quiet)   # once, here
        take_lock(plan, args)
        fit_wall = run_search(plan, split, args, callbacks, term)
        if term.received:   # Tune saved the experiment and stopped: say how to go on, and finish nothing
            print(f"stopped by SIGTERM; the experiment is saved. Continue it with: {plan.resume_cmd}", file=sys.stderr)
            return EXIT_TERMINATED
        # The final phase stops on SIGTERM and Ctrl-C alike, with the hint: Tune leaves its own SIGINT handler
        # (which only flags a search that has ended) installed after the search.
        sigint = _interrupt_on_sigint()
        final_phase = True
        return finalize(plan.space, split, exp_path=plan.exp_path, resume_cmd=plan.resume_cmd, finalize_now=args.finalize,
                        resumed=bool(args.resume), fit_wall=fit_wall, t_start=t_start, dataset=to_dict(plan.space.dataset),
                        command=plan.meta.get("argv") or (), quiet=args.quiet)
    except KeyboardInterrupt:
        if final_phase:   # nothing of the results is half-written (each file is renamed into place whole)
            print(f"stopped by {'SIGTERM' if term.received else 'Ctrl-C'} while testing the best trial; the search is saved. "
                  f"Finish it with: {plan.resume_cmd}", file=sys.stderr)
            return EXIT_TERMINATED if term.received else EXIT_INTERRUPTED
        if not term.received:
            raise
        print(f"stopped by SIGTERM before the search started. Start it again with: {plan.resume_cmd if args.resume else 'the same command'}",
              file=sys.stderr)
        return EXIT_TERMINATED
    finally:
        if sigint is not None:
            signal.signal(signal.SIGINT, sigint)
        term.restore()
        plan.lock.release()


def _interrupt_on_sigint() -> Any:
    """Python's own Ctrl-C (KeyboardInterrupt) again, in the main thread; the handler it replaces, to put back."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, signal.default_int_handler)


class TerminationAsInterrupt:
    """SIGTERM (what Kubernetes, Slurm and most schedulers send) is handled like Ctrl-C: during the search it
    reaches Tune's SIGINT handler, which stops the trials and saves the experiment for `--resume`; before and
    after (the final phase), it interrupts the driver. Without this, Ray's driver dies on SIGTERM with exit 1
    and no resume hint. Only the first SIGTERM counts: `timeout` sends one to its child and another to the
    process group, and a second one must not cut short the saving that the first began (SIGKILL still ends
    the driver at once)."""

    def __init__(self) -> None:
        self.received = False
        self.previous: Any = None

    def _handle(self, signum, frame) -> None:
        if self.received:
            return
        self.received = True
        signal.raise_signal(signal.SIGINT)   # Tune's handler during the search, else KeyboardInterrupt

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, self._handle)
            if self.previous is None:
                self.previous = previous

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
            self.previous = None


def cli() -> int:
    """The `multivae-tune` console script."""
    return run_cli(main, prog="multivae-tune")


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m tuning.run"))
