"""The honest pick: retrain the search's top k trials with more seeds and choose by the mean validation value.

The best of many trials, each scored once on a few hundred validation users, is inflated by selection (the
winner's curse: about one standard error for the best of 40 on ML-1M's 600 users). So after the search, the
k trials with the best single-run value are each trained again, `seeds` more times with seeds seed+1,
seed+2, ..., for the epochs the trial itself ran (a trial a scheduler stopped is compared at the length it
was judged at), each keeping its best validation epoch as the trial did. The pick is the trial whose values
(its own run and the new ones) have the best mean; the mean ± its standard error across seeds stands next to
the single-run value. The test users are still seen once, by the chosen trial's own checkpoint
(`tuning.finalize`). The retraining runs here, in the driver, one run after another.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import replace
from typing import Any, Sequence

from tuning.experiment import TrialRecord
from tuning.trial_config import split_trial_config


def top_trials(trials: Sequence[TrialRecord], metric: str, mode: str, k: int) -> list[TrialRecord]:
    """The k trials with a checkpoint and the best single-run value of `metric` (first of equals first)."""
    ranked = [t for t in trials if not math.isnan(t.best_value(metric, mode)) and t.checkpoint_epoch is not None]
    sign = -1.0 if mode == "max" else 1.0
    return sorted(ranked, key=lambda t: sign * t.best_value(metric, mode))[:k]


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """The mean and its standard error (sample standard deviation / sqrt(n)); the SE is nan for one value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def retrain_value(trial: TrialRecord, split, seed: int, metric: str) -> tuple[float, int]:
    """(the best validation value of `metric`, its epoch) of the trial's configuration trained afresh with
    `seed` for the epochs the trial ran."""
    import torch

    from multivae.training import fit

    model_cfg, train_cfg = split_trial_config(trial.config, where=f"trial {trial.trial_id}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    train_cfg = replace(train_cfg, seed=seed, epochs=max(1, trial.epochs), device=device, threads=None)
    state = fit(split, model_cfg, train_cfg)
    return state.best_value, int(state.best["epoch"])


def reevaluate(trials: Sequence[TrialRecord], split, *, metric: str, mode: str, top_k: int, seeds: int,
               quiet: bool = False) -> dict[str, Any] | None:
    """Retrain the top `top_k` trials `seeds` more times each; None when turned off (top_k or seeds 0). The
    returned record goes into results.json as `reevaluation`: each candidate's single-run value, the new
    values with their seeds, the mean ± SE, the chosen trial, and the phase's wall and CPU time."""
    if top_k <= 0 or seeds <= 0:
        return None
    candidates = top_trials(trials, metric, mode, top_k)
    if not candidates:
        return None
    t0, c0 = time.perf_counter(), time.process_time()
    total, done, rows = len(candidates) * seeds, 0, []
    for trial in candidates:
        single = trial.best_value(metric, mode)
        base = split_trial_config(trial.config, where=f"trial {trial.trial_id}")[1].seed
        runs = []
        for i in range(1, seeds + 1):
            seed = (base + i) % 2**32
            value, epoch = retrain_value(trial, split, seed, metric)
            done += 1
            runs.append({"seed": seed, metric: value, "best_epoch": epoch})
            if not quiet:
                print(f"re-evaluating the top {len(candidates)}: run {done}/{total}, trial {trial.number} "
                      f"({trial.trial_id}) seed {seed}: validation {metric} {value:.4f} (single run {single:.4f}); "
                      f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        mean, se = mean_and_se([single] + [r[metric] for r in runs])
        rows.append({"trial_id": trial.trial_id, "number": trial.number, "epochs": trial.epochs, "seed": base,
                     "single_run": single, "runs": runs, "mean": mean, "se": se, "n": 1 + len(runs)})
    pick = max if mode == "max" else min
    chosen = pick(rows, key=lambda r: r["mean"])   # first of equals: the better single run
    return {"top_k": top_k, "seeds": seeds, "metric": metric, "candidates": rows, "chosen": chosen["trial_id"],
            "single_run_best": rows[0]["trial_id"], "changed_pick": chosen["trial_id"] != rows[0]["trial_id"],
            "epochs_trained": sum(r["epochs"] * seeds for r in rows),
            "wall_time_s": time.perf_counter() - t0, "cpu_time_s": time.process_time() - c0}


__all__ = ["mean_and_se", "reevaluate", "retrain_value", "top_trials"]
