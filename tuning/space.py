"""Search spaces: YAML files parsed once, at the edge, into typed and already-valid objects.

    space = load_space("default")                        # search_spaces/default.yaml, or a path to a .yaml file
    space = with_overrides(space, num_samples=4)         # command-line flags, validated like the file
    OptunaSearch(space=space.params, ...)                # Optuna's own distributions, handed over as they are
    tune.Tuner(trainable, param_space=fixed_config(space))   # the fixed values; OptunaSearch adds the sampled ones
    model_cfg, train_cfg = split_trial_config(config, where="trial x")   # inside a trial

The schema is documented in search_spaces/README.md. A bad file is one `UserError` line that names the
file, the key path and the value, e.g. `search_spaces/x.yaml: params.lr.low must be > 0 for loguniform, got 0.0`.

List-valued choices (`hidden_dims: {type: choice, values: [[600], [600, 300]]}`) reach the searcher as
their JSON text ("[600]", "[600, 300]"), because Optuna's categorical values must be None, bool, int, float
or str. Fixed list values (`fixed: {hidden_dims: [600]}`) are encoded the same way, so a trial's config is
flat scalars. `space.params`, `fixed_config` and `space.search.points_to_evaluate` hold the encoded form;
`split_trial_config` decodes it back into the tuple the dataclasses expect.

Neither Ray nor Optuna is imported here at module level (Optuna's distributions are imported when a space is
parsed): a trial's worker, which only decodes its config, imports neither.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, NoReturn, Union, get_args, get_origin, get_type_hints


from multivae.config import from_dict, to_dict
from multivae.data import DatasetConfig
from multivae.errors import UserError, one_line, short_repr
from multivae.yamlfile import load_yaml_file
from multivae.metrics import FROM_HITS, parse_metric
from multivae.model import ModelConfig
from multivae.training import TrainConfig
from tuning import resources

SPACES_DIR = Path(importlib.util.find_spec("search_spaces").origin).resolve().parent   # shipped with the package

SECTIONS = ("description", "dataset", "fixed", "params", "search", "scheduler", "resources", "checkpoint")
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
TRIAL_FIELDS = MODEL_FIELDS + TRAIN_FIELDS
# TrainConfig fields that the trainable sets from the resources Tune gives the trial: a value in the space
# would be silently replaced, so it is refused.
SET_BY_TRIAL = {"device": "resources.gpus_per_trial", "threads": "resources.cpus_per_trial"}
SPACE_FIELDS = tuple(f for f in TRIAL_FIELDS if f not in SET_BY_TRIAL)
_FIELD_TYPES: dict[str, Any] = {**get_type_hints(ModelConfig), **get_type_hints(TrainConfig)}

DISTRIBUTION_KEYS = {
    "uniform": ("type", "low", "high"),
    "loguniform": ("type", "low", "high"),
    "int": ("type", "low", "high", "step", "log"),
    "choice": ("type", "values"),
}
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
PBT_KEEP = 4   # checkpoints kept per trial under PBT unless checkpoint.keep says otherwise (see _parse)
HIGHER_IS_BETTER = tuple(FROM_HITS)   # every validation metric the trials report (ndcg, recall, recall_n, precision, hit)
OBJECTIVES = ("best", "last")   # search.objective: a trial's best epoch's value (the model it keeps), or its last


# --- the typed objects --------------------------------------------------------------------------------

# A searched parameter is one of Optuna's distributions, which check themselves on construction:
# FloatDistribution (uniform, loguniform), IntDistribution (int) and CategoricalDistribution (choice, list
# values as their JSON text, see the module doc). They go to OptunaSearch as they are.
Distribution = Any   # optuna.distributions.BaseDistribution; Optuna is imported only where one is built


def _od():
    """optuna.distributions, imported on first use (a trial's worker never needs it)."""
    import optuna.distributions

    return optuna.distributions


def choice_values(name: str, dist: Distribution) -> tuple:
    """A categorical's values as the dataclasses take them (list values as tuples)."""
    return tuple(tuple(v) if isinstance(v, list) else v for v in (decode_value(name, c) for c in dist.choices))


@dataclass(frozen=True)
class SearchSettings:
    num_samples: int = 10
    max_concurrent: int = 1
    seed: int | None = 0                       # the TPE sampler's seed (None: not reproducible)
    metric: str = "ndcg@100"
    mode: str = "max"
    points_to_evaluate: tuple[dict, ...] = ()  # searcher-space values: list choices encoded (see the module doc)
    objective: str = "best"                    # what Optuna is told of a trial: its best epoch's value, or its last


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


@dataclass(frozen=True)
class Resources:
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    reuse_actors: bool = False   # true: a finished trial's worker process runs the next trial (see search_spaces/README.md)


@dataclass(frozen=True)
class CheckpointSettings:
    every: int = 1   # checkpoint every N epochs (and always at the end)
    keep: int = 2    # keep the K latest checkpoints of a trial


@dataclass(frozen=True)
class SearchSpace:
    name: str
    source: str                              # the file it was read from (absolute path), or what the caller named
    description: str
    dataset: DatasetConfig
    fixed: dict[str, Any]                    # field -> value as the dataclasses take it (tuples for lists)
    params: dict[str, Distribution]          # field -> Optuna distribution, in the file's order
    search: SearchSettings = field(default_factory=SearchSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    resources: Resources = field(default_factory=Resources)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)


# --- loading ------------------------------------------------------------------------------------------

def load_space(name_or_path: str, *, name: str | None = None) -> SearchSpace:
    """A space by name (`smoke`, `ablations/likelihood`: a file in search_spaces/) or by path to a .yaml file.

    `name`: the space's name when it is not the file's (a copy of `smoke.yaml` read back under another name)."""
    path, found = _locate(str(name_or_path))
    name = name or found
    label = _display(path)
    return _parse(load_yaml_file(path, label), source=str(path), label=label, name=name)


def parse_space(data: Any, source: str, *, name: str | None = None) -> SearchSpace:
    """The space described by `data` (a parsed YAML document); errors name `source`."""
    return _parse(data, source=str(source), label=_display(source), name=name or Path(str(source)).stem)


def available_spaces() -> list[str]:
    """The names `load_space` finds in search_spaces/."""
    return sorted(p.relative_to(SPACES_DIR).with_suffix("").as_posix() for p in SPACES_DIR.rglob("*.yaml"))


def _locate(arg: str) -> tuple[Path, str]:
    path = Path(arg).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise UserError(f"{arg}: no such search space file")
        return path.resolve(), path.stem
    named = (SPACES_DIR / f"{arg}.yaml").resolve()
    if named.is_relative_to(SPACES_DIR) and named.is_file():
        return named, arg
    if path.is_file():
        return path.resolve(), path.stem
    raise UserError(f"unknown search space {arg!r}: not a file, and not a name in {_display(SPACES_DIR)}/ "
                    f"(available: {', '.join(available_spaces()) or 'none'})")


def _display(path: str | Path) -> str:
    """`path` relative to the working directory when it is below it (as a user would type it)."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except (ValueError, OSError):
        return str(path)


# --- the parser: every rule, each failure one line naming file, key path and value ----------------------

class _Parser:
    def __init__(self, label: str) -> None:
        self.label = label

    def fail(self, message: str) -> NoReturn:
        raise UserError(f"{self.label}: {message}")

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...]) -> dict:
        """A mapping (null: empty) with only `allowed` keys."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(f"{path} must be a mapping, got {value!r}")
        for key in value:
            if key not in allowed:
                self.fail(f"unknown key {_join(path, key)!r} (allowed: {', '.join(allowed)})")
        return dict(value)

    def trial_fields(self, value: Any, section: str) -> dict:
        """`fixed` and `params`: a mapping (null: empty) keyed by ModelConfig and TrainConfig fields."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(f"{section} must be a mapping, got {value!r}")
        for key in value:
            if key in SET_BY_TRIAL:
                self.fail(f"{section}.{key} cannot be set in a search space: the trial sets it from {SET_BY_TRIAL[key]}")
            if key not in SPACE_FIELDS:
                self.fail(f"unknown key '{section}.{key}': not a ModelConfig or TrainConfig field (allowed: {', '.join(SPACE_FIELDS)})")
        return dict(value)

    def number(self, value: Any, path: str) -> int | float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(f"{path} must be a number, got {value!r}{_yaml_hint(value)}")
        return value

    def integer(self, value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(f"{path} must be an integer, got {value!r}{_yaml_hint(value)}")
        return value

    def required(self, spec: Mapping, key: str, path: str, what: str) -> Any:
        if key not in spec:
            self.fail(f"{path}.{key} is required for {what}")
        return spec[key]

    # --- params ---

    def distribution(self, name: str, spec: Any) -> Distribution:
        path = f"params.{name}"
        if not isinstance(spec, Mapping):
            self.fail(f"{path} must be a mapping like {{type: uniform, low: 0.0, high: 1.0}}, got {spec!r}")
        if "type" not in spec:
            self.fail(f"{path}.type is required (one of {', '.join(DISTRIBUTION_KEYS)})")
        kind = spec["type"]
        if not isinstance(kind, str) or kind not in DISTRIBUTION_KEYS:
            self.fail(f"{path}.type must be one of {', '.join(DISTRIBUTION_KEYS)}, got {kind!r}")
        spec = self.mapping(spec, path, DISTRIBUTION_KEYS[kind])
        options = _options(name)
        fits = {"uniform": float in options, "loguniform": float in options, "int": int in options or float in options}
        if not fits.get(kind, True):
            self.fail(f"{path}.type must be {'int or choice' if int in options else 'choice'} for {name}, got {kind!r}")
        if kind in ("uniform", "loguniform"):
            low = float(self.number(self.required(spec, "low", path, kind), f"{path}.low"))
            high = float(self.number(self.required(spec, "high", path, kind), f"{path}.high"))
            if not low < high:
                self.fail(f"{path}.low must be < high for {kind}, got low={low!r}, high={high!r}")
            if not math.isfinite(high - low):   # a sampler draws low + u * (high - low)
                self.fail(f"{path}: high - low must be a finite number, got low={low!r}, high={high!r}")
            if kind == "loguniform":
                if low <= 0:
                    self.fail(f"{path}.low must be > 0 for loguniform, got {low!r}")
                return _od().FloatDistribution(low, high, log=True)
            return _od().FloatDistribution(low, high)
        if kind == "int":
            low = self.integer(self.required(spec, "low", path, kind), f"{path}.low")
            high = self.integer(self.required(spec, "high", path, kind), f"{path}.high")
            step = self.integer(spec.get("step", 1), f"{path}.step")
            log = spec.get("log", False)
            if not isinstance(log, bool):
                self.fail(f"{path}.log must be true or false, got {log!r}")
            if low > high:
                self.fail(f"{path}.low must be <= high, got low={low!r}, high={high!r}")
            if step < 1:
                self.fail(f"{path}.step must be >= 1, got {step!r}")
            if log and step != 1:
                self.fail(f"{path}.step must be 1 with log: true (Optuna cannot combine them), got {step!r}")
            if log and low < 1:
                self.fail(f"{path}.low must be >= 1 with log: true, got {low!r}")
            if (high - low) % step:
                self.fail(f"{path}.high must be low plus a multiple of step ({low} + k * {step}), got {high!r}")
            for key, v in (("low", low), ("high", high), ("step", step)):
                if abs(v) > resources.MAX_EXACT_INT:   # Optuna holds the value as a float
                    self.fail(f"{path}.{key} must be within ±2**53 (Optuna keeps integers as floats), got {v!r}")
            return _od().IntDistribution(low, high, log=log, step=step)
        values = self.required(spec, "values", path, kind)
        if not isinstance(values, list) or not values:
            self.fail(f"{path}.values must be a non-empty list, got {values!r}")
        out: list[Any] = []
        for i, v in enumerate(values):
            vpath = f"{path}.values[{i}]"
            if not _is_choice_value(v):
                self.fail(f"{vpath} must be null, a bool, a number, a string or a list of those, got {v!r}")
            self.no_number_text(name, v, vpath)
            if isinstance(v, str) and _is_sequence_field(name):   # text would pass for its JSON encoding: refuse it
                _build({name: v}, where=f"{self.label}: {vpath}")
            v = tuple(v) if isinstance(v, list) else v
            if any(_same(v, seen) for seen in out):
                self.fail(f"{vpath} repeats an earlier value, got {_plain(v)!r}")
            out.append(v)
        return _od().CategoricalDistribution([encode_value(v) for v in out])

    def no_number_text(self, name: str, value: Any, path: str) -> None:
        """`1e-4` is text in YAML 1.1: say so where the field takes no text."""
        if isinstance(value, str) and _yaml_hint(value) and not _takes_text(name):
            self.fail(f"{path} must be a number, got {value!r}{_yaml_hint(value)}")

    # --- points to evaluate ---

    def point(self, i: int, point: Any, params: dict[str, Distribution]) -> dict:
        path = f"search.points_to_evaluate[{i}]"
        if not isinstance(point, Mapping):
            self.fail(f"{path} must be a mapping of searched parameters to values, got {point!r}")
        for key in point:
            if key not in params:
                self.fail(f"{_join(path, key)} is not a searched parameter (searched: {', '.join(params)})")
        missing = [k for k in params if k not in point]
        if missing:
            self.fail(f"{path} must give every searched parameter (Tune's OptunaSearch requires it); missing: {', '.join(missing)}")
        return {name: self.point_value(f"{path}.{name}", name, point[name], dist) for name, dist in params.items()}

    def point_value(self, path: str, name: str, value: Any, dist: Distribution) -> Any:
        if isinstance(dist, _od().CategoricalDistribution):
            v = tuple(value) if isinstance(value, list) else value
            for candidate in choice_values(name, dist):
                if _same(v, candidate):
                    return encode_value(candidate)
            self.fail(f"{path} must be one of {[_plain(c) for c in choice_values(name, dist)]}, got {value!r}")
        if isinstance(dist, _od().IntDistribution):
            v = self.integer(value, path)
            if not dist.low <= v <= dist.high or (v - dist.low) % dist.step:
                grid = f" on the grid of step {dist.step}" if dist.step > 1 else ""
                self.fail(f"{path} must be an integer in [{dist.low}, {dist.high}]{grid}, got {value!r}")
            return v
        v = float(self.number(value, path))
        if not dist.low <= v <= dist.high:
            self.fail(f"{path} must be in [{dist.low!r}, {dist.high!r}], got {value!r}")
        return v


def _parse(data: Any, *, source: str, label: str, name: str) -> SearchSpace:
    p = _Parser(label)
    if not isinstance(data, Mapping):
        p.fail(f"the top level must be a mapping of sections ({', '.join(SECTIONS)}), got {data!r}")
    data = p.mapping(data, "", SECTIONS)

    description = "" if data.get("description") is None else data["description"]
    if not isinstance(description, str):
        p.fail(f"description must be text, got {description!r}")

    dataset = from_dict(DatasetConfig, data.get("dataset"), where=label, prefix="dataset")

    fixed_raw = p.trial_fields(data.get("fixed"), "fixed")
    for key, value in fixed_raw.items():
        p.no_number_text(key, value, f"fixed.{key}")

    params_raw = data.get("params")
    if params_raw is None or (isinstance(params_raw, Mapping) and not params_raw):
        p.fail("params must name at least one searched parameter")
    params_raw = p.trial_fields(params_raw, "params")
    both = [k for k in params_raw if k in fixed_raw]
    if both:
        p.fail(f"params.{both[0]} is also in fixed (fixed.{both[0]} = {fixed_raw[both[0]]!r}): give it in one of them")
    params = {name_: p.distribution(name_, spec) for name_, spec in params_raw.items()}

    # Build the dataclasses once: the fixed values alone, then each parameter at each end (each choice),
    # then everything together, so a rejected value is blamed on the key that holds it.
    _build(fixed_raw, where=label, prefix="fixed")
    for pname, dist in params.items():
        for probe, value in _probes(pname, dist):
            _build({**fixed_raw, pname: value}, where=f"{label}: params.{pname}.{probe}")
    model_cfg, train_cfg = _build({**fixed_raw, **{k: representative(k, d) for k, d in params.items()}},
                                  where=f"{label}: params (every parameter at its midpoint or first choice)")
    built = {**dataclasses.asdict(model_cfg), **dataclasses.asdict(train_cfg)}
    fixed = {k: built[k] for k in fixed_raw}

    search = _search(p, data.get("search"), params, train_cfg)
    scheduler = _scheduler(p, data.get("scheduler"), params, train_cfg)
    res = p.mapping(data.get("resources"), "resources", ("cpus_per_trial", "gpus_per_trial", "reuse_actors"))
    reuse = res.get("reuse_actors", Resources.reuse_actors)
    if not isinstance(reuse, bool):
        p.fail(f"resources.reuse_actors must be true or false, got {short_repr(reuse)}")
    if reuse and scheduler.type == "pbt":   # measured with Ray 2.60: exploited trials lose result rows
        p.fail("resources.reuse_actors must be false with scheduler.type pbt (Ray 2.60 loses result rows of trials "
               "that PBT restores into a reused actor)")
    cpus = p.number(res.get("cpus_per_trial", Resources.cpus_per_trial), "resources.cpus_per_trial")
    gpus = p.number(res.get("gpus_per_trial", Resources.gpus_per_trial), "resources.gpus_per_trial")
    if cpus <= 0:
        p.fail(f"resources.cpus_per_trial must be > 0, got {cpus!r}")
    for key, value in (("cpus_per_trial", cpus), ("gpus_per_trial", gpus)):
        if (problem := resources.amount_problem(value)) is not None:
            p.fail(f"resources.{key} {problem}")
    ck = p.mapping(data.get("checkpoint"), "checkpoint", ("every", "keep"))
    pbt = scheduler.perturbation_interval if scheduler.type == "pbt" else None
    every = p.integer(ck.get("every", pbt or CheckpointSettings.every), "checkpoint.every")
    keep = p.integer(ck.get("keep", PBT_KEEP if pbt else CheckpointSettings.keep), "checkpoint.keep")
    for key, value in (("every", every), ("keep", keep)):
        if (problem := resources.count_problem(value, 1)) is not None:
            p.fail(f"checkpoint.{key} {problem}")
    # PBT copies a trial's checkpoint of its last perturbation; the copying trial may start only after the
    # copied one trained on. Checkpointing at the perturbations alone and keeping PBT_KEEP of them keeps that
    # checkpoint there for PBT_KEEP - 1 more perturbation intervals (one in between would push it out sooner).
    if pbt and every != pbt:
        p.fail(f"checkpoint.every must equal scheduler.perturbation_interval ({pbt}) with scheduler.type pbt, got {every!r}")
    if pbt and keep < 3:
        p.fail(f"checkpoint.keep must be >= 3 with scheduler.type pbt (the copied checkpoint must outlive the next ones), got {keep!r}")

    return SearchSpace(name=name, source=source, description=description.strip(), dataset=dataset, fixed=fixed,
                       params=params, search=search, scheduler=scheduler, resources=Resources(cpus, gpus, reuse),
                       checkpoint=CheckpointSettings(every, keep))


def _search(p: _Parser, raw: Any, params: dict[str, Distribution], train_cfg: TrainConfig) -> SearchSettings:
    d = p.mapping(raw, "search", tuple(f.name for f in dataclasses.fields(SearchSettings)))
    default = SearchSettings()
    num_samples = p.integer(d.get("num_samples", default.num_samples), "search.num_samples")
    max_concurrent = p.integer(d.get("max_concurrent", default.max_concurrent), "search.max_concurrent")
    for key, value in (("num_samples", num_samples), ("max_concurrent", max_concurrent)):
        if (problem := resources.count_problem(value, 1)) is not None:
            p.fail(f"search.{key} {problem}")
    seed = d.get("seed", default.seed)
    if seed is not None and (p.integer(seed, "search.seed") < 0 or seed >= 2**32):
        p.fail(f"search.seed must be an integer in [0, 2**32) or null, got {seed!r}")
    metric = d.get("metric", default.metric)
    if metric not in train_cfg.metrics:
        p.fail(f"search.metric must be one of the validation metrics the trials report ({', '.join(train_cfg.metrics)}), "
               f"got {metric!r}")
    mode = d.get("mode", default.mode)
    if mode not in ("min", "max"):
        p.fail(f"search.mode must be 'min' or 'max', got {mode!r}")
    if mode == "min" and parse_metric(metric)[0] in HIGHER_IS_BETTER:
        p.fail(f"search.mode must be 'max' for {metric} (higher is better), got 'min'")
    points = d.get("points_to_evaluate") or []
    if not isinstance(points, list):
        p.fail(f"search.points_to_evaluate must be a list of mappings, got {points!r}")
    encoded = tuple(p.point(i, point, params) for i, point in enumerate(points))
    objective = d.get("objective", default.objective)
    if objective not in OBJECTIVES:
        p.fail(f"search.objective must be one of {', '.join(OBJECTIVES)}, got {short_repr(objective)}")
    return SearchSettings(num_samples, max_concurrent, seed, metric, mode, encoded, objective)


def _scheduler(p: _Parser, raw: Any, params: dict[str, Distribution], train_cfg: TrainConfig) -> SchedulerSettings:
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
        bad = [k for k, dist in params.items() if isinstance(dist, _od().IntDistribution) and dist.step != 1]
        if bad:
            p.fail(f"params.{bad[0]}: BOHB's ConfigSpace has no integer step; use step 1 or a choice")
    return SchedulerSettings(kind, max_t, grace, float(rf))


def _pbt(p: _Parser, d: Mapping[str, Any], params: dict[str, Distribution], epochs: int) -> SchedulerSettings:
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


def asha_rungs(grace_period: int, max_t: int, reduction_factor: float) -> list[int]:
    """The epochs before max_t at which ASHA may stop a trial: its milestones grace * rf^k, computed as Ray's
    `_Bracket` does, each reached at the first epoch >= it.

    A trial is checkpointed at each of them, so a trial stopped there keeps its best weights."""
    n_rungs = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    milestones = (grace_period * reduction_factor ** k for k in range(n_rungs))
    return sorted({math.ceil(m) for m in milestones if m < max_t})


def hyperband_milestones(max_t: int, reduction_factor: float) -> list[int]:
    """The epochs before max_t at which HyperBand (BOHB's scheduler) pauses or stops a trial: in each bracket
    s, r0 = int(max_t * rf^-s), then r = int(min(r * rf, max_t)) until max_t, as Ray's `HyperBandScheduler`
    and its `_Bracket.successive_halving` compute them."""
    s_max_1 = int(round(math.log(max_t) / math.log(reduction_factor))) + 1
    found: set[int] = set()
    for s in range(s_max_1):
        r = int(max_t * reduction_factor ** (-s))
        while 0 < r < max_t:
            found.add(r)
            r = int(min(r * reduction_factor, max_t))
    return sorted(found)


# --- values, probes, the dataclasses --------------------------------------------------------------------

def _build(config: Mapping[str, Any], where: str, prefix: str = "") -> tuple[ModelConfig, TrainConfig]:
    model = {k: v for k, v in config.items() if k in MODEL_FIELDS}
    train = {k: v for k, v in config.items() if k in TRAIN_FIELDS}
    return from_dict(ModelConfig, model, where=where, prefix=prefix), from_dict(TrainConfig, train, where=where, prefix=prefix)


def representative(name: str, dist: Distribution) -> Any:
    """The value the checks build the dataclasses with: the midpoint (geometric on a log scale), or the first choice."""
    od = _od()
    if isinstance(dist, od.CategoricalDistribution):
        return choice_values(name, dist)[0]
    if isinstance(dist, od.IntDistribution):
        if dist.log:
            return min(dist.high, max(dist.low, round(math.sqrt(dist.low * dist.high))))
        return dist.low + dist.step * ((dist.high - dist.low) // dist.step // 2)
    return math.sqrt(dist.low * dist.high) if dist.log else (dist.low + dist.high) / 2


def _probes(name: str, dist: Distribution) -> list[tuple[str, Any]]:
    if isinstance(dist, _od().CategoricalDistribution):
        return [(f"values[{i}]", v) for i, v in enumerate(choice_values(name, dist))]
    return [("low", dist.low), ("high", dist.high)]


def encode_value(value: Any) -> Any:
    """A value as the searcher sees it: lists (tuples) become their JSON text, "[600, 300]"."""
    if isinstance(value, (list, tuple)):
        return json.dumps([_plain(v) for v in value])
    return value


def decode_value(name: str, value: Any, where: str = "trial config") -> Any:
    """The inverse of `encode_value` for field `name`: JSON text becomes a list where the field is a sequence."""
    if not (_is_sequence_field(name) and isinstance(value, str)):
        return value
    try:
        decoded = json.loads(value)
    except ValueError:
        decoded = None
    if not isinstance(decoded, list):
        raise UserError(f"{where}: {name} must be a list or its JSON text like '[600, 200]', got {value!r}")
    return decoded


def plain_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's config with numpy scalars (what TuneBOHB's ConfigSpace samples: np.int64, np.str_) as the
    Python values the dataclasses and the logs take."""
    return {k: (v.item() if type(v).__module__ == "numpy" and hasattr(v, "item") else v) for k, v in config.items()}


def split_trial_config(config: Mapping[str, Any], where: str) -> tuple[ModelConfig, TrainConfig]:
    """A trial's flat config (fixed + sampled values, list choices encoded) as (ModelConfig, TrainConfig)."""
    config = plain_config(config)
    unknown = [k for k in config if k not in TRIAL_FIELDS]
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(TRIAL_FIELDS)})")
    return _build({k: decode_value(k, v, where) for k, v in config.items()}, where=where)


def _options(name: str) -> tuple:
    """The types field `name` accepts (the members of a union)."""
    tp = _FIELD_TYPES.get(name)
    return get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)


def _is_sequence_field(name: str) -> bool:
    return any(get_origin(t) in (tuple, list) for t in _options(name))


def _takes_text(name: str) -> bool:
    return any(t is str or get_origin(t) is Literal for t in _options(name))


def _is_choice_value(v: Any) -> bool:
    scalar = (type(None), bool, int, float, str)
    return isinstance(v, scalar) or (isinstance(v, list) and all(isinstance(x, scalar) for x in v))


def _same(a: Any, b: Any) -> bool:
    """Equal as configuration values: 0 == 0.0, but True != 1 and [600] == (600,)."""
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b)
                and all(_same(x, y) for x, y in zip(a, b)))
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def _plain(v: Any) -> Any:
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


_NUMBER_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _yaml_hint(value: Any) -> str:
    """PyYAML follows YAML 1.1, where `1e-4` (no dot) is text: say so when a number was meant."""
    if isinstance(value, str) and _NUMBER_TEXT.fullmatch(value.strip()):
        return " (YAML reads a number like 1e-4 as text: write 1.0e-4)"
    return ""


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


# --- for the searcher -----------------------------------------------------------------------------------

def fixed_config(space: SearchSpace) -> dict[str, Any]:
    """The fixed values as a trial's config holds them (lists as their JSON text): Tune's `param_space`, to
    which OptunaSearch adds each trial's sampled `space.params`."""
    return {k: encode_value(v) for k, v in space.fixed.items()}


# --- after parsing: resources, command-line overrides, back to the YAML form ----------------------------

def validate_resources(space: SearchSpace, available_gpus: float | None) -> None:
    """Refuse a GPU request the machine cannot meet (`available_gpus=None`: unknown, not checked)."""
    gpus = space.resources.gpus_per_trial
    if available_gpus is not None and gpus > available_gpus:
        raise UserError(f"{_display(space.source)}: resources.gpus_per_trial is {gpus:g} but {available_gpus:g} GPUs are "
                        f"available (pass --gpus-per-trial 0, or join a cluster with GPUs)")


OVERRIDES = {   # with_overrides keyword -> (section, key)
    "dataset": ("dataset", "name"),
    "data_dir": ("dataset", "data_dir"),
    "num_samples": ("search", "num_samples"),
    "max_concurrent": ("search", "max_concurrent"),
    "seed": ("search", "seed"),
    "cpus_per_trial": ("resources", "cpus_per_trial"),
    "gpus_per_trial": ("resources", "gpus_per_trial"),
}


def with_overrides(space: SearchSpace, **overrides: Any) -> SearchSpace:
    """`space` with command-line values (None: not given) replacing the file's, checked by the same rules."""
    unknown = [k for k in overrides if k not in OVERRIDES]
    if unknown:
        raise TypeError(f"with_overrides: unknown override {unknown[0]!r} (allowed: {', '.join(OVERRIDES)})")
    given = {k: v for k, v in overrides.items() if v is not None}
    if not given:
        return space
    data = space_to_dict(space)
    for key, value in given.items():
        section, field_name = OVERRIDES[key]
        data[section][field_name] = value
    if data["dataset"]["name"] != "file":
        data["dataset"]["path"] = None
    flags = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in given.items())
    return _parse(data, source=space.source, label=f"{_display(space.source)} with {flags}", name=space.name)


def space_to_yaml(space: SearchSpace) -> str:
    """The space as a YAML document of the schema (what `load_space` reads back)."""
    import yaml

    from multivae.files import jsonable

    return yaml.safe_dump(jsonable(space_to_dict(space)), sort_keys=False)


def space_to_dict(space: SearchSpace) -> dict[str, Any]:
    """The space in the YAML schema (`parse_space(space_to_dict(s), s.source) == s`)."""
    def dist(name: str, d: Distribution) -> dict[str, Any]:
        od = _od()
        if isinstance(d, od.CategoricalDistribution):
            return {"type": "choice", "values": [_plain(v) for v in choice_values(name, d)]}
        if isinstance(d, od.IntDistribution):
            return {"type": "int", "low": d.low, "high": d.high, "step": d.step, "log": d.log}
        return {"type": "loguniform" if d.log else "uniform", "low": d.low, "high": d.high}

    search = dataclasses.asdict(space.search)
    search["points_to_evaluate"] = [{k: _plain(decode_value(k, v)) for k, v in pt.items()}
                                    for pt in space.search.points_to_evaluate]
    return {
        "description": space.description,
        "dataset": to_dict(space.dataset),
        "fixed": {k: _plain(v) for k, v in space.fixed.items()},
        "params": {k: dist(k, d) for k, d in space.params.items()},
        "search": search,
        "scheduler": {k: v for k, v in dataclasses.asdict(space.scheduler).items() if v is not None},
        "resources": dataclasses.asdict(space.resources),
        "checkpoint": dataclasses.asdict(space.checkpoint),
    }


__all__ = [
    "SPACES_DIR", "CheckpointSettings", "Distribution", "Resources", "SchedulerSettings", "SearchSettings",
    "SearchSpace", "asha_rungs", "hyperband_milestones", "available_spaces", "choice_values", "decode_value", "fixed_config",
    "encode_value", "load_space", "parse_space", "plain_config", "representative", "space_to_dict", "space_to_yaml", "split_trial_config",
    "validate_resources", "with_overrides",
]
