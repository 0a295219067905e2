"""Driver-side pieces of a Tune run that Tune pickles with the experiment (so they live in a module): the
progress line and the trial folder names.

Importing this module imports Ray: `tuning.run` imports it only after deciding how Ray binds.
"""

from __future__ import annotations

import time

from ray import tune
from ray.tune.logger import TBXLoggerCallback


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


def trial_dirname(trial) -> str:
    """`trial_0003_1a2b3c4d`: the trial's number (`trial_number`) and its id. The progress line shows the same number."""
    number = trial_number(trial)
    return f"trial_{number:04d}_{trial.trial_id}" if number is not None else f"trial_{trial.trial_id}"
