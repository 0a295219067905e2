"""The searched parameters: Optuna distributions parsed from `params`, their values checked, encoded and written back.

A searched parameter is one of Optuna's distributions, which check themselves on construction:
FloatDistribution (uniform, loguniform), IntDistribution (int) and CategoricalDistribution (choice, list
values as their JSON text, see `tuning.trial_config`). They go to OptunaSearch as they are.

Optuna is imported on first use (`optuna_distributions`), not at module level: a trial's worker never needs it.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from tuning import resources
from tuning.space_yaml import Parser
from tuning.trial_config import build_configs, decode_value, encode_value, field_options, is_sequence_field, plain_value, same_value

DISTRIBUTION_KEYS = {
    "uniform": ("type", "low", "high"),
    "loguniform": ("type", "low", "high"),
    "int": ("type", "low", "high", "step", "log"),
    "choice": ("type", "values"),
}

Distribution = Any   # optuna.distributions.BaseDistribution; Optuna is imported only where one is built


def optuna_distributions():
    """optuna.distributions, imported on first use (a trial's worker never needs it)."""
    import optuna.distributions

    return optuna.distributions


def choice_values(name: str, dist: Distribution) -> tuple:
    """A categorical's values as the dataclasses take them (list values as tuples)."""
    return tuple(tuple(v) if isinstance(v, list) else v for v in (decode_value(name, c) for c in dist.choices))


def parse_distribution(p: Parser, name: str, spec: Any) -> Distribution:
    """`params.<name>` as an Optuna distribution; a bad spec is one line naming its key path."""
    path = f"params.{name}"
    if not isinstance(spec, Mapping):
        p.fail(f"{path} must be a mapping like {{type: uniform, low: 0.0, high: 1.0}}, got {spec!r}")
    if "type" not in spec:
        p.fail(f"{path}.type is required (one of {', '.join(DISTRIBUTION_KEYS)})")
    kind = spec["type"]
    if not isinstance(kind, str) or kind not in DISTRIBUTION_KEYS:
        p.fail(f"{path}.type must be one of {', '.join(DISTRIBUTION_KEYS)}, got {kind!r}")
    spec = p.mapping(spec, path, DISTRIBUTION_KEYS[kind])
    options = field_options(name)
    fits = {"uniform": float in options, "loguniform": float in options, "int": int in options or float in options}
    if not fits.get(kind, True):
        p.fail(f"{path}.type must be {'int or choice' if int in options else 'choice'} for {name}, got {kind!r}")
    if kind in ("uniform", "loguniform"):
        low = float(p.number(p.required(spec, "low", path, kind), f"{path}.low"))
        high = float(p.number(p.required(spec, "high", path, kind), f"{path}.high"))
        if not low < high:
            p.fail(f"{path}.low must be < high for {kind}, got low={low!r}, high={high!r}")
        if not math.isfinite(high - low):   # a sampler draws low + u * (high - low)
            p.fail(f"{path}: high - low must be a finite number, got low={low!r}, high={high!r}")
        if kind == "loguniform":
            if low <= 0:
                p.fail(f"{path}.low must be > 0 for loguniform, got {low!r}")
            return optuna_distributions().FloatDistribution(low, high, log=True)
        return optuna_distributions().FloatDistribution(low, high)
    if kind == "int":
        low = p.integer(p.required(spec, "low", path, kind), f"{path}.low")
        high = p.integer(p.required(spec, "high", path, kind), f"{path}.high")
        step = p.integer(spec.get("step", 1), f"{path}.step")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            p.fail(f"{path}.log must be true or false, got {log!r}")
        if low > high:
            p.fail(f"{path}.low must be <= high, got low={low!r}, high={high!r}")
        if step < 1:
            p.fail(f"{path}.step must be >= 1, got {step!r}")
        if log and step != 1:
            p.fail(f"{path}.step must be 1 with log: true (Optuna cannot combine them), got {step!r}")
        if log and low < 1:
            p.fail(f"{path}.low must be >= 1 with log: true, got {low!r}")
        if (high - low) % step:
            p.fail(f"{path}.high must be low plus a multiple of step ({low} + k * {step}), got {high!r}")
        for key, v in (("low", low), ("high", high), ("step", step)):
            if abs(v) > resources.MAX_EXACT_INT:   # Optuna holds the value as a float
                p.fail(f"{path}.{key} must be within ±2**53 (Optuna keeps integers as floats), got {v!r}")
        return optuna_distributions().IntDistribution(low, high, log=log, step=step)
    values = p.required(spec, "values", path, kind)
    if not isinstance(values, list) or not values:
        p.fail(f"{path}.values must be a non-empty list, got {values!r}")
    out: list[Any] = []
    for i, v in enumerate(values):
        vpath = f"{path}.values[{i}]"
        if not _is_choice_value(v):
            p.fail(f"{vpath} must be null, a bool, a number, a string or a list of those, got {v!r}")
        p.no_number_text(name, v, vpath)
        if isinstance(v, str) and is_sequence_field(name):   # text would pass for its JSON encoding: refuse it
            build_configs({name: v}, where=f"{p.label}: {vpath}")
        v = tuple(v) if isinstance(v, list) else v
        if any(same_value(v, seen) for seen in out):
            p.fail(f"{vpath} repeats an earlier value, got {plain_value(v)!r}")
        out.append(v)
    return optuna_distributions().CategoricalDistribution([encode_value(v) for v in out])


def point_value(p: Parser, path: str, name: str, value: Any, dist: Distribution) -> Any:
    """A given value of a searched parameter (search.points_to_evaluate), checked against `dist` and encoded."""
    if isinstance(dist, optuna_distributions().CategoricalDistribution):
        v = tuple(value) if isinstance(value, list) else value
        for candidate in choice_values(name, dist):
            if same_value(v, candidate):
                return encode_value(candidate)
        p.fail(f"{path} must be one of {[plain_value(c) for c in choice_values(name, dist)]}, got {value!r}")
    if isinstance(dist, optuna_distributions().IntDistribution):
        v = p.integer(value, path)
        if not dist.low <= v <= dist.high or (v - dist.low) % dist.step:
            grid = f" on the grid of step {dist.step}" if dist.step > 1 else ""
            p.fail(f"{path} must be an integer in [{dist.low}, {dist.high}]{grid}, got {value!r}")
        return v
    v = float(p.number(value, path))
    if not dist.low <= v <= dist.high:
        p.fail(f"{path} must be in [{dist.low!r}, {dist.high!r}], got {value!r}")
    return v


def representative(name: str, dist: Distribution) -> Any:
    """The value the checks build the dataclasses with: the midpoint (geometric on a log scale), or the first choice."""
    od = optuna_distributions()
    if isinstance(dist, od.CategoricalDistribution):
        return choice_values(name, dist)[0]
    if isinstance(dist, od.IntDistribution):
        if dist.log:
            return min(dist.high, max(dist.low, round(math.sqrt(dist.low * dist.high))))
        return dist.low + dist.step * ((dist.high - dist.low) // dist.step // 2)
    return math.sqrt(dist.low * dist.high) if dist.log else (dist.low + dist.high) / 2


def probes(name: str, dist: Distribution) -> list[tuple[str, Any]]:
    """(key, value) of each value the checks build the dataclasses with: both ends, or every choice."""
    if isinstance(dist, optuna_distributions().CategoricalDistribution):
        return [(f"values[{i}]", v) for i, v in enumerate(choice_values(name, dist))]
    return [("low", dist.low), ("high", dist.high)]


def distribution_to_dict(name: str, d: Distribution) -> dict[str, Any]:
    """`d` in the YAML schema of `params` (what `parse_distribution` reads back)."""
    od = optuna_distributions()
    if isinstance(d, od.CategoricalDistribution):
        return {"type": "choice", "values": [plain_value(v) for v in choice_values(name, d)]}
    if isinstance(d, od.IntDistribution):
        return {"type": "int", "low": d.low, "high": d.high, "step": d.step, "log": d.log}
    return {"type": "loguniform" if d.log else "uniform", "low": d.low, "high": d.high}


def _is_choice_value(v: Any) -> bool:
    scalar = (type(None), bool, int, float, str)
    return isinstance(v, scalar) or (isinstance(v, list) and all(isinstance(x, scalar) for x in v))


__all__ = [
    "DISTRIBUTION_KEYS", "Distribution", "choice_values", "distribution_to_dict", "optuna_distributions", "parse_distribution",
    "point_value", "probes", "representative",
]
