"""The `scheduler` section: fifo, asha, bohb or pbt, each with its own keys and the rules it needs to run as Ray runs it.

ASHA and BOHB (HyperBand) stop trials at rungs up to `max_t`, which must be the trials' epochs; BOHB's
ConfigSpace has no integer step; PBT changes only the values that leave a running trial's shapes alone
(`PBT_MUTABLE`). The epochs each scheduler decides at are `SchedulerSettings.decision_epochs`
(`tuning.hyperband`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from multivae.errors import short_repr
from multivae.training import TrainConfig
from tuning import resources
from tuning.distributions import Distribution, optuna_distributions
from tuning.hyperband import asha_rungs, hyperband_milestones
from tuning.space_yaml import Parser

SCHEDULER_KEYS = {
    "fifo": ("type",),
    "asha": ("type", "max_t", "grace_period", "reduction_factor"),
    "bohb": ("type", "max_t", "reduction_factor"),
    "pbt": ("type", "perturbation_interval", "quantile_fraction", "resample_probability", "mutations"),
}
# What PBT may change in a running trial: values that leave the model's shapes and the meaning of a step
# alone, so the copied checkpoint goes on training (lr, weight_decay: the optimizer's groups; dropout: the
# model's; anneal_cap: the KL weight from the next step on). Architecture, batch size and likelihood stay.
PBT_MUTABLE = ("lr", "weight_decay", "dropout", "anneal_cap")
PBT_KEEP = 4   # checkpoints kept per trial under PBT unless checkpoint.keep says otherwise (see tuning.space)


@dataclass(frozen=True)
class SchedulerSettings:
    type: str = "fifo"                         # fifo | asha | bohb | pbt
    max_t: int | None = None                   # asha, bohb: the trials' epochs (the last rung)
    grace_period: int | None = None            # asha
    reduction_factor: float | None = None      # asha, bohb
    perturbation_interval: int | None = None   # pbt: epochs between exploit/explore decisions
    quantile_fraction: float | None = None     # pbt: the bottom share copies the top share
    resample_probability: float | None = None  # pbt: a mutated value is drawn afresh (else x0.8 or x1.2)
    mutations: tuple[str, ...] | None = None   # pbt: the searched parameters it may change (PBT_MUTABLE)

    @property
    def stops_early(self) -> bool:
        """Whether trials may end before max_t (a stopped trial is `stopped_early`, not errored or unfinished)."""
        return self.type in ("asha", "bohb")

    def decision_epochs(self, epochs: int) -> list[int]:
        """The epochs before the end at which this scheduler may stop, pause or copy a trial: each trial is
        checkpointed there, so a stopped trial keeps its best weights and a paused or copied one resumes
        from exactly that epoch."""
        if self.type == "asha":
            return asha_rungs(self.grace_period, self.max_t, self.reduction_factor)
        if self.type == "bohb":
            return hyperband_milestones(self.max_t, self.reduction_factor)
        if self.type == "pbt":
            return list(range(self.perturbation_interval, epochs, self.perturbation_interval))
        return []


def parse_scheduler(p: Parser, raw: Any, params: dict[str, Distribution], train_cfg: TrainConfig) -> SchedulerSettings:
    """The `scheduler` section (null: fifo), for the searched `params` and the trials' `train_cfg`."""
    if raw is None:
        return SchedulerSettings()
    if not isinstance(raw, Mapping):
        p.fail(f"scheduler must be a mapping, got {raw!r}")
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in SCHEDULER_KEYS:
        p.fail(f"scheduler.type must be one of {', '.join(SCHEDULER_KEYS)}, got {kind!r}")
    d = p.mapping(raw, "scheduler", SCHEDULER_KEYS[kind])
    if kind == "fifo":
        return SchedulerSettings("fifo")
    if "epochs" in params:
        p.fail(f"params.epochs cannot be searched with scheduler.type {kind} (the scheduler decides how long a trial "
               f"runs): fix epochs" + ("" if kind == "pbt" else " and set scheduler.max_t to it"))
    epochs = train_cfg.epochs
    if kind == "pbt":
        return _pbt(p, d, params, epochs)
    max_t = p.integer(d.get("max_t", epochs), "scheduler.max_t")
    grace = p.integer(d.get("grace_period", 1), "scheduler.grace_period") if kind == "asha" else None
    rf = p.number(d.get("reduction_factor", 4 if kind == "asha" else 3), "scheduler.reduction_factor")
    if grace is not None and grace < 1:
        p.fail(f"scheduler.grace_period must be >= 1, got {grace!r}")
    if grace is not None and max_t < grace:
        p.fail(f"scheduler.max_t must be >= grace_period ({grace}), got {max_t!r}")
    if max_t != epochs:
        p.fail(f"scheduler.max_t must equal the trials' epochs ({epochs}, the last rung is the end of training), got {max_t!r}")
    if rf <= 1:
        p.fail(f"scheduler.reduction_factor must be > 1, got {rf!r}")
    if (problem := resources.count_problem(max_t, 1)) is not None:
        p.fail(f"scheduler.max_t {problem}")
    if resources.rung_count(grace or 1, max_t, rf) > max_t:   # Ray would build that many rungs (or hang on it)
        p.fail(f"scheduler.reduction_factor {rf!r} is too close to 1: it gives more rungs than the {max_t} epochs")
    if kind == "bohb":
        if max_t < rf:
            p.fail(f"scheduler.max_t must be >= reduction_factor ({rf:g}) for HyperBand to have a rung, got {max_t!r}")
        bad = [k for k, dist in params.items() if isinstance(dist, optuna_distributions().IntDistribution) and dist.step != 1]
        if bad:
            p.fail(f"params.{bad[0]}: BOHB's ConfigSpace has no integer step; use step 1 or a choice")
    return SchedulerSettings(kind, max_t, grace, float(rf))


def _pbt(p: Parser, d: Mapping[str, Any], params: dict[str, Distribution], epochs: int) -> SchedulerSettings:
    interval = p.integer(d.get("perturbation_interval", max(1, epochs // 10)), "scheduler.perturbation_interval")
    if not 1 <= interval < epochs:
        p.fail(f"scheduler.perturbation_interval must be in [1, epochs) = [1, {epochs}), got {interval!r}")
    quantile = p.number(d.get("quantile_fraction", 0.25), "scheduler.quantile_fraction")
    if not 0 < quantile <= 0.5:
        p.fail(f"scheduler.quantile_fraction must be in (0, 0.5], got {quantile!r}")
    resample = p.number(d.get("resample_probability", 0.25), "scheduler.resample_probability")
    if not 0 <= resample <= 1:
        p.fail(f"scheduler.resample_probability must be in [0, 1], got {resample!r}")
    raw = d.get("mutations", [k for k in PBT_MUTABLE if k in params])
    if not isinstance(raw, (list, tuple)) or not raw or not all(isinstance(x, str) for x in raw):
        p.fail(f"scheduler.mutations must be a non-empty list of searched parameters among {', '.join(PBT_MUTABLE)}, got {short_repr(raw)}")
    for name_ in raw:
        if name_ not in PBT_MUTABLE:
            p.fail(f"scheduler.mutations: PBT cannot change {short_repr(name_)} in a running trial (allowed: {', '.join(PBT_MUTABLE)})")
        if name_ not in params:
            p.fail(f"scheduler.mutations: {name_} must be a searched parameter (in params), so PBT has a range to explore")
    if len(set(raw)) != len(raw):
        p.fail(f"scheduler.mutations lists a parameter twice: {short_repr(raw)}")
    return SchedulerSettings("pbt", perturbation_interval=interval, quantile_fraction=float(quantile),
                             resample_probability=float(resample), mutations=tuple(raw))


__all__ = ["PBT_KEEP", "PBT_MUTABLE", "SCHEDULER_KEYS", "SchedulerSettings", "parse_scheduler"]
