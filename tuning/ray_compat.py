"""Every workaround for a Ray Tune behaviour, one function each, in one seam pinned to the Ray versions tested.

Nothing else in the project reaches into Ray's private names. Each function says which behaviour of Ray it
corrects and what happens on a Ray version where the private name has moved (a clear warning, never a
silent change). `TESTED_RAY_VERSIONS` is what `pyproject.toml` pins and what the test suite asserts.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import logging
import math
import sys
import warnings
from pathlib import Path
from typing import Any

TESTED_RAY_VERSIONS = ("2.60.0",)
TUNER_STATE = "tuner.pkl"   # what `Tuner(...)` writes into the experiment folder when it is made (and only then)
log = logging.getLogger(__name__)


def check_ray_version() -> None:
    """Warn once when the installed Ray is not one the workarounds below were written and tested against."""
    import ray

    if ray.__version__ not in TESTED_RAY_VERSIONS:
        warnings.warn(f"multivae-tune was tested with ray {', '.join(TESTED_RAY_VERSIONS)}, found {ray.__version__}: "
                      f"resuming interrupted searches may not behave as documented", RuntimeWarning, stacklevel=2)


def install_driver_fixes() -> None:
    """The driver-side corrections of Tune's controller, installed (once per process) before a search runs."""
    drop_stale_trial_decisions_on_resume()
    record_stops_of_dead_workers()
    call_after_experiment_saves()


_after_save: list[Any] = []   # the function `after_experiment_saves` set, called with Ray's driver staging folder


def after_experiment_saves(fn: Any) -> None:
    """Call `fn(staging_folder)` each time Tune has written a snapshot of the experiment into its driver staging
    folder, before it uploads it to the storage (None: stop)."""
    _after_save[:] = [fn] if fn is not None else []


def call_after_experiment_saves() -> None:
    """Tune writes its state (`experiment_state-*.json`, the searcher's and callbacks' pickles) into the driver's
    staging folder (`TuneController.save_to_dir`) and then uploads that folder to the storage from a thread; no
    public hook runs in between. This calls the function of `after_experiment_saves` there, once the upload of
    the previous snapshot has finished (so the storage holds one snapshot, not a mix): tuning.signing signs the
    new files before they reach the storage."""
    from ray.tune.execution.tune_controller import TuneController

    original = TuneController.save_to_dir
    if getattr(original, "_calls_after_save", False):
        return

    def save_to_dir(self, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        if _after_save:
            try:
                self._storage.syncer.wait()
            except Exception:  # noqa: BLE001 - Ray logs a failed upload itself; the next one retries
                pass
            try:
                _after_save[0](self._storage.experiment_driver_staging_path)
            except Exception as exc:  # noqa: BLE001 - the search goes on; the next snapshot signs again
                log.warning("could not sign the experiment's saved state: %s", exc)
        return out

    save_to_dir._calls_after_save = True
    save_to_dir.__wrapped__ = original
    TuneController.save_to_dir = save_to_dir


def ray_processes_in_their_own_session() -> None:
    """The local Ray this driver starts (GCS, raylet, and through the raylet every worker) runs in a session of
    its own, so a SIGTERM to the driver's process group (what `timeout`, a batch scheduler or a terminal's
    hang-up sends) reaches the driver alone, which stops the search through Tune and saves it. In the group,
    Ray's processes die with the signal and the driver waits a minute for its lost GCS, then exits 1.

    Ray 2.60 does the same on Windows (`services.ConsolePopen` adds CREATE_NEW_PROCESS_GROUP when the kernel
    shares fates); on Linux its processes are still tied to the driver by the kernel (PR_SET_PDEATHSIG: they
    die when it dies, however it dies), so nothing outlives it. Without kernel fate sharing Ray's reaper needs
    them in the group: left as they are. Where the private name has moved: a warning, and Ray as it is."""
    if sys.platform == "win32":
        return
    try:
        from ray._private import services, utils

        popen, shares_fate = services.ConsolePopen, utils.detect_fate_sharing_support
    except (ImportError, AttributeError):
        warnings.warn("this Ray has no ray._private.services.ConsolePopen: a SIGTERM to the driver's process group "
                      "also kills Ray's own processes", RuntimeWarning, stacklevel=2)
        return
    if getattr(popen, "own_session", False) or not shares_fate():
        return

    class OwnSession(popen):   # type: ignore[misc, valid-type]
        own_session = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("start_new_session", True)
            super().__init__(*args, **kwargs)

    services.ConsolePopen = OwnSession


def drop_stale_trial_decisions_on_resume() -> None:
    """No decision taken before a restore may act on a restored trial.

    Ray 2.60's `TuneController` caches a STOP (or PAUSE) for a trial whose checkpoint save is in flight
    (`_cached_trial_decisions`) and queues decisions (`_queued_trial_decisions`); both are written into
    `experiment_state-*.json` and come back with `Tuner.restore`. A retried or resumed trial then restarts
    from its checkpoint, reports one epoch, and that epoch's save pops the stale STOP: the trial ends without
    `done` or error and every later resume does the same. Those decisions belonged to actors of the previous
    driver, which are gone, so they are dropped as soon as the controller's state is restored."""
    from ray.tune.execution.tune_controller import TuneController

    original = TuneController.resume
    if getattr(original, "_drops_stale_decisions", False):
        return

    def resume(self, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        for name in ("_cached_trial_decisions", "_queued_trial_decisions"):
            stale = getattr(self, name, None)
            if isinstance(stale, dict):
                if stale:
                    log.info("dropping %d decision(s) of the interrupted run (%s): %s", len(stale), name, stale)
                stale.clear()
            else:
                warnings.warn(f"this Ray has no TuneController.{name}: a decision of the interrupted run may act on a "
                              f"resumed trial", RuntimeWarning, stacklevel=2)
        return out

    resume._drops_stale_decisions = True
    resume.__wrapped__ = original
    TuneController.resume = resume


def record_stops_of_dead_workers() -> None:
    """Make Tune's experiment snapshot record a trial that failed because its worker process died.

    In Ray 2.60 `TuneController._schedule_trial_stop` marks a stopped trial for the next snapshot only while
    its actor is alive; when the worker died (SIGKILL, OOM, a lost node) and no retry is left, the trial is
    ERROR in memory but stays RUNNING in `experiment_state-*.json`, so `Tuner.restore` would resume it as
    unfinished even without --retry-errored. This marks the trial in every case."""
    from ray.tune.execution.tune_controller import TuneController

    original = getattr(TuneController, "_schedule_trial_stop", None)
    if original is None or not hasattr(TuneController, "_mark_trial_to_checkpoint"):
        warnings.warn("this Ray has no TuneController._schedule_trial_stop: a trial whose worker died may be resumed "
                      "by --resume even without --retry-errored", RuntimeWarning, stacklevel=2)
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


class _TrialRef:
    """What ASHA's bracket reads of a trial: its id."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def refill_asha_rungs(scheduler: Any, rows_by_trial: dict[str, list[dict]], metric: str, mode: str, max_t: int) -> int:
    """Put back into a restored ASHA scheduler the rung values its trials recorded before the interruption.

    Ray pickles the Tuner's scheduler once, before the search starts (`tuner.pkl`), and never saves it again,
    so `Tuner.restore` brings ASHA back with empty rungs (`_brackets[i]._rungs`): a cutoff would then be
    computed from the resumed trials alone, and a trial already judged at a rung would be judged again.
    Replaying every trial's reported epochs (the first report of each) through the bracket, as ASHA saw them
    live, records the same values. Returns the number of values recorded."""
    brackets = getattr(scheduler, "_brackets", None)
    if not brackets or not hasattr(brackets[0], "_rungs"):
        warnings.warn("cannot reach the restored ASHA scheduler's rungs in this Ray: they start empty, so the resumed "
                      "trials are judged among themselves", RuntimeWarning, stacklevel=2)
        return 0
    op = 1.0 if mode == "max" else -1.0
    bracket = brackets[0]   # tuning.tuner makes a single-bracket ASHA
    before = sum(len(recorded) for _, recorded in bracket._rungs)
    for trial_id, rows in rows_by_trial.items():
        ref, seen = _TrialRef(trial_id), set()
        rows = [r for r in rows if isinstance(r.get(metric), (int, float))]
        for row in rows:
            if row["epoch"] in seen:
                continue   # a trial restarted from a checkpoint reports some epochs again: the first one counts
            seen.add(row["epoch"])
            if row["epoch"] < max_t:   # on_trial_result: at max_t ASHA stops the trial without recording it
                bracket.on_result(ref, row["epoch"], op * float(row[metric]))
        if rows and rows[-1].get("done"):   # on_trial_complete: the last result once more
            bracket.on_result(ref, rows[-1]["epoch"], op * float(rows[-1][metric]))
    return sum(len(recorded) for _, recorded in bracket._rungs) - before


def rung_records(scheduler: Any) -> list[tuple[float, dict]]:
    """(milestone, {trial_id: value}) of each rung of a single-bracket ASHA (for tests and diagnostics)."""
    return [(m, dict(recorded)) for m, recorded in scheduler._brackets[0]._rungs]


def restored_scheduler(tuner: Any) -> Any:
    """The scheduler a `Tuner.restore` unpickled (Ray keeps it in `tuner._local_tuner._tune_config`); None
    when this Ray keeps it elsewhere."""
    return getattr(getattr(getattr(tuner, "_local_tuner", None), "_tune_config", None), "scheduler", None)


def trial_working_dir() -> Path:
    """Inside a trial: the folder whose files Tune uploads to the trial's folder in storage from any node.

    `tune.get_context().get_trial_dir()` is the *driver's* staging folder in Ray 2.60, uploaded only when the
    trial runs on the driver's node; the worker's `trial_working_directory` (a DeveloperAPI of the storage
    context) is uploaded from any node with `SyncConfig(sync_artifacts=True)`."""
    from ray import tune

    ctx = tune.get_context()
    try:
        return Path(ctx.get_storage().trial_working_directory)
    except Exception:  # noqa: BLE001 - moved in this Ray: the public trial directory
        return Path(ctx.get_trial_dir())


def _snapshots(folder: Path) -> list[str]:
    """The experiment's `experiment_state-*.json` files, oldest first (Ray names them by time)."""
    return sorted(glob.glob(str(folder / "experiment_state-*.json")))


def check_snapshot(exp_path: str) -> None:
    """Refuse to resume from a damaged experiment snapshot: Ray 2.60 skips an unreadable newest
    `experiment_state-*.json` and starts the search again beside the old trials, mixing two runs' results."""
    from multivae.errors import UserError
    from tuning.experiment import local_path

    local = local_path(exp_path)
    if local is None:
        return   # a remote snapshot is read by Ray itself
    files = _snapshots(local)
    if not files:
        raise UserError(f"{exp_path}: no experiment state (experiment_state-*.json) to resume from")
    try:
        state = json.loads(Path(files[-1]).read_text())
        trials = state["trial_data"]
        if not isinstance(trials, list) or not isinstance(state["runner_data"], dict):
            raise TypeError("unexpected layout")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{files[-1]}: Tune's experiment state is damaged ({exc.__class__.__name__}: {str(exc)[:100]}); "
                        f"resuming would start the search again beside the old trials. `python -m tuning.report "
                        f"{exp_path}` lists the trials; `--resume --finalize` tests the best of them") from None


def _newest(files: list[str], pattern: str) -> str | None:
    found = sorted(f for f in files if "/" not in f and fnmatch.fnmatchcase(f, pattern))
    return found[-1] if found else None   # Ray takes the greatest name too (`_load_newest_checkpoint`)


def check_state_readable(exp_path: str, *, searcher_saved: bool) -> None:
    """Refuse to resume when a state file that `Tuner.restore` reads cannot be read whole: Ray 2.60 logs "Failed to
    restore the run state" and starts the experiment again, and its new trials lack the space's fixed settings
    (the searcher's copy of the param space is in the unreadable file). Each file is loaded here as Ray loads it;
    call this only on files whose signatures `tuning.signing.verify` accepted (or that --trust-storage vouches
    for): loading a pickle runs code. `searcher_saved`: the searcher saves its state (all but PBT's)."""
    import ray.cloudpickle as cloudpickle
    from ray._common.utils import hex_to_binary
    from ray.tune.experiment.trial import Trial
    from ray.tune.utils.serialization import _loads_with_cloudpickle

    from multivae.errors import UserError
    from tuning import experiment

    files = experiment.list_files(exp_path)
    wanted = [(TUNER_STATE, "the Tuner"), ("experiment_state-*.json", "the trials")]
    if searcher_saved:
        wanted += [("search_gen_state-*.json", "the search generator"), ("searcher-state-*.pkl", "the searcher")]
    wanted += [("basic-variant-state-*.json", "the search generator"), ("callback-states-*.pkl", "the callbacks")]
    for pattern, what in wanted:
        name = _newest(files, pattern)
        if name is None:
            if pattern.startswith(("basic-variant", "callback-states")):
                continue   # optional: PBT's generator and the callbacks save only when they have state
            raise UserError(f"{experiment.join(exp_path, pattern)}: no such file, so Tune would resume without the state "
                            f"of {what} (a search half restored); nothing was loaded")
        path = experiment.join(exp_path, name)
        try:
            data = experiment.read_bytes(path)
            if name.startswith("experiment_state-"):
                state = _loads_with_cloudpickle(data)
                for trial_json, _runtime in state["trial_data"]:
                    trial = _loads_with_cloudpickle(trial_json)
                    for key in Trial._nonjson_fields:
                        if key in trial:
                            cloudpickle.loads(hex_to_binary(trial[key]))
            else:
                state = cloudpickle.loads(data)
                if name.startswith("search_gen_state-") and not (isinstance(state, dict) and "experiment" in state):
                    raise TypeError(f"not a search generator's state ({type(state).__name__})")
        except Exception as exc:  # noqa: BLE001 - a truncated pickle, a class that is gone, a damaged layout
            first = (str(exc).splitlines() or [""])[0][:160]
            raise UserError(f"{path}: Tune's saved state of {what} cannot be read ({exc.__class__.__name__}: {first}); "
                            f"resuming would restart the search beside the old trials, so nothing was loaded. `python -m "
                            f"tuning.report {exp_path}` lists the trials; `--resume --finalize` tests the best") from None


def quiet_checkpoint_logs() -> None:
    """Inside a trial: Ray 2.60 logs an INFO line per checkpoint upload from `ray.train._internal.storage`."""
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)


def quiet_worker_exit_on_sigterm() -> None:
    """Inside a trial: a SIGTERM to the worker (Ray's shutdown after Ctrl-C / SIGTERM to the driver) must end it
    without a traceback on the driver's terminal.

    Ray 2.60's worker handles SIGTERM by raising `SystemExit` in its main thread (`Worker.main_loop`'s
    `sigterm_handler`). When the signal lands while that thread runs a weakref callback or a `__del__`, Python
    cannot propagate the exception and prints "Exception ignored in ... Traceback ... SystemExit: 1" through
    `sys.unraisablehook`, which Ray forwards to the driver. This hook drops exactly that case (a `SystemExit`
    that could not be raised) and passes every other unraisable exception to the previous hook. The hook is
    the interpreter's public API; no Ray name is touched, so a Ray version without the behaviour is unaffected.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_multivae_quiet_sigterm", False):
        return

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, SystemExit):
            return
        previous(unraisable)

    hook._multivae_quiet_sigterm = True   # type: ignore[attr-defined]
    sys.unraisablehook = hook


def snapshot_trial_states(exp_path: str) -> dict[str, str] | None:
    """Tune's last recorded status of each trial (`PENDING`, `RUNNING`, `PAUSED`, `TERMINATED`, `ERROR`) by
    trial id, read from the newest `experiment_state-*.json` (Ray's own file format, plain JSON); None when
    the experiment has no readable snapshot (a local folder only)."""
    from tuning.experiment import local_path

    local = local_path(exp_path)
    if local is None:
        return None
    files = _snapshots(local)
    if not files:
        return None
    try:
        state = json.loads(Path(files[-1]).read_text())
        out = {}
        for trial_json, _runtime in state["trial_data"]:
            t = json.loads(trial_json)
            out[str(t["trial_id"])] = str(t["status"])
        return out
    except (OSError, ValueError, KeyError, TypeError):
        return None


def set_stale_decision_in_snapshot(exp_path: Path, trial_id: str, decision: str = "STOP") -> Path:
    """Write a cached decision for `trial_id` into the newest experiment snapshot, as Ray 2.60 does when the
    driver dies while that trial's checkpoint save is in flight (for the test of the fix above)."""
    path = Path(_snapshots(Path(exp_path))[-1])
    state = json.loads(path.read_text())
    state["runner_data"]["_cached_trial_decisions"] = {trial_id: decision}
    path.write_text(json.dumps(state))
    return path


__all__ = [
    "TESTED_RAY_VERSIONS", "TUNER_STATE", "after_experiment_saves", "call_after_experiment_saves", "check_ray_version",
    "check_snapshot", "check_state_readable", "optuna_search_class", "quiet_checkpoint_logs", "drop_stale_trial_decisions_on_resume", "install_driver_fixes",
    "rebuild_optuna_search", "record_stops_of_dead_workers", "refill_asha_rungs", "restored_scheduler", "rung_records",
    "set_stale_decision_in_snapshot", "snapshot_trial_states", "trial_working_dir",
]


def rebuild_optuna_search(state: dict) -> Any:
    """`optuna_search_class()`'s searcher with this saved instance state: what Tune's pickled state refers to
    (a name kept stable, like `tuning.progress.rebuild`; changing it raises `tuning.experiment.FORMAT_VERSION`)."""
    cls = optuna_search_class()
    searcher = cls.__new__(cls)
    searcher.__dict__.update(state)
    return searcher


def optuna_search_class():
    """OptunaSearch told the right thing (built here: it reaches into OptunaSearch's `_ot_trials`, `_ot_study`
    and `_completed_trials`, Ray 2.60's names).

    Ray's OptunaSearch tells the study a trial's *last* reported value, and a trial a scheduler stopped at a
    rung as COMPLETE: TPE then reads a trial stopped at epoch 2 as a finished bad configuration, and a trial
    whose best epoch came before its last is under-rated. This one tells the best value over the trial's epochs
    (`objective="best"`, the model the trial keeps; "last" keeps Ray's behaviour), marks a trial that ended
    before its planned epochs PRUNED (its per-epoch values stay as intermediate values, which TPE ranks pruned
    trials by), and records the Tune trial id on each Optuna trial (`tune_trial_id`)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    class RightSignalOptunaSearch(OptunaSearch):
        def __init__(self, *args: Any, objective: str = "best", planned_epochs: int | None = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._objective, self._planned = objective, planned_epochs
            self._best: dict[str, float] = {}

        def __reduce__(self):
            # pickled (tuner.pkl) as its state, rebuilt on the class this version builds: never by this code
            return rebuild_optuna_search, (self.__dict__.copy(),)

        def suggest(self, trial_id: str):
            config = super().suggest(trial_id)
            if trial_id in self._ot_trials:
                self._ot_trials[trial_id].set_user_attr("tune_trial_id", trial_id)
            return config

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if trial_id in self._completed_trials or self.metric not in result or trial_id not in self._ot_trials:
                return
            value = float(result[self.metric])
            self._ot_trials[trial_id].report(value, int(result.get("epoch", result.get("training_iteration", 0))))
            if math.isfinite(value):
                old = self._best.get(trial_id)
                better = old is None or (value > old if self.mode == "max" else value < old)
                self._best[trial_id] = value if better else old

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            if result and self.metric in result:
                self.on_trial_result(trial_id, result)
            ot_trial = self._ot_trials[trial_id]
            epoch = (result or {}).get("epoch")
            last = (result or {}).get(self.metric)
            value = self._best.get(trial_id) if self._objective == "best" else last
            if error:
                state, value = optuna.trial.TrialState.FAIL, None
            elif value is None or (self._planned is not None and isinstance(epoch, int) and epoch < self._planned):
                state, value = optuna.trial.TrialState.PRUNED, None   # stopped before its planned epochs
            else:
                state = optuna.trial.TrialState.COMPLETE
            try:
                self._ot_study.tell(ot_trial, value, state=state)
            except Exception as exc:  # noqa: BLE001 - as Ray does: e.g. a NaN value
                log.warning("Optuna refused trial %s's result: %s", trial_id, exc)
            self._completed_trials.add(trial_id)

    return RightSignalOptunaSearch
