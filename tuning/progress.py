"""Driver-side pieces of a Tune run that Tune pickles with the experiment (so they live in a module).

Importing this module imports Ray: `tuning.run` imports it only after deciding how Ray binds.
"""

from __future__ import annotations

from ray import tune
from ray.tune.logger import TBXLoggerCallback


class TuneScalars(TBXLoggerCallback):
    """Tune's own TensorBoard logger (a `ray/tune/*` scalar per reported key), minus its end-of-trial
    HParams summary: TensorBoard's HParams tab uses the *first* experiment summary it finds, and the
    trials' own runs (`tuning.tblog`) carry one whose metric tags exist in those runs."""

    def _try_log_hparams(self, trial, result) -> None:
        return None


class ProgressLine(tune.Callback):
    """One compact line per trial result: trial, epoch, the metric, the trial's best, the KL weight."""

    def __init__(self, metric: str, max_t: int | None) -> None:
        self.metric, self.max_t = metric, max_t

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        epoch = result.get("epoch")
        if epoch is None or self.metric not in result:
            return
        end = ""
        if result.get("done"):
            end = "  done" if self.max_t is None or epoch >= self.max_t else "  stopped by ASHA"
        of = f"/{self.max_t}" if self.max_t else ""
        print(f"{trial.trial_id}  epoch {epoch:>3}{of}  {self.metric} {result[self.metric]:.4f}  "
              f"best {result.get(f'best_{self.metric}', float('nan')):.4f}  "
              f"beta {result.get('kl_weight', float('nan')):.4f}{end}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        print(f"{trial.trial_id}  ERROR (details: {trial.path}/error.txt)", flush=True)


def trial_dirname(trial) -> str:
    """`trial_0003_1a2b3c4d`: the trial's number (the order it was created in) and its id."""
    number = str(trial.experiment_tag).split("_", 1)[0]
    return f"trial_{int(number):04d}_{trial.trial_id}" if number.isdigit() else f"trial_{trial.trial_id}"
