"""Training: one readable loop (batch, forward, loss, backward, step, log, evaluate, keep the best).

The KL weight follows the global step (optimizer updates over all epochs), which lives in `TrainState`
and in every checkpoint, so it never resets between epochs or on resume.

Precision (multivae.precision): `precision: bf16` runs each forward pass's matmuls under a fresh autocast
(CPU or CUDA) on fp32 master weights; log_softmax, the losses, the KL, the backward pass and the step run outside it, and validation scores in plain fp32. The loop never
waits for the device inside an epoch on CUDA: the step records stay on the device and come back once per
epoch (on CPU every step, where reading them costs nothing), and a non-finite loss is found then.

RecVAE's alternating updates (`alternating: true`, Shenbin et al. 2020): an epoch is `encoder_passes` shuffled
passes updating the encoder alone, then (prior composite) the frozen prior encoder is refreshed from the encoder,
then `decoder_passes` passes updating the decoder alone, without input dropout. One Adam covers all
parameters: the half that a pass leaves alone never gets a gradient (its requires_grad is off during the pass),
and torch's Adam skips such parameters and counts steps per parameter, so this is exactly two independent
Adams, and checkpoints keep their format. Every update counts in global_step (the KL schedule runs over all
passes); the weight-decay penalty covers the weight matrices of the half being updated. One validation per epoch.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from multivae.allocator import MALLOC_MODES, keep_freed_memory
from multivae.batch import SparseBatch
from multivae.blend import blend_ease_weights, trained_scorer
from multivae.checkpoint import check_weights, load_checkpoint, save_checkpoint
from multivae.config import from_dict, to_dict
from multivae.data.split import SplitData
from multivae.errors import UserError
from multivae.evaluate import DEFAULT_METRICS, evaluate, model_scorer
from multivae.metrics import parse_metric
from multivae.model import (ModelConfig, MultiDAE, MultiVAE, build_model, composite_log_prior, kl_divergence, kl_divergence_per_user,
                            kl_monte_carlo, kl_weight, l2_penalty, reconstruction_loss)
from multivae.precision import PRECISIONS, forward_precision, training_precision

# The reference: beta = min(anneal_cap, update_count / total_anneal_steps), total_anneal_steps = 200,000 on
# ML-20M (234 batches of 500 per epoch), so the slope is 1 / 200,000 per update whatever the cap, and cap 0.2
# is reached after 40,000 updates (epoch 170.9 of 200). Our form min(cap, cap * step / anneal_steps) is the
# same schedule with anneal_steps = cap * total_anneal_steps. On another dataset we keep the shape in epochs.
REFERENCE_TOTAL_ANNEAL_STEPS = 200_000
REFERENCE_BATCHES_PER_EPOCH = 234
REFERENCE_TOTAL_ANNEAL_EPOCHS = REFERENCE_TOTAL_ANNEAL_STEPS / REFERENCE_BATCHES_PER_EPOCH   # 854.7
# torch.optim.Adam's kernels: the same update rule; "foreach" and "single_tensor" give bit-identical results
ADAM_KERNELS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "single_tensor": {"foreach": False}}
REFERENCE_DAE_LAMBDA = 0.01  # divided by the batch size in the reference notebook (lam=0.01 / batch_size)


class TrainingDiverged(UserError, FloatingPointError):
    """The loss became NaN or infinite: a one-line error (exit 2) naming the step, the epoch and the lr.
    Also a FloatingPointError, which is what callers caught before."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200
    batch_size: int = 500
    lr: float = 1e-3
    weight_decay: float | None = None   # lam in lam * sum ||W||^2; None: 0 for vae, 0.01 / batch_size for dae (reference)
    anneal_cap: float = 0.2
    anneal_steps: int | None = None     # updates to reach the cap; 0: beta = cap from the first update; None: the
                                        # reference's schedule, cap * 854.7 epochs of updates (40,000 on ML-20M at cap 0.2)
    eval_batch_size: int = 2000
    metrics: tuple[str, ...] = DEFAULT_METRICS
    select_metric: str = "ndcg@100"     # validation metric that picks the best epoch
    seed: int = 98765
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    threads: int | None = None          # torch intra-op threads (None: torch's default)
    adam: str = "fused"                 # Adam kernel: fused | foreach | single_tensor. One algorithm; fused is
                                        # 1.3-1.5x faster per step and differs from the others in the last bits
    malloc: str = "keep"                # keep: glibc keeps freed memory for reuse (multivae.allocator; same
                                        # numbers, 1.35x per step on CPU); default: leave the allocator alone
    precision: str = "fp32"             # fp32 | bf16: the training matmuls under bf16 autocast, fp32 master
                                        # weights, losses in fp32; validation and test always score in fp32 |
                                        # bf16-sim: bf16's rounding on fp32 units (quality checks without bf16 hardware)
    tf32: bool = False                  # CUDA only: TF32 for the fp32 training matmuls (no effect on CPU)
    alternating: bool = False           # RecVAE: per epoch, encoder_passes passes updating only the encoder, then
                                        # decoder_passes passes updating only the decoder (input dropout 0)
    encoder_passes: int = 3             # with alternating: passes over the training users per epoch, encoder only
    decoder_passes: int = 1             # with alternating: passes per epoch, decoder only
    ease_blend: float = 0.0             # w > 0: score (validation, test, recommend) by (1 - w) z(logits) + w z(EASE's
                                        # x B) per user (multivae.blend, after VASP); 0: the model alone
    ease_lambda: float = 500.0          # with ease_blend: EASE's lambda, B fitted once on the training users

    def __post_init__(self) -> None:
        from multivae.config import check_device_name, check_domains

        check_domains(self, {"epochs": ">= 1", "batch_size": ">= 1", "lr": "> 0", "weight_decay": ">= 0", "anneal_cap": ">= 0",
                             "anneal_steps": ">= 0", "eval_batch_size": ">= 1", "seed": "in [0, 2**32)", "threads": ">= 1",
                             "encoder_passes": ">= 1", "decoder_passes": ">= 1", "ease_blend": "in [0, 1)",
                             "ease_lambda": "> 0"})
        check_device_name(self.device)
        if self.adam not in ADAM_KERNELS:
            raise ValueError(f"adam must be one of {list(ADAM_KERNELS)}, got {self.adam!r}")
        if self.malloc not in MALLOC_MODES:
            raise ValueError(f"malloc must be one of {list(MALLOC_MODES)}, got {self.malloc!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        for m in (*self.metrics, self.select_metric):
            parse_metric(m)
        if self.select_metric not in self.metrics:
            raise ValueError(f"select_metric {self.select_metric!r} must be one of metrics {list(self.metrics)}")


def batches_per_epoch(n_train_users: int, batch_size: int) -> int:
    return math.ceil(n_train_users / batch_size)


def resolved_anneal_steps(cfg: TrainConfig, n_train_users: int) -> int:
    if cfg.anneal_steps is not None:
        return cfg.anneal_steps
    return round(cfg.anneal_cap * REFERENCE_TOTAL_ANNEAL_EPOCHS * batches_per_epoch(n_train_users, cfg.batch_size))


def resolved_weight_decay(cfg: TrainConfig, model_cfg: ModelConfig) -> float:
    if cfg.weight_decay is not None:
        return cfg.weight_decay
    return REFERENCE_DAE_LAMBDA / cfg.batch_size if model_cfg.model == "dae" else 0.0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None


@dataclass
class TrainState:
    model: MultiVAE | MultiDAE
    optimizer: torch.optim.Optimizer
    model_config: ModelConfig
    train_config: TrainConfig
    rng: np.random.Generator            # shuffles the training users each epoch
    epoch: int = 0                      # completed epochs
    global_step: int = 0                # optimizer updates so far, over all epochs
    best: dict[str, Any] = field(default_factory=dict)       # metric value, epoch, kl_weight at the best epoch
    best_model: dict[str, torch.Tensor] | None = None         # state_dict of the best-by-validation model
    history: list[dict[str, Any]] = field(default_factory=list)
    # prior composite: the frozen encoder copy ("enc_w.0", "enc_b.0", ... as in the state_dict) whose posterior is
    # the prior's main component; refreshed from the encoder once per epoch. Outside the model's state_dict.
    prior_encoder: dict[str, torch.Tensor] | None = None

    @property
    def best_value(self) -> float:
        return float(self.best.get("value", -math.inf))


class Callback:
    """Hooks the loop calls; `tuning/` subclasses this to report to Ray Tune and TensorBoard."""

    def on_step(self, record: dict[str, float]) -> None:
        """Every optimizer update's record: global_step, epoch, loss, recon, kl, kl_weight (Python numbers), in
        order. On CPU right after the update; on CUDA the epoch's records come in one batch at its end."""

    def on_epoch(self, record: dict[str, Any], state: TrainState) -> bool | None:
        """After every epoch's validation. Return True to stop training."""


def init_state(n_items: int, model_cfg: ModelConfig, cfg: TrainConfig) -> TrainState:
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    model = build_model(n_items, model_cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, **ADAM_KERNELS[cfg.adam])
    state = TrainState(model, optimizer, model_cfg, cfg, rng=np.random.default_rng(cfg.seed))
    if _uses_prior_encoder(model):
        state.prior_encoder = model.encoder_state()
    return state


def _uses_prior_encoder(model: MultiVAE | MultiDAE) -> bool:
    return isinstance(model, MultiVAE) and model.config.prior == "composite"


class _StepLog:
    """Step records kept on the device and read back in one transfer per flush (a host sync per flush,
    not per step), then checked for divergence and delivered to `Callback.on_step` in order."""

    def __init__(self, state: TrainState, callback: Callback) -> None:
        self.state, self.callback = state, callback
        self.pending: list[tuple[int, float, torch.Tensor]] = []     # global step, kl weight, [loss, recon, kl]
        self.sums = {"loss": 0.0, "recon": 0.0, "kl": 0.0}
        self.n = 0

    def add(self, global_step: int, beta: float, loss: torch.Tensor, recon: torch.Tensor, kl: torch.Tensor) -> None:
        self.pending.append((global_step, beta, torch.stack([loss.detach(), recon.detach(), kl.detach()])))

    def flush(self) -> None:
        if not self.pending:
            return
        values = torch.stack([v for _, _, v in self.pending]).cpu().tolist()
        epoch, lr = self.state.epoch + 1, self.state.train_config.lr
        for (g, beta, _), (loss, recon, kl) in zip(self.pending, values):
            if not math.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss} at global step {g} (epoch {epoch}); "
                                       f"lower the learning rate (lr={lr})")
            step = {"global_step": g, "epoch": epoch, "loss": loss, "recon": recon, "kl": kl, "kl_weight": beta}
            for k in self.sums:
                self.sums[k] += step[k]
            self.n += 1
            self.callback.on_step(step)
        self.pending.clear()


def train_epoch(state: TrainState, split: SplitData, anneal_steps: int, lam: float, callback: Callback) -> dict[str, float]:
    """One epoch: one pass updating everything, or (alternating) the encoder's passes, the prior encoder's
    refresh and the decoder's passes. Returns the mean step record and the last KL weight."""
    model, cfg = state.model, state.train_config
    device = next(model.parameters()).device
    log = _StepLog(state, callback)
    model.train()
    with training_precision(device, cfg):
        if not cfg.alternating:
            beta = _one_pass(state, split, anneal_steps, lam, log)
        else:
            for _ in range(cfg.encoder_passes):
                beta = _one_pass(state, split, anneal_steps, lam, log, update="encoder")
            _refresh_prior_encoder(state)
            for _ in range(cfg.decoder_passes):
                beta = _one_pass(state, split, anneal_steps, lam, log, update="decoder", input_dropout=False)
    if not cfg.alternating:
        _refresh_prior_encoder(state)
    log.flush()
    return {k: v / max(1, log.n) for k, v in log.sums.items()} | {"kl_weight": beta}


def _refresh_prior_encoder(state: TrainState) -> None:
    if _uses_prior_encoder(state.model):
        state.prior_encoder = state.model.encoder_state()


@contextlib.contextmanager
def _frozen(params: list[torch.nn.Parameter]):
    """No gradient for `params` inside (so Adam leaves them and their moments alone); restored on the way out."""
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _one_pass(state: TrainState, split: SplitData, anneal_steps: int, lam: float, log: _StepLog,
              update: str = "all", input_dropout: bool = True) -> float:
    """One shuffled pass over the training users, an update per batch of the parameters in `update` (all,
    encoder or decoder); input dropout as configured unless `input_dropout` is False. Returns the last beta."""
    model, opt, cfg = state.model, state.optimizer, state.train_config
    device = next(model.parameters()).device
    is_vae = isinstance(model, MultiVAE)
    pin = device.type == "cuda"
    frozen = {"all": [], "encoder": model.decoder_parameters(), "decoder": model.encoder_parameters()}[update]
    order = state.rng.permutation(split.train.shape[0])
    beta = 0.0
    with _frozen(frozen):
        for start in range(0, len(order), cfg.batch_size):
            x = SparseBatch.from_csr(split.train, np.sort(order[start:start + cfg.batch_size]), pin=pin).to(device)
            beta = kl_weight(state.global_step, cfg.anneal_cap, anneal_steps) if is_vae else 0.0
            loss, recon, kl = batch_loss(state, x, beta, lam, update, input_dropout)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state.global_step += 1
            log.add(state.global_step, beta, loss, recon, kl)
            if device.type == "cpu":
                log.flush()          # free on CPU: report and check every step
    return beta


def batch_loss(state: TrainState, x: SparseBatch, beta: float, lam: float, update: str = "all",
               input_dropout: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward pass and the loss of one batch: (loss, recon, kl), recon and kl means over users, kl unweighted.
    loss = recon + beta * KL (kl_scale constant) or mean_u(recon_u + beta * n_u * KL_u) (interactions), plus
    the L2 penalty on the weights of `update` (all, encoder, decoder)."""
    model, cfg = state.model, state.train_config
    device = next(model.parameters()).device
    z = mu_old = logvar_old = None
    with forward_precision(device, cfg):
        if _uses_prior_encoder(model):
            logits, mu, logvar, z = model.sample(x, input_dropout)
            with torch.no_grad():
                mu_old, logvar_old = model.encode_frozen(state.prior_encoder, x)
        else:
            logits, mu, logvar = model(x, input_dropout)
    # log_softmax, the losses and the KL in fp32, outside autocast
    recon = reconstruction_loss(logits.float(), x, model.config.likelihood)
    if isinstance(model, MultiVAE):
        kl_term, kl = _kl_terms(model.config, beta, x, mu.float(), logvar.float(), z, mu_old, logvar_old)
    else:
        kl = torch.zeros((), device=device)
        kl_term = beta * kl
    return recon + kl_term + l2_penalty(model, lam, update), recon, kl


def _kl_terms(model_cfg: ModelConfig, beta: float, x: SparseBatch, mu: torch.Tensor, logvar: torch.Tensor,
              z: torch.Tensor | None, mu_old: torch.Tensor | None, logvar_old: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss's KL term, the mean per-user KL that the step record logs, unweighted).

    standard + constant: beta * exact KL averaged over users (the paper). composite: the per-user KL is the
    Monte-Carlo estimate at the sampled z against the composite prior. interactions: user u's KL weighs
    beta * n_u (n_u its training interactions), averaged over users."""
    if model_cfg.prior == "standard" and model_cfg.kl_scale == "constant":
        kl = kl_divergence(mu, logvar)
        return beta * kl, kl
    if model_cfg.prior == "composite":
        z = z.float()
        kl_u = kl_monte_carlo(z, mu, logvar, composite_log_prior(z, mu_old.float(), logvar_old.float()))
    else:
        kl_u = kl_divergence_per_user(mu, logvar)
    kl = kl_u.mean()
    if model_cfg.kl_scale == "interactions":
        return (beta * x.counts().to(kl_u.dtype) * kl_u).mean(), kl
    return beta * kl, kl


def validate(state: TrainState, split: SplitData, ease_weights: torch.Tensor | None = None) -> dict[str, float]:
    """The validation metrics of the model now, scored as every command scores it (`multivae.blend.trained_scorer`:
    the logits, or with `ease_blend` the blend with EASE's B = `ease_weights`, fitted here when not given)."""
    cfg = state.train_config
    device = next(state.model.parameters()).device
    score = trained_scorer(state.model, cfg, ease_weights=ease_weights, train=split.train)
    return evaluate(score, split.val_fold_in, split.val_target, cfg.metrics, cfg.eval_batch_size, device)


def fit(split: SplitData, model_cfg: ModelConfig | None = None, cfg: TrainConfig | None = None,
        state: TrainState | None = None, callback: Callback | None = None) -> TrainState:
    """Train until `cfg.epochs` (continuing from `state` when given), keeping the best-by-validation model."""
    if state is None:
        state = init_state(split.n_items, model_cfg or ModelConfig(), cfg or TrainConfig())
    model_cfg, cfg, callback = state.model_config, state.train_config, callback or Callback()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.malloc == "keep":
        keep_freed_memory()
    anneal_steps = resolved_anneal_steps(cfg, split.train.shape[0])
    lam = resolved_weight_decay(cfg, model_cfg)
    ease_weights = blend_ease_weights(cfg, split.train)   # once per fit, for every epoch's validation (None: no blend)
    while state.epoch < cfg.epochs:
        t0 = time.perf_counter()
        train_stats = train_epoch(state, split, anneal_steps, lam, callback)
        t1 = time.perf_counter()
        val = validate(state, split, ease_weights)
        t2 = time.perf_counter()
        state.epoch += 1
        value = val[cfg.select_metric]
        if value > state.best_value:
            state.best = {"value": value, "metric": cfg.select_metric, "epoch": state.epoch, "kl_weight": train_stats["kl_weight"],
                          "global_step": state.global_step, "val": {m: val[m] for m in cfg.metrics}}
            state.best_model = {k: v.detach().to("cpu", copy=True) for k, v in state.model.state_dict().items()}
        record = {"epoch": state.epoch, "global_step": state.global_step, **train_stats,
                  **{m: val[m] for m in cfg.metrics},
                  f"best_{cfg.select_metric}": state.best_value, "best_epoch": state.best["epoch"],
                  "beta_at_best": state.best["kl_weight"], "anneal_steps": anneal_steps,
                  "epoch_time_s": t1 - t0, "eval_time_s": t2 - t1}
        state.history.append(record)
        if callback.on_epoch(record, state):
            break
    return state


# --- checkpoints -------------------------------------------------------------------------------------

def state_payload(state: TrainState, item_ids: np.ndarray | None = None, extra: dict | None = None) -> dict[str, Any]:
    payload = {
        "model_config": to_dict(state.model_config),
        "train_config": to_dict(state.train_config),
        "n_items": state.model.n_items,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "best_model": state.best_model,
        "prior_encoder": state.prior_encoder,     # prior composite only (None otherwise)
        "epoch": state.epoch,
        "global_step": state.global_step,
        "best": state.best,
        "history": state.history,
        # CUDA's generators drive dropout and the eps noise on a GPU: without them a resumed run differs
        "rng": {"numpy": state.rng.bit_generator.state, "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "extra": extra or {},
    }
    if item_ids is not None:
        payload["item_ids"] = [x.item() if hasattr(x, "item") else x for x in item_ids]
    return payload


def save_state(state: TrainState, path, item_ids: np.ndarray | None = None, extra: dict | None = None):
    return save_checkpoint(state_payload(state, item_ids, extra), path)


def configs_from_payload(payload: dict[str, Any], where: str) -> tuple[ModelConfig, TrainConfig]:
    return (from_dict(ModelConfig, payload["model_config"], where=where),
            from_dict(TrainConfig, payload["train_config"], where=where))


def restore_state(path, n_items: int | None = None, device: str | None = None,
                  train_config: TrainConfig | None = None, item_ids: np.ndarray | None = None,
                  model_config: ModelConfig | None = None) -> TrainState:
    """Rebuild a TrainState from a checkpoint (optionally with a new train config, e.g. more epochs).

    `train_config`: replaces the checkpoint's; its lr goes into the restored optimizer's groups (Adam's
    moments stay), its anneal cap and weight decay act from the next step on. `model_config`: replaces the
    checkpoint's where the weights still fit it (a new dropout; another architecture is refused). This is how
    PBT continues a copied trial with perturbed hyperparameters.
    `item_ids`: the dataset's item columns; refused unless they are the checkpoint's, in the same order."""
    payload = load_checkpoint(path)
    where = str(path)
    model_cfg, cfg = configs_from_payload(payload, where)
    if model_config is not None:
        model_cfg = model_config
    if train_config is not None:
        cfg = train_config
    if device is not None:
        cfg = dataclasses.replace(cfg, device=device)
    if n_items is not None and payload["n_items"] != n_items:
        raise UserError(f"{path}: checkpoint is for {payload['n_items']} items but the dataset has {n_items}")
    if item_ids is not None and "item_ids" in payload:
        ours, theirs = np.asarray(item_ids).astype(str), np.asarray(payload["item_ids"]).astype(str)
        if len(ours) != len(theirs) or not np.array_equal(ours, theirs):
            differ = int(np.flatnonzero(ours != theirs)[0]) if len(ours) == len(theirs) else min(len(ours), len(theirs))
            shown = (f"column {differ} is item {theirs[differ]} in the checkpoint and {ours[differ]} in the dataset"
                     if differ < min(len(ours), len(theirs)) else f"{len(theirs)} items in the checkpoint, {len(ours)} in the dataset")
            raise UserError(f"{path}: the checkpoint was trained on another dataset or item catalogue ({shown})")
    check_weights(payload.get("model"), payload.get("n_items"), model_cfg, where)   # before the model is allocated
    state = init_state(payload["n_items"], model_cfg, cfg)
    try:
        state.model.load_state_dict(payload["model"])
        state.optimizer.load_state_dict(payload["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: checkpoint does not match its model config ({str(exc).splitlines()[0]})") from None
    for group in state.optimizer.param_groups:   # load_state_dict brought back the checkpoint's lr
        group["lr"] = cfg.lr
    state.prior_encoder = _restored_prior_encoder(payload.get("prior_encoder"), state, where)
    state.epoch, state.global_step = int(payload["epoch"]), int(payload["global_step"])
    state.best, state.best_model, state.history = dict(payload["best"]), payload["best_model"], list(payload["history"])
    state.rng.bit_generator.state = payload["rng"]["numpy"]
    torch.set_rng_state(payload["rng"]["torch"])
    cuda_states = payload["rng"].get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        n = min(len(cuda_states), torch.cuda.device_count())
        for i in range(n):
            torch.cuda.set_rng_state(cuda_states[i], device=i)
    return state


def _restored_prior_encoder(saved: Any, state: TrainState, where: str) -> dict[str, torch.Tensor] | None:
    """The checkpoint's frozen prior encoder, checked against the encoder's names and shapes. None unless the
    (possibly replaced) model config has prior composite; a checkpoint without one (older, or trained with
    the standard prior) starts the prior from the restored encoder."""
    if not _uses_prior_encoder(state.model):
        return None
    current = state.model.encoder_state()
    if saved is None:
        return current
    if (not isinstance(saved, dict) or set(saved) != set(current)
            or any(not isinstance(saved[k], torch.Tensor) or tuple(saved[k].shape) != tuple(v.shape) for k, v in current.items())):
        raise UserError(f"{where}: the checkpoint's prior_encoder does not match the model's encoder")
    return {k: saved[k].to(device=v.device, dtype=v.dtype) for k, v in current.items()}


def best_model(state: TrainState) -> MultiVAE | MultiDAE:
    """A copy of the model with the best-by-validation weights (the one the paper tests)."""
    model = copy.deepcopy(state.model)
    if state.best_model is not None:
        model.load_state_dict(state.best_model)
    return model.eval()
