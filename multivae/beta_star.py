"""β*, the paper's recipe for the KL weight: anneal to 1 with the same slope, take the β of the best validation epoch, retrain with that cap.

    sweep, sweep_cfg = sweep_run(split, cfg, out, work, resume, train)   # the anneal-to-1 run, in <run>/beta_sweep
    value = float(sweep.best["kl_weight"])                               # beta*
    cfg = beta_star_retrain(cfg, value)                                  # then the run itself, at cap beta*

`train(cfg, folder, resume)` is the caller's: `multivae.train` trains into a folder with its progress bar and
periodic checkpoints.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from multivae.checkpoint import CHECKPOINT_NAME
from multivae.config import to_dict
from multivae.errors import UserError
from multivae.training import TrainConfig, TrainState, restore_state

SWEEP_DIR = "beta_sweep"   # the anneal-to-1 run, inside the run folder


def beta_star_sweep(cfg: TrainConfig) -> TrainConfig:
    """The anneal-to-1 run of the beta* recipe, with the slope of `cfg` (cap / anneal_steps per update)."""
    if cfg.anneal_steps is None:
        return dataclasses.replace(cfg, anneal_cap=1.0)   # the reference slope, whatever the cap
    if cfg.anneal_steps == 0 or cfg.anneal_cap == 0:
        raise UserError(f"--beta-star needs an annealed beta; --anneal-steps {cfg.anneal_steps} with --anneal-cap {cfg.anneal_cap} "
                        "has no slope to sweep with")
    return dataclasses.replace(cfg, anneal_cap=1.0, anneal_steps=round(cfg.anneal_steps / cfg.anneal_cap))


def beta_star_retrain(cfg: TrainConfig, beta_star: float) -> TrainConfig:
    """The retraining at cap beta*, still with the slope of `cfg`."""
    steps = None if cfg.anneal_steps is None else round(cfg.anneal_steps * beta_star / cfg.anneal_cap)
    return dataclasses.replace(cfg, anneal_cap=beta_star, anneal_steps=steps)


def sweep_run(split: Any, cfg: TrainConfig, out: Path, work: Path, resume: bool,
              train: Callable[[TrainConfig, Path, bool], TrainState]) -> tuple[TrainState, TrainConfig]:
    """(sweep, its TrainConfig): the anneal-to-1 run trained into `work`/beta_sweep (resumed from `out`'s when
    `resume` finds it), or, once the retraining in `out` has begun, read back from its checkpoint."""
    sweep_cfg = beta_star_sweep(cfg)
    if resume and (out / CHECKPOINT_NAME).exists():
        # the retraining has begun: beta* is settled, and --epochs extends the retraining, not the sweep
        sweep = restore_state(out / SWEEP_DIR / CHECKPOINT_NAME, n_items=split.n_items, item_ids=split.item_ids)
        sweep_cfg = sweep.train_config
    else:
        sweep = train(sweep_cfg, work / SWEEP_DIR, resume and (out / SWEEP_DIR / CHECKPOINT_NAME).exists())
    return sweep, sweep_cfg


def beta_star_report(value: float, sweep: TrainState, sweep_cfg: TrainConfig) -> dict[str, Any]:
    """The run report's `beta_star` entry."""
    return {"value": value, "sweep_best": sweep.best, "sweep_train_config": to_dict(sweep_cfg)}


__all__ = ["SWEEP_DIR", "beta_star_report", "beta_star_retrain", "beta_star_sweep", "sweep_run"]
