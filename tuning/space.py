"""Search spaces: YAML files parsed once, at the edge, into typed and already-valid objects; this module assembles them.

    space = load_space("default")                        # search_spaces/default.yaml, or a path to a .yaml file
    space = with_overrides(space, num_samples=4)         # command-line flags, validated like the file
    OptunaSearch(space=space.params, ...)                # Optuna's own distributions, handed over as they are
    tune.Tuner(trainable, param_space=fixed_config(space))   # the fixed values; OptunaSearch adds the sampled ones
    model_cfg, train_cfg = split_trial_config(config, where="trial x")   # inside a trial (tuning.trial_config)

The schema is documented in search_spaces/README.md. A bad file is one `UserError` line that names the
file, the key path and the value, e.g. `search_spaces/x.yaml: params.lr.low must be > 0 for loguniform, got 0.0`.

Each part has its module: finding and strictly reading the file (`tuning.space_yaml`), the searched
parameters (`tuning.distributions`), the `search` and `scheduler` sections (`tuning.search_settings`,
`tuning.scheduler_settings`, whose rung arithmetic is `tuning.hyperband`), a trial's flat config and its
encoding (`tuning.trial_config`), the numbers Ray and Optuna can hold (`tuning.resources`). Here: the
`SearchSpace` they make up, the rules across sections (fixed against params, resources, checkpoints under
PBT), command-line overrides and the way back to YAML.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from multivae.config import from_dict, to_dict
from multivae.data import DatasetConfig
from multivae.errors import UserError, short_repr
from multivae.yamlfile import load_yaml_file
from tuning import resources
from tuning.distributions import Distribution, distribution_to_dict, parse_distribution, probes, representative
from tuning.scheduler_settings import PBT_KEEP, SchedulerSettings, parse_scheduler
from tuning.search_settings import SearchSettings, parse_search
from tuning.space_yaml import Parser, display, locate
from tuning.trial_config import build_configs, decode_value, encode_value, plain_value

SECTIONS = ("description", "dataset", "fixed", "params", "search", "scheduler", "resources", "checkpoint")


def reuse_default(scheduler_type: str) -> bool:
    """`resources.reuse_actors` when the space does not set it: reused worker processes (0.8 CPU s of overhead per trial
    instead of 3.6, bench/ray_overhead.py), except under PBT, where Ray 2.60 loses result rows of trials it
    restores into a reused actor."""
    return scheduler_type != "pbt"


# --- the typed objects --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Resources:
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    # a finished trial's worker process runs the next trial (search_spaces/README.md); the default is true except
    # with pbt (`reuse_default`)
    reuse_actors: bool = True


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
    path, found = locate(str(name_or_path))
    name = name or found
    label = display(path)
    return _parse(load_yaml_file(path, label), source=str(path), label=label, name=name)


def parse_space(data: Any, source: str, *, name: str | None = None) -> SearchSpace:
    """The space described by `data` (a parsed YAML document); errors name `source`."""
    return _parse(data, source=str(source), label=display(source), name=name or Path(str(source)).stem)


# --- the sections together: every rule across them, each failure one line naming file, key path and value --

def _parse(data: Any, *, source: str, label: str, name: str) -> SearchSpace:
    p = Parser(label)
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
    params = {name_: parse_distribution(p, name_, spec) for name_, spec in params_raw.items()}

    # Build the dataclasses once: the fixed values alone, then each parameter at each end (each choice),
    # then everything together, so a rejected value is blamed on the key that holds it.
    build_configs(fixed_raw, where=label, prefix="fixed")
    for pname, dist in params.items():
        for probe, value in probes(pname, dist):
            build_configs({**fixed_raw, pname: value}, where=f"{label}: params.{pname}.{probe}")
    model_cfg, train_cfg = build_configs({**fixed_raw, **{k: representative(k, d) for k, d in params.items()}},
                                         where=f"{label}: params (every parameter at its midpoint or first choice)")
    built = {**dataclasses.asdict(model_cfg), **dataclasses.asdict(train_cfg)}
    fixed = {k: built[k] for k in fixed_raw}

    search = parse_search(p, data.get("search"), params, train_cfg)
    scheduler = parse_scheduler(p, data.get("scheduler"), params, train_cfg)
    res = p.mapping(data.get("resources"), "resources", ("cpus_per_trial", "gpus_per_trial", "reuse_actors"))
    reuse = res.get("reuse_actors", reuse_default(scheduler.type))
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
        raise UserError(f"{display(space.source)}: resources.gpus_per_trial is {gpus:g} but {available_gpus:g} GPUs are "
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
    return _parse(data, source=space.source, label=f"{display(space.source)} with {flags}", name=space.name)


def space_to_yaml(space: SearchSpace) -> str:
    """The space as a YAML document of the schema (what `load_space` reads back)."""
    import yaml

    from multivae.files import jsonable

    return yaml.safe_dump(jsonable(space_to_dict(space)), sort_keys=False)


def space_to_dict(space: SearchSpace) -> dict[str, Any]:
    """The space in the YAML schema (`parse_space(space_to_dict(s), s.source) == s`)."""
    search = dataclasses.asdict(space.search)
    search["points_to_evaluate"] = [{k: plain_value(decode_value(k, v)) for k, v in pt.items()}
                                    for pt in space.search.points_to_evaluate]
    return {
        "description": space.description,
        "dataset": to_dict(space.dataset),
        "fixed": {k: plain_value(v) for k, v in space.fixed.items()},
        "params": {k: distribution_to_dict(k, d) for k, d in space.params.items()},
        "search": search,
        "scheduler": {k: v for k, v in dataclasses.asdict(space.scheduler).items() if v is not None},
        "resources": dataclasses.asdict(space.resources),
        "checkpoint": dataclasses.asdict(space.checkpoint),
    }


__all__ = [
    "SECTIONS", "CheckpointSettings", "Resources", "SearchSpace", "fixed_config", "load_space", "parse_space",
    "reuse_default", "space_to_dict", "space_to_yaml", "validate_resources", "with_overrides",
]
