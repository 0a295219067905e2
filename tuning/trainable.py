"""The Ray Tune trainable: a thin adapter from one trial's config to `multivae.training.fit`.

    tune.with_parameters(train_multivae, split=split)   # the processed dataset goes to the object store once

Per trial: build the model and training settings from the config (`tuning.trial_config.split_trial_config`;
the config holds plain values, `tuning.tuner` decoded the searcher's), use the CPUs and GPU Tune gave the trial,
resume from `tune.get_checkpoint()` when Tune restarts the trial (model, optimizer, epoch, global step and
RNG state, so the KL weight goes on where it was), then train. After every epoch `tune.report(...)` gets
the validation metrics (ndcg@100 is what ASHA and Optuna compare) and, on checkpoint epochs, a
`tune.Checkpoint` holding `checkpoint.pt`. Per-step and per-epoch curves and the trial's hyperparameters go
to TensorBoard (`tuning.tblog`). The trial never opens a data file.
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import ray
from ray import tune

from multivae.checkpoint import CHECKPOINT_NAME
from multivae.data.split import SplitData
from multivae.training import Callback, TrainState, fit, init_state, restore_state, save_state
from tuning.experiment import CPU_COLUMN, TRIAL_RESULTS, parse_result_rows
from tuning.ray_compat import quiet_checkpoint_logs, quiet_worker_exit_on_sigterm, trial_working_dir
from tuning.tblog import TrialWriter
from tuning.trial_config import plain_config, split_trial_config

# What every tune.report carries (all of `fit`'s epoch record, and the trial's CPU seconds): the search metric and its context.
REPORTED = ("epoch", "global_step", "loss", "recon", "kl", "kl_weight", "ndcg@100", "recall@20", "recall@50",
            "best_ndcg@100", "best_epoch", "beta_at_best", "anneal_steps", "epoch_time_s", "eval_time_s", CPU_COLUMN)


def trial_resources() -> tuple[int | None, float]:
    """(CPU threads, GPUs) that Ray assigned to this trial's worker."""
    assigned = ray.get_runtime_context().get_assigned_resources()
    cpus = assigned.get("CPU")
    return (max(1, int(cpus)) if cpus else None), float(assigned.get("GPU", 0.0))


def trial_device(gpus: float) -> str:
    """CUDA when Ray gave the trial a (possibly fractional) GPU and CUDA is there; Ray sees only the GPU id it
    assigned (CUDA_VISIBLE_DEVICES), so that is `cuda`. Logical GPUs on a CPU-only node fall back to the CPU."""
    if gpus <= 0:
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    logging.getLogger(__name__).warning("trial was given %.2f GPU but CUDA is not available; training on the CPU", gpus)
    return "cpu"


class TuneReporter(Callback):
    """`fit`'s callback inside a trial: TensorBoard every step, `tune.report` (+ checkpoint) every epoch."""

    def __init__(self, writer: TrialWriter, checkpoint_epochs: Iterable[int], checkpoint_every: int,
                 item_ids: Any, extra: dict, cpu_start: float | None = None) -> None:
        self.writer, self.item_ids, self.extra = writer, item_ids, extra
        self.cpu_start = time.process_time() if cpu_start is None else cpu_start
        self.checkpoint_epochs, self.every = set(checkpoint_epochs), max(1, checkpoint_every)

    def on_step(self, record: dict[str, float]) -> None:
        self.writer.step(record)

    def wants_checkpoint(self, state: TrainState) -> bool:
        e = state.epoch
        return e % self.every == 0 or e in self.checkpoint_epochs or e >= state.train_config.epochs

    def on_epoch(self, record: dict[str, Any], state: TrainState) -> None:
        self.writer.epoch(record)
        self.writer.flush()   # Tune may stop this trial inside tune.report: nothing after it is guaranteed
        self.report(record, state)

    def report(self, record: dict[str, Any], state: TrainState) -> None:
        """`record` to Tune, with a checkpoint of `state` where one is due."""
        metrics = {k: (float(v) if isinstance(v, float) else v) for k, v in record.items()}
        metrics[CPU_COLUMN] = time.process_time() - self.cpu_start   # a checkpoint saved below counts in the next report
        if not self.wants_checkpoint(state):
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="multivae-ckpt-") as tmp:
            save_state(state, Path(tmp) / CHECKPOINT_NAME, self.item_ids, self.extra)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def train_multivae(config: dict[str, Any], split: SplitData | None = None, checkpoint_every: int = 1,
                   checkpoint_epochs: Iterable[int] = (), searched: Iterable[str] | None = None) -> None:
    """One trial. `split` comes from `tune.with_parameters`; `checkpoint_epochs` are extra epochs to
    checkpoint at (where the scheduler may stop, pause or copy the trial), on top of every `checkpoint_every` epochs and the last one."""
    if split is None:
        raise ValueError("train_multivae needs the dataset: tune.with_parameters(train_multivae, split=split)")
    cpu_start = time.process_time()   # the trial's CPU from here: restore, data, epochs, checkpoints
    quiet_checkpoint_logs()
    quiet_worker_exit_on_sigterm()
    config = plain_config(config)
    ctx = tune.get_context()
    trial = ctx.get_trial_name() or "trial"
    model_cfg, cfg = split_trial_config(config, where=f"trial {trial}")
    threads, gpus = trial_resources()
    cfg = dataclasses.replace(cfg, threads=threads, device=trial_device(gpus))

    checkpoint, own = tune.get_checkpoint(), False
    if checkpoint is not None:
        checkpoint = newest_own_checkpoint(checkpoint, ctx.get_trial_id())
        own = bool(own_checkpointed_rows(checkpoint, ctx.get_trial_id()))
        # Tune restarting this trial (a retry, a resumed search, a paused HyperBand trial), or PBT continuing
        # another trial's checkpoint with a perturbed config: the weights, optimizer moments, epoch, global step
        # (the KL schedule's position) and RNG come from the checkpoint; lr, weight decay, dropout and the anneal
        # cap come from this trial's config.
        with checkpoint.as_directory() as d:
            state = restore_state(Path(d) / CHECKPOINT_NAME, n_items=split.n_items, device=cfg.device, train_config=cfg,
                                  model_config=model_cfg)
    else:
        state = init_state(split.n_items, model_cfg, cfg)

    writer = TrialWriter(trial_working_dir(), cfg.metrics, cfg.select_metric)
    if checkpoint is None:
        searched_keys = list(config) if searched is None else [k for k in searched if k in config]
        writer.hparams({k: config[k] for k in searched_keys}, fixed={k: v for k, v in config.items() if k not in searched_keys})
    extra = {"trial_id": ctx.get_trial_id(), "trial_name": trial, "split_path": split.info.get("cache_path"),
             "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()
                        if isinstance(v, (bool, int, float, str, type(None), list, tuple))}}
    reporter = TuneReporter(writer, checkpoint_epochs, checkpoint_every, split.item_ids, extra, cpu_start)
    try:
        if own and state.epoch >= cfg.epochs and state.history:
            # restored at its own last epoch (`newest_own_checkpoint`): nothing to train; Tune, its scheduler and
            # searcher get that epoch's result once more, the same row with a checkpoint, as when it ended. (PBT
            # copying a finished trial's last checkpoint leaves nothing to train either, but that row is the
            # other trial's: not reported as this one's.)
            reporter.report(state.history[-1], state)
        fit(split, state=state, callback=reporter)
    except FloatingPointError as exc:
        raise FloatingPointError(f"trial {trial} diverged: {exc}; config {dict(sorted(config.items()))}") from None
    finally:
        writer.close()


def newest_own_checkpoint(checkpoint: tune.Checkpoint, trial_id: str) -> tune.Checkpoint:
    """The checkpoint a restored trial goes on from: the one Tune gives, or a newer one of the same trial.

    Tune restores a trial from the checkpoint its saved state names. That state can lag behind the trial's
    own folder: a trial that reported its last checkpointed epoch as the driver stopped can be saved as still
    running at its previous checkpoint (Ray 2.60, docs/faults.md). Trained from there, it would train an epoch
    that already has a result row with a checkpoint, and report it twice. So where the trial's result.json
    has a newer row of this trial whose checkpoint is still there, that checkpoint is the one to restore.
    A checkpoint in another trial's folder (PBT copying a better trial) is used as given."""
    folder, name = posixpath.split(checkpoint.path.rstrip("/"))
    fs, own = checkpoint.filesystem, own_checkpointed_rows(checkpoint, trial_id)
    given = [r["epoch"] for r in own if r["checkpoint_dir_name"] == name]
    if not given:
        return checkpoint
    newer = [r for r in own if r["epoch"] > max(given)
             and fs.get_file_info(posixpath.join(folder, r["checkpoint_dir_name"])).type.name == "Directory"]
    if not newer:
        return checkpoint
    newest = max(newer, key=lambda r: r["epoch"])
    logging.getLogger(__name__).warning("trial %s: restoring from %s (epoch %s), its newest checkpoint, not %s",
                                        trial_id, newest["checkpoint_dir_name"], newest["epoch"], name)
    return tune.Checkpoint(posixpath.join(folder, newest["checkpoint_dir_name"]), filesystem=fs)


def own_checkpointed_rows(checkpoint: tune.Checkpoint, trial_id: str) -> list[dict[str, Any]]:
    """The rows of trial `trial_id` with a checkpoint in the result.json beside `checkpoint`: none where the
    checkpoint is in another trial's folder (PBT) or that file cannot be read."""
    folder = posixpath.dirname(checkpoint.path.rstrip("/"))
    try:
        with checkpoint.filesystem.open_input_stream(posixpath.join(folder, TRIAL_RESULTS)) as f:
            rows = parse_result_rows(f.read().decode("utf-8", errors="replace"))
    except OSError:
        return []
    return [r for r in rows if r.get("trial_id") == trial_id and isinstance(r.get("checkpoint_dir_name"), str)]


__all__ = ["REPORTED", "TuneReporter", "newest_own_checkpoint", "own_checkpointed_rows", "train_multivae", "trial_resources"]
