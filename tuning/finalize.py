"""After the search: pick the best trial, test its best weights once on the held-out test users next to
popularity and EASE, and write `results.json`, `best_config.yaml` (and the best model) into the experiment.

The best single run is the trial with the best validation value of the search metric at any of its epochs
(ties: the first trial). Unless `search.reevaluate_top_k` is 0, the top k trials are then retrained with more
seeds and the pick is the best mean (`tuning.reevaluate`). The picked trial's last checkpoint holds its
best-by-validation weights up to that checkpoint; those are the weights tested, once.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from multivae.blend import blend_ease_weights, trained_scorer
from multivae.checkpoint import CHECKPOINT_NAME
from multivae.config import to_dict
from multivae.ease import ease_yardstick
from multivae.errors import UserError
from multivae.evaluate import evaluate_on_split, paired_difference
from multivae.metrics import metric_definitions
from multivae.training import best_model, restore_state
from tuning import experiment, ray_compat
from tuning.experiment import TrialRecord
from tuning.progress import per_hour_text
from tuning.reevaluate import reevaluate
from tuning.space import SearchSpace
from tuning.trial_config import split_trial_config

EXIT_INTERRUPTED = 130


def read_search(exp_path: str, space: SearchSpace) -> list[TrialRecord]:
    """The experiment's trials, classified with Tune's recorded final states."""
    sched = space.scheduler
    max_t = sched.max_t if sched.stops_early else None
    return experiment.read_trials(exp_path, max_t=max_t, final_states=ray_compat.snapshot_trial_states(exp_path),
                                  stop_epochs=sched.decision_epochs(max_t) if max_t else ())


def pick_best(trials: Sequence[TrialRecord], metric: str, mode: str) -> TrialRecord | None:
    """The trial with the best value of `metric` at any epoch among those with a checkpoint (first of equals)."""
    ranked = [t for t in trials if not math.isnan(t.best_value(metric, mode)) and t.checkpoint_epoch is not None]
    if not ranked:
        return None
    pick = max if mode == "max" else min
    return pick(ranked, key=lambda t: t.best_value(metric, mode))


def evaluate_trial(trial: TrialRecord, split) -> tuple[dict[str, Any], Any]:
    """Restore the trial's last checkpoint, take its best-by-validation weights, test them once; the results
    (with the per-user values under "per_user", for the paired differences) and the restored TrainState (its
    best weights become best_model/)."""
    import torch

    epoch, folder = trial.checkpoints()[-1]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    source = experiment.join(folder, CHECKPOINT_NAME)
    local = experiment.local_path(source)
    if local is not None:   # read in place: no copy outside the experiment
        state = restore_state(local, n_items=split.n_items, device=device)
    else:   # a remote storage: a local copy, removed however the phase ends (a signal interrupts it as an exception)
        with tempfile.TemporaryDirectory(prefix="multivae-best-") as tmp:
            copy = Path(tmp) / CHECKPOINT_NAME
            copy.write_bytes(experiment.read_bytes(source))
            state = restore_state(copy, n_items=split.n_items, device=device)
    cfg = state.train_config
    scorer = trained_scorer(best_model(state), cfg, train=split.train)   # with train.ease_blend, beside EASE (multivae.blend)
    scores = evaluate_on_split(scorer, split, cfg.metrics, cfg.eval_batch_size, device, per_user=True)
    return {"checkpoint": folder, "checkpoint_epoch": state.epoch, "best_epoch": state.best.get("epoch"),
            "beta_at_best": state.best.get("kl_weight"), "global_step": state.global_step,
            "anneal_steps": state.history[-1]["anneal_steps"] if state.history else None,
            "model_config": to_dict(state.model_config), "train_config": to_dict(cfg), **scores}, state


def trials_table(trials: Sequence[TrialRecord], metric: str, mode: str) -> list[dict[str, Any]]:
    """One row per trial, as results.json and the report list them."""
    rows = []
    for t in trials:
        best = t.best(metric, mode) or {}
        rows.append({"trial_id": t.trial_id, "number": t.number, "status": t.status, "epochs": t.epochs,
                     f"best_{metric}": best.get(metric), "best_epoch": best.get("epoch"), "config": t.config})
    return rows


def search_cost(trials: Sequence[TrialRecord], fit_wall: float, t_start: float) -> tuple[float, float | None]:
    """(CPU seconds of every trial over every run of the search, trials that ended during this run per hour of
    its wall time). `t_start`: this run's start on the perf_counter clock."""
    cpu_s = sum(t.cpu_s for t in trials)
    since = time.time() - (time.perf_counter() - t_start)   # this run's start as a unix time, as the reports carry
    ended = sum(t.status in ("completed", "stopped_early", "errored") and (t.last_report or 0) >= since for t in trials)
    return cpu_s, (ended / fit_wall * 3600 if fit_wall > 0 and ended else None)


def metrics_table(rows: list[tuple[str, dict]], metrics: Sequence[str]) -> str:
    lines = [f"{'':<22}" + "".join(f"{m.replace('ndcg', 'NDCG').replace('recall', 'Recall'):>20}" for m in metrics)]
    for label, r in rows:
        lines.append(f"{label:<22}" + "".join(f"{r.get(m, math.nan):>11.4f} ± {r.get(m + '_se', math.nan):.4f}" for m in metrics))
    return "\n".join(lines)


def finalize(space: SearchSpace, split, *, exp_path: str, resume_cmd: str, finalize_now: bool, resumed: bool,
             fit_wall: float, t_start: float, dataset: dict[str, Any], command: Sequence[str] = (), quiet: bool = False) -> int:
    """Test the best trial and write the results; EXIT_INTERRUPTED (and nothing written) while trials remain
    unfinished, unless `finalize_now` (--finalize: test the best trial so far)."""
    metric, mode = space.search.metric, space.search.mode
    trials = read_search(exp_path, space)
    counts = experiment.status_counts(trials)
    waiting = counts["unfinished"] + counts["pending"]
    early = waiting > 0 or len(trials) < space.search.num_samples
    if early and not finalize_now:
        print(f"the search stopped after {len(trials)} of {space.search.num_samples} trials ({waiting} unfinished); "
              f"continue it with: {resume_cmd}", file=sys.stderr)
        return EXIT_INTERRUPTED
    best = pick_best(trials, metric, mode)
    if best is None:
        raise UserError(f"{exp_path}: no trial left a checkpointed result ({counts['errored']} errored); "
                        f"see the error.txt files, then {resume_cmd} --retry-errored")
    settings = space.search
    if settings.reevaluate_top_k and settings.reevaluate_seeds and not quiet:
        print(f"re-evaluating the top {settings.reevaluate_top_k} trials with {settings.reevaluate_seeds} more seeds each "
              f"(search.reevaluate_top_k, search.reevaluate_seeds); the pick is the best mean validation {metric}",
              file=sys.stderr, flush=True)
    reeval = reevaluate(trials, split, metric=metric, mode=mode, top_k=settings.reevaluate_top_k,
                        seeds=settings.reevaluate_seeds, quiet=quiet)
    if reeval is not None:
        best = next(t for t in trials if t.trial_id == reeval["chosen"])

    print(f"testing the best trial {best.trial_id} once on the test users, with popularity and EASE beside it", file=sys.stderr,
          flush=True)
    final, state = evaluate_trial(best, split)
    per_user = final.pop("per_user")
    ease = ease_yardstick(split, final["train_config"]["metrics"], metric)
    ease_per_user = ease.pop("per_user", {})
    vs_ease = {k: paired_difference(per_user[k], ease_per_user[k]) for k in per_user if k in ease_per_user}
    best_value = best.best_value(metric, mode)
    best_row = best.best(metric, mode) or {}
    note = None
    if final["best_epoch"] != best_row.get("epoch"):
        note = (f"the trial's best validation epoch was {best_row.get('epoch')} but its last checkpoint (epoch "
                f"{final['checkpoint_epoch']}) holds the best weights up to then, those of epoch {final['best_epoch']}; "
                f"those were tested")
    cpu_s, per_hour = search_cost(trials, fit_wall, t_start)
    summary = {
        "experiment": exp_path, "space": space.name, "dataset": dataset, "split": split.stats(),
        "best_trial": {"trial_id": best.trial_id, "path": best.path, "status": best.status, "config": best.config,
                       f"best_{metric}": best_value, "epochs_trained": best.epochs, "best_epoch": final["best_epoch"],
                       "beta_at_best": final["beta_at_best"]},
        "val": final["val"], "test": final["test"], "popularity": final["popularity"], "ease": ease,
        # The best trial minus each baseline on the same users, with the paired standard error.
        "vs_popularity": final.pop("vs_popularity"), "vs_ease": vs_ease,
        "model_config": final["model_config"], "train_config": final["train_config"],
        "checkpoint": final["checkpoint"], "checkpoint_epoch": final["checkpoint_epoch"],
        "anneal_steps": final["anneal_steps"], "trials": counts, "search_metric": metric, "mode": mode,
        "metric_definitions": metric_definitions(final["train_config"]["metrics"]),
        "scheduler": dataclasses.asdict(space.scheduler), "trials_table": trials_table(trials, metric, mode),
        "wall_time_s": {"search": fit_wall, "total": time.perf_counter() - t_start}, "resumed": resumed,
        "cpu_time_s": {"trials": cpu_s}, "trials_per_hour": per_hour,
        "finalized_early": bool(early and finalize_now),
        # The top trials retrained with more seeds (tuning.reevaluate); null when search.reevaluate_top_k is 0.
        "reevaluation": reeval,
    } | ({"note": note} if note else {})
    model_dir = write_best_model(exp_path, state, split, dataset, metrics={"val": final["val"], "test": final["test"],
                                                                       "popularity": final["popularity"],
                                                                       "best_epoch": final["best_epoch"], "trial_id": best.trial_id},
                                 command=f"python -m tuning.run {' '.join(command)}" if command else None)
    summary["best_model"] = model_dir
    experiment.write_json(experiment.join(exp_path, experiment.RESULTS), summary)
    experiment.write_text(experiment.join(exp_path, experiment.BEST_CONFIG), best_config_yaml(space, best, final, best_value))

    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(best.config.items()))
    print(f"\nbest trial {best.trial_id}: validation {metric} {best_value:.4f} at epoch {final['best_epoch']} of "
          f"{best.epochs} (beta* {final['beta_at_best']:.4f}); {params}")
    if reeval is not None:
        print(reevaluation_text(reeval, metric))
    rows = [("validation", final["val"]), ("test", final["test"]), ("popularity test", final["popularity"]["test"])]
    if "test" in ease:
        rows.append((f"EASE test (λ={ease['lambda']:g})", ease["test"]))
    print(metrics_table(rows, final["train_config"]["metrics"]))
    if "skipped" in ease:
        print(f"EASE not computed: {ease['skipped']}")
    for name, diff in (("popularity", summary["vs_popularity"]), ("EASE", vs_ease)):
        if "test" in diff:
            print(f"best trial - {name} on the same test users: {verdict(diff['test'], metric)}")
    rate = f", {per_hour_text(per_hour)} trials/h" if per_hour is not None else ""
    if reeval is not None:
        rate += f"; re-evaluation {reeval['wall_time_s']:.1f} s wall, {reeval['cpu_time_s']:.1f} CPU s"
    print(f"trials: {counts['total']} ({counts['completed']} completed, {counts['stopped_early']} stopped early, "
          f"{counts['errored']} errored); search {fit_wall:.1f} s wall, {cpu_s:.1f} CPU s in the trials{rate}; "
          f"total {time.perf_counter() - t_start:.1f} s")
    if note:
        print(f"note: {note}")
    print(f"wrote {experiment.join(exp_path, experiment.RESULTS)}, {experiment.join(exp_path, experiment.BEST_CONFIG)} and {model_dir}/\n"
          f"next: python -m multivae.recommend --checkpoint {exp_path} --user <id>   |   python -m tuning.report {exp_path}"
          f"   |   tensorboard --logdir {exp_path}")
    return 0


def reevaluation_text(reeval: dict[str, Any], metric: str) -> str:
    """The re-evaluation as the final summary prints it: one line per candidate, the pick marked."""
    lines = [f"re-evaluated the top {len(reeval['candidates'])} trials, validation {metric} over "
             f"{reeval['seeds'] + 1} seeds (mean ± SE across seeds; single run):"]
    for r in reeval["candidates"]:
        mark = "  <- picked" if r["trial_id"] == reeval["chosen"] else ""
        lines.append(f"  trial {r['number']} ({r['trial_id']}): {r['mean']:.4f} ± {r['se']:.4f}; single run {r['single_run']:.4f}{mark}")
    if reeval["changed_pick"]:
        lines.append(f"  the pick differs from the best single run ({reeval['single_run_best']})")
    return "\n".join(lines)


def verdict(diff: dict[str, float], metric: str) -> str:
    """'+0.0123 ± 0.0031 NDCG@100 (paired SE): ahead' — ahead or behind only beyond two standard errors, a tie
    otherwise."""
    d, se = diff[metric], diff[f"{metric}_se"]
    word = "ahead" if d > 2 * se else "behind" if d < -2 * se else "a tie (within 2 SE)"
    return f"{d:+.4f} ± {se:.4f} {metric} (paired SE): {word}"


def write_best_model(exp_path: str, state, split, dataset: dict[str, Any], metrics: dict[str, Any], command: str | None) -> str:
    """The best trial's self-contained model folder `<experiment>/best_model/` (multivae.artifact): its best
    weights, configs, item ids and every known user's interactions, so `multivae.recommend --checkpoint
    <experiment>` works without the dataset's cache, on another machine."""
    from multivae.artifact import known_from_split, save_model_dir
    from multivae.files import jsonable

    target = experiment.join(exp_path, experiment.BEST_MODEL)
    args = dict(model=best_model(state), model_config=state.model_config, item_ids=split.item_ids, known=known_from_split(split),
                metrics=jsonable(metrics), command=command, dataset=dataset, source_path=split.info.get("source_path"),
                train_config=to_dict(state.train_config),
                ease_weights=blend_ease_weights(state.train_config, split.train))
    local = experiment.local_path(target)
    if local is not None:
        save_model_dir(local, **args)
        return target
    with tempfile.TemporaryDirectory(prefix="multivae-best-model-") as tmp:   # a remote storage: write, then upload
        folder = save_model_dir(Path(tmp) / experiment.BEST_MODEL, **args)
        for f in sorted(folder.iterdir()):
            experiment.write_bytes(experiment.join(target, f.name), f.read_bytes())
    return target


def best_config_yaml(space: SearchSpace, best: TrialRecord, final: dict[str, Any], best_value: float) -> str:
    """The best trial's configuration, each key once: the model and training settings it ran with (what
    `multivae.train --config` reads), and where it came from."""
    import yaml

    from multivae.files import jsonable

    model_cfg, train_cfg = split_trial_config(best.config, where=f"trial {best.trial_id}")
    return yaml.safe_dump(jsonable({
        "space": space.name, "trial_id": best.trial_id, f"best_{space.search.metric}": best_value,
        "best_epoch": final["best_epoch"], "beta_at_best": final["beta_at_best"],
        "dataset": to_dict(space.dataset), "model": to_dict(model_cfg), "train": to_dict(train_cfg)}), sort_keys=False)


__all__ = ["EXIT_INTERRUPTED", "best_config_yaml", "evaluate_trial", "finalize", "metrics_table", "pick_best",
           "read_search", "reevaluation_text", "trials_table", "verdict", "write_best_model"]
