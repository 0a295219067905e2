"""The `search` section: how many trials, how many at once, the searcher's seed, the metric and mode, the points tried first,
and the re-evaluation of the top trials after the search.

`points_to_evaluate` are checked against the searched parameters' distributions (`tuning.distributions`) and
held in the searcher's encoded form (list choices as their JSON text).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from multivae.errors import short_repr
from multivae.metrics import FROM_HITS, parse_metric
from multivae.training import TrainConfig
from tuning import resources
from tuning.distributions import Distribution, point_value
from tuning.space_yaml import Parser, join_key

HIGHER_IS_BETTER = tuple(FROM_HITS)   # every validation metric the trials report (ndcg, recall, recall_n, precision, hit)
OBJECTIVES = ("best", "last")   # search.objective: a trial's best epoch's value (the model it keeps), or its last


@dataclass(frozen=True)
class SearchSettings:
    num_samples: int = 10
    max_concurrent: int = 1
    seed: int | None = 0                       # the TPE sampler's seed (None: not reproducible)
    metric: str = "ndcg@100"
    mode: str = "max"
    points_to_evaluate: tuple[dict, ...] = ()  # searcher-space values: list choices encoded (see tuning.trial_config)
    objective: str = "best"                    # what Optuna is told of a trial: its best epoch's value, or its last
    reevaluate_top_k: int = 3                  # after the search, retrain the k best trials (0: off; tuning.reevaluate)
    reevaluate_seeds: int = 2                  # ... this many more times each, and pick by the mean validation value


def parse_search(p: Parser, raw: Any, params: dict[str, Distribution], train_cfg: TrainConfig) -> SearchSettings:
    """The `search` section (null: the defaults), for the searched `params` and the trials' `train_cfg`."""
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
    encoded = tuple(_point(p, i, point, params) for i, point in enumerate(points))
    objective = d.get("objective", default.objective)
    if objective not in OBJECTIVES:
        p.fail(f"search.objective must be one of {', '.join(OBJECTIVES)}, got {short_repr(objective)}")
    top_k = p.integer(d.get("reevaluate_top_k", default.reevaluate_top_k), "search.reevaluate_top_k")
    extra_seeds = p.integer(d.get("reevaluate_seeds", default.reevaluate_seeds), "search.reevaluate_seeds")
    for key, value in (("reevaluate_top_k", top_k), ("reevaluate_seeds", extra_seeds)):
        if (problem := resources.count_problem(value, 0)) is not None:
            p.fail(f"search.{key} {problem}")
    return SearchSettings(num_samples, max_concurrent, seed, metric, mode, encoded, objective, top_k, extra_seeds)


def _point(p: Parser, i: int, point: Any, params: dict[str, Distribution]) -> dict:
    path = f"search.points_to_evaluate[{i}]"
    if not isinstance(point, Mapping):
        p.fail(f"{path} must be a mapping of searched parameters to values, got {point!r}")
    for key in point:
        if key not in params:
            p.fail(f"{join_key(path, key)} is not a searched parameter (searched: {', '.join(params)})")
    missing = [k for k in params if k not in point]
    if missing:
        p.fail(f"{path} must give every searched parameter (Tune's OptunaSearch requires it); missing: {', '.join(missing)}")
    return {name: point_value(p, f"{path}.{name}", name, point[name], dist) for name, dist in params.items()}


__all__ = ["HIGHER_IS_BETTER", "OBJECTIVES", "SearchSettings", "parse_search"]
