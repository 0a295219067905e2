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

import time

from ray import tune
from ray.tune.logger import TBXLoggerCallback


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
    metric, the trial's best, the KL weight, the search's elapsed time and an ETA (the mean time per ended trial
    so far, times the trials still to end)."""

    def __init__(self, metric: str, max_t: int | None, num_samples: int | None = None) -> None:
        self.metric, self.max_t, self.num_samples = metric, max_t, num_samples
        self.start: float | None = None
        self.numbers: dict[str, int] = {}
        self.ended: set[str] = set()

    def __reduce__(self):   # Tune pickles it before the search starts: the settings are all there is
        return rebuild, ("progress_line", {"metric": self.metric, "max_t": self.max_t, "num_samples": self.num_samples})

    def _eta(self) -> str:
        if self.start is None:
            return ""
        elapsed = time.monotonic() - self.start
        text = f"  {_clock(elapsed)} elapsed"
        if self.num_samples and self.ended:
            left = max(0, self.num_samples - len(self.ended))
            text += f", ETA {_clock(elapsed / len(self.ended) * left)}" if left else ""
        return text

    def _number(self, trial) -> int:
        """The number of the trial's folder (`trial_0003_...`: the order Tune created it in); a trial without one
        (a tag Tune did not number) gets the next number after the largest seen."""
        number = trial_number(trial)
        if number is None:
            number = self.numbers.get(trial.trial_id) or max(self.numbers.values(), default=0) + 1
        self.numbers[trial.trial_id] = number
        return number

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if self.start is None:
            self.start = time.monotonic()
        self._number(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        epoch = result.get("epoch")
        if epoch is None or self.metric not in result:
            return
        if self.start is None:
            self.start = time.monotonic()
        end = ""
        if result.get("done"):
            self.ended.add(trial.trial_id)
            end = "  done" if self.max_t is None or epoch >= self.max_t else "  stopped early"
        k = self._number(trial)
        of = f"/{self.max_t}" if self.max_t else ""
        n = f"{k}/{self.num_samples}" if self.num_samples else str(k)
        print(f"trial {n} {trial.trial_id}  epoch {epoch:>3}{of}  {self.metric} {result[self.metric]:.4f}  "
              f"best {result.get(f'best_{self.metric}', float('nan')):.4f}  "
              f"beta {result.get('kl_weight', float('nan')):.4f}{end}{self._eta()}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if trial.trial_id in self.ended:
            return   # its last result said so already
        self.ended.add(trial.trial_id)
        k = self._number(trial)
        n = f"{k}/{self.num_samples}" if self.num_samples else str(k)
        epoch = (trial.last_result or {}).get("epoch", "?")
        # a trial HyperBand paused at a rung and then stopped (no `done` result), or one that ended at max_t
        how = "stopped early" if self.max_t and isinstance(epoch, int) and epoch < self.max_t else "done"
        print(f"trial {n} {trial.trial_id}  {how} after epoch {epoch}{self._eta()}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.ended.add(trial.trial_id)
        print(f"{trial.trial_id}  ERROR (details: {trial.path}/error.txt)", flush=True)


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
