"""Driver-side pieces of a Tune run that Tune pickles with the experiment: the progress line, the trial folder
names, and `rebuild`, the name of the project that Tune's saved state refers to (with
`tuning.ray_compat.rebuild_optuna_search` for the searcher, `tuning.tuner.rebuild_search_alg` for its wrappers).

Tune pickles its run config (callbacks), the trial name function and the searcher into `tuner.pkl` when a search
starts, and unpickles them on `--resume`. Pickled by class, a rename in a later version would make every older
experiment unreadable ("Can't get attribute ..."). So each such object pickles as `rebuild(kind, plain values)`:
the classes may change and move freely; `rebuild` and its kinds stay, and a change to them raises
`tuning.experiment.FORMAT_VERSION`.

Importing this module imports Ray: `tuning.run` imports it only after deciding how Ray binds.
"""

from __future__ import annotations

import math
import time

from ray import tune
from ray.tune.logger import TBXLoggerCallback

from tuning.experiment import CPU_COLUMN, cpu_increment


def rebuild(kind: str, values: dict):
    """The object that `kind` and its plain `values` stand for in Tune's pickled state (see the module docstring)."""
    if kind == "progress_line":
        return ProgressLine(**values)
    if kind == "no_tune_tensorboard":
        return NoTuneTensorBoard()
    if kind == "trial_dirname":
        return trial_dirname
    raise ValueError(f"unknown kind {kind!r} in Tune's saved state (written by another version of multivae-tune)")


class NoTuneTensorBoard(TBXLoggerCallback):
    """Stands in for Tune's default TensorBoard logger and writes nothing: each trial writes its own run
    (`tuning.tblog`), and Tune's would be a second run per trial in TensorBoard. Tune adds its default
    loggers (JSON, CSV, TensorBoard) only where none of that kind is given; the JSON and CSV ones stay."""

    def log_trial_start(self, trial) -> None:
        return None

    def log_trial_result(self, iteration, trial, result) -> None:
        return None

    def log_trial_end(self, trial, failed: bool = False) -> None:
        return None

    def __reduce__(self):
        return rebuild, ("no_tune_tensorboard", {})


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


class ProgressLine(tune.Callback):
    """One compact line per trial result: trial k/N (k: the number of its folder, `trial_dirname`), epoch, the
    metric, the trial's best, the KL weight, then the search so far: wall time, the trials' CPU time, trials
    ended per hour and an ETA (`SearchClock`). On --resume it counts from the resumed run's start."""

    def __init__(self, metric: str, max_t: int | None, num_samples: int | None = None) -> None:
        self.metric, self.max_t, self.num_samples = metric, max_t, num_samples
        self.clock = SearchClock(num_samples, max_t)
        self.numbers: dict[str, int] = {}

    def __reduce__(self):   # Tune pickles it before the search starts: the settings are all there is
        return rebuild, ("progress_line", {"metric": self.metric, "max_t": self.max_t, "num_samples": self.num_samples})

    def _eta(self) -> str:
        return self.clock.text(time.monotonic())

    def _number(self, trial) -> int:
        """The number of the trial's folder (`trial_0003_...`: the order Tune created it in); a trial without one
        (a tag Tune did not number) gets the next number after the largest seen."""
        number = trial_number(trial)
        if number is None:
            number = self.numbers.get(trial.trial_id) or max(self.numbers.values(), default=0) + 1
        self.numbers[trial.trial_id] = number
        return number

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.clock.started(trial.trial_id, time.monotonic())
        self._number(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        epoch = result.get("epoch")
        if epoch is None or self.metric not in result:
            return
        self.clock.report(trial.trial_id, result, time.monotonic())
        end = ""
        if result.get("done"):
            self.clock.ended(trial.trial_id, time.monotonic())
            end = "  done" if self.max_t is None or epoch >= self.max_t else "  stopped early"
        k = self._number(trial)
        of = f"/{self.max_t}" if self.max_t else ""
        n = f"{k}/{self.num_samples}" if self.num_samples else str(k)
        print(f"trial {n} {trial.trial_id}  epoch {epoch:>3}{of}  {self.metric} {result[self.metric]:.4f}  "
              f"best {result.get(f'best_{self.metric}', float('nan')):.4f}  "
              f"beta {result.get('kl_weight', float('nan')):.4f}{end}{self._eta()}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if trial.trial_id in self.clock.ended_trials:
            return   # its last result said so already
        self.clock.ended(trial.trial_id, time.monotonic())
        k = self._number(trial)
        n = f"{k}/{self.num_samples}" if self.num_samples else str(k)
        epoch = (trial.last_result or {}).get("epoch", "?")
        # a trial HyperBand paused at a rung and then stopped (no `done` result), or one that ended at max_t
        how = "stopped early" if self.max_t and isinstance(epoch, int) and epoch < self.max_t else "done"
        print(f"trial {n} {trial.trial_id}  {how} after epoch {epoch}{self._eta()}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.clock.ended(trial.trial_id, time.monotonic())
        print(f"{trial.trial_id}  ERROR (details: {trial.path}/error.txt)", flush=True)


class SearchClock:
    """The search's time as the user sees it, fed with the trials' reports as they arrive.

    The ETA is the epochs still to train over the epochs trained per second so far. The epochs still to train:
    for each trial not yet ended, the mean epochs of the ended ones (a scheduler that stops trials early makes
    that mean small) less what it has trained already, at least one. From one update to the next the ETA moves
    by at most a factor of two (a trial that ends far from the mean changes the estimate at once; the clamp
    turns that into a few steps)."""

    def __init__(self, num_samples: int | None, max_t: int | None = None) -> None:
        self.num_samples, self.max_t = num_samples, max_t
        self.start: float | None = None
        self.epochs: dict[str, int] = {}        # each trial's latest epoch
        self.trained = 0                        # epochs reported in this run (also epochs a restored trial redoes)
        self.cpu_s = 0.0
        self.cpu_last: dict[str, float] = {}
        self.ended_trials: dict[str, int] = {}  # trial -> its last epoch
        self.raw_eta: float | None = None
        self.eta: float | None = None           # the last one shown

    def started(self, trial_id: str, now: float) -> None:
        self.start = now if self.start is None else self.start
        self.epochs.setdefault(trial_id, 0)

    def report(self, trial_id: str, result: dict, now: float) -> None:
        self.started(trial_id, now)
        self.epochs[trial_id] = int(result.get("epoch") or 0)
        self.trained += 1
        cpu = result.get(CPU_COLUMN)
        if isinstance(cpu, (int, float)) and not isinstance(cpu, bool) and math.isfinite(cpu):
            self.cpu_s += cpu_increment(self.cpu_last.get(trial_id), float(cpu), result.get("iterations_since_restore") == 1)
            self.cpu_last[trial_id] = float(cpu)
        self._update(now)

    def ended(self, trial_id: str, now: float) -> None:
        self.started(trial_id, now)
        self.ended_trials[trial_id] = self.epochs.get(trial_id, 0)
        self._update(now)

    def remaining_epochs(self) -> float | None:
        """The epochs still to train (see the class docstring); None before any trial ended."""
        if not self.num_samples or not self.ended_trials:
            return None
        mean = sum(self.ended_trials.values()) / len(self.ended_trials)
        running = [e for t, e in self.epochs.items() if t not in self.ended_trials]
        unstarted = max(0, self.num_samples - len(self.ended_trials) - len(running))
        return sum(max(1.0, mean - e) for e in running) + unstarted * max(1.0, mean)

    def _update(self, now: float) -> None:
        """The raw estimate after this report (`eta_now` shows it, within a factor of two of the last shown)."""
        left = self.remaining_epochs()
        elapsed = now - (self.start if self.start is not None else now)
        if left is None or not self.trained or elapsed <= 0:
            return
        self.raw_eta = 0.0 if len(self.ended_trials) >= (self.num_samples or 0) else left / (self.trained / elapsed)

    def eta_now(self) -> float | None:
        """The ETA to show now: the raw estimate, moved at most a factor of two from the one shown before."""
        raw = self.raw_eta
        if raw is None or not raw or not self.eta:
            self.eta = raw
        else:
            self.eta = min(max(raw, self.eta / 2), self.eta * 2)
        return self.eta

    def trials_per_hour(self, now: float) -> float | None:
        elapsed = now - self.start if self.start is not None else 0.0
        return len(self.ended_trials) / elapsed * 3600 if self.ended_trials and elapsed > 0 else None

    def text(self, now: float) -> str:
        if self.start is None:
            return ""
        text = f"  {_clock(now - self.start)} elapsed, CPU {_clock(self.cpu_s)}"
        rate = self.trials_per_hour(now)
        if rate is not None:
            text += f", {per_hour_text(rate)} trials/h"
        eta = self.eta_now()
        if eta:
            text += f", ETA {_clock(eta)}"
        return text


def per_hour_text(rate: float) -> str:
    """0.412, 12.3, 581, 1080: three significant figures, never in exponent form."""
    return f"{rate:.3g}" if rate < 1000 else f"{rate:.0f}"


def trial_number(trial) -> int | None:
    """The trial's number, the order Tune created it in (its experiment tag starts with it); None without one."""
    number = str(trial.experiment_tag).split("_", 1)[0]
    return int(number) if number.isdigit() else None


class TrialDirname:
    """`trial_0003_1a2b3c4d`: the trial's number (`trial_number`) and its id. The progress line shows the same
    number. (An object rather than a function so that it pickles as `rebuild("trial_dirname")`.)"""

    def __call__(self, trial) -> str:
        number = trial_number(trial)
        return f"trial_{number:04d}_{trial.trial_id}" if number is not None else f"trial_{trial.trial_id}"

    def __reduce__(self):
        return rebuild, ("trial_dirname", {})


trial_dirname = TrialDirname()
