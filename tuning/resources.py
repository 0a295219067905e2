"""The numbers handed to Ray and Optuna, checked before Ray starts: resource amounts Ray can represent and place,
counts within what its schedulers and Optuna hold exactly, and rung ladders of a sane length.

Ray keeps resource amounts as whole multiples of 1e-4 (it truncates the rest, and a request truncated to
zero crashed the search from inside Ray: "Tracked actor is not managed by this event manager"); amounts
above one must be whole. A trial is one actor on one node, so it must fit one node, not the cluster's sum.
Optuna holds an integer parameter as a float, so its bounds stay within 2**53 to be exact.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

RESOURCE_UNIT = 1e-4            # Ray's resource granularity (ray_constants.MIN_RESOURCE_GRANULARITY in Ray 2.60)
MAX_COUNT = 2**31 - 1           # trials, epochs, rungs, CPUs: far beyond any real search, within every int type
MAX_EXACT_INT = 2**53           # Optuna's internal float holds integers exactly up to here


def amount_problem(value: float) -> str | None:
    """Why Ray cannot represent `value` as one trial's CPUs or GPUs, with the value (None: it can)."""
    if value < 0:
        return f"must be >= 0, got {value!r}"
    if value > MAX_COUNT:
        return f"must be at most {MAX_COUNT}, got {value!r}"
    if value > 1 and not float(value).is_integer():   # Ray places a fraction of one CPU/GPU, or whole ones
        return f"must be a fraction <= 1 or a whole number (Ray cannot place {value!r})"
    units = value / RESOURCE_UNIT
    if abs(units - round(units)) > 1e-6 * max(1.0, units):
        return f"must be a multiple of {RESOURCE_UNIT:g} (Ray keeps resources at that resolution), got {value!r}"
    return None


def count_problem(value: int, low: int) -> str | None:
    """Why `value` is no count Ray or Optuna takes as given, with the value (None: it is)."""
    if value < low:
        return f"must be >= {low}, got {value!r}"
    if value > MAX_COUNT:
        return f"must be at most {MAX_COUNT}, got {value!r}"
    return None


def rung_count(low: int, max_t: int, reduction_factor: float) -> int:
    """The number of rungs a successive-halving ladder from `low` to `max_t` with this factor has (Ray's
    formula), computed without building it; it must not exceed the epochs, one rung per epoch at most."""
    return int(math.log(max_t / low) / math.log(reduction_factor) + 1)


def node_capacity(nodes: Iterable[Mapping[str, Any]]) -> list[tuple[float, float]]:
    """(CPU, GPU) of every alive node, from `ray.nodes()` rows."""
    return [(float(n.get("Resources", {}).get("CPU", 0)), float(n.get("Resources", {}).get("GPU", 0)))
            for n in nodes if n.get("Alive", True)]


def placement_problem(cpus: float, gpus: float, capacity: list[tuple[float, float]]) -> str | None:
    """Why no node can ever hold a trial of `cpus` CPUs and `gpus` GPUs (None: one can)."""
    if any(c >= cpus and g >= gpus for c, g in capacity):
        return None
    nodes = ", ".join(f"{c:g} CPU + {g:g} GPU" for c, g in capacity) or "none"
    return (f"a trial needs {cpus:g} CPU + {gpus:g} GPU on one node, but no node of the Ray cluster has that "
            f"(nodes: {nodes})")
