"""One trial's TensorBoard run: per-step training curves, per-epoch validation metrics, and its hyperparameters.

Tags (one run per trial, in `<trial dir>/tensorboard/`):
  train/loss, train/recon, train/kl, train/kl_weight   x = global step (every optimizer update)
  val/ndcg@100, val/recall@20, val/recall@50            x = epoch
  epoch/loss, epoch/recon, epoch/kl, epoch/kl_weight   x = epoch (means over the epoch's updates; kl_weight: its last)
  best/ndcg@100, best/epoch, best/beta_at_best          x = epoch (the best-by-validation epoch so far)
  time/epoch_s, time/eval_s                             x = epoch
The HParams plugin's summaries are written into the same run (not into a sub-run as
`SummaryWriter.add_hparams` does), so TensorBoard's HParams tab shows one row per trial whose metric
columns are that trial's own `val/*` and `best/*` scalars.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

SUBDIR = "tensorboard"
STEP_KEYS = ("loss", "recon", "kl", "kl_weight")
EPOCH_KEYS = ("loss", "recon", "kl", "kl_weight")


def hparam_value(value: Any) -> int | float | str | bool:
    """HParams accept numbers, strings and booleans: lists and None become their text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


class TrialWriter:
    """A SummaryWriter for one trial; `flush()` before handing control back to Tune (a trial stopped by
    ASHA never gets another chance to write)."""

    def __init__(self, trial_dir: str | Path, metrics: tuple[str, ...], select_metric: str) -> None:
        self.log_dir = Path(trial_dir) / SUBDIR
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.metrics, self.select_metric = metrics, select_metric

    def hparams(self, params: Mapping[str, Any], fixed: Mapping[str, Any] | None = None) -> None:
        """The HParams tab's row of this trial: the searched parameters as columns (fixed ones would only add
        columns that never vary; they go to the Text tab as `config/fixed`), the validation metrics, the
        best value so far and the KL weight at the best epoch."""
        if fixed:
            lines = "\n".join(f"    {k}: {hparam_value(v)}" for k, v in sorted(fixed.items()))
            self.writer.add_text("config/fixed", lines, 0)
        metric_tags = [f"val/{m}" for m in self.metrics] + [f"best/{self.select_metric}", "best/beta_at_best"]
        values = {k: hparam_value(v) for k, v in sorted(params.items())}
        exp, ssi, _sei = hparams_summaries(values, {t: 0.0 for t in metric_tags})   # metric values unused: only their tags
        self.writer.file_writer.add_summary(exp)
        self.writer.file_writer.add_summary(ssi)

    def step(self, record: Mapping[str, float]) -> None:
        step = int(record["global_step"])
        for key in STEP_KEYS:
            self.writer.add_scalar(f"train/{key}", record[key], step)

    def epoch(self, record: Mapping[str, Any]) -> None:
        epoch = int(record["epoch"])
        for m in self.metrics:
            self.writer.add_scalar(f"val/{m}", record[m], epoch)
        for key in EPOCH_KEYS:
            self.writer.add_scalar(f"epoch/{key}", record[key], epoch)
        for key, value in record.items():
            if key.startswith("best_") and key != "best_epoch":
                self.writer.add_scalar(f"best/{key[len('best_'):]}", value, epoch)
        self.writer.add_scalar("best/epoch", record["best_epoch"], epoch)
        self.writer.add_scalar("best/beta_at_best", record["beta_at_best"], epoch)
        self.writer.add_scalar("time/epoch_s", record["epoch_time_s"], epoch)
        self.writer.add_scalar("time/eval_s", record["eval_time_s"], epoch)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
