"""A run on a given (fixed) split: the metrics of the split's source unless asked otherwise, and the refit of the chosen epochs on train + valid.

The split itself is read by `multivae.data.given`; `multivae.train` drives a run on it through these two steps.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from multivae.data.given import metric_preset, retrain_split
from multivae.training import TrainConfig, TrainState

RETRAIN_DIR = "retrain"   # the refit on train + valid, inside the run folder


def run_metrics(data_cfg: Any, cfg: TrainConfig | None, asked: bool) -> tuple[tuple[str, ...], str, TrainConfig | None]:
    """(metrics, select_metric, cfg): those of the split's source (the paper's, LightGCN's, RecBole's), unless
    the settings `asked` for theirs (`cfg.metrics` or `cfg.select_metric` given); `cfg` then carries them."""
    metrics, select_metric = metric_preset(data_cfg.name, data_cfg.format, data_cfg.train)
    if cfg is not None:
        if asked:
            metrics, select_metric = cfg.metrics, cfg.select_metric
        else:
            cfg = dataclasses.replace(cfg, metrics=tuple(metrics), select_metric=select_metric)
    return metrics, select_metric, cfg


def retrains(split: Any) -> bool:
    """Whether the split asks for the chosen model to be refitted on train + valid before the test."""
    return split.info.get("retrain") == "train+valid"


def retrain_on_train_valid(split: Any, cfg: TrainConfig, epochs: int, work: Path,
                           train: Callable[[Any, TrainConfig, Path], TrainState]) -> tuple[Any, dict[str, Any]]:
    """(model, report entry): `epochs` epochs again on train + valid, in `work`/retrain. Its validation rows are
    now training data, so the last epoch's model is the one tested, not the best-by-validation one."""
    again = train(retrain_split(split), dataclasses.replace(cfg, epochs=epochs), work / RETRAIN_DIR)
    return again.model.eval(), {"on": "train+valid", "epochs": epochs}


__all__ = ["RETRAIN_DIR", "retrain_on_train_valid", "retrains", "run_metrics"]
