"""The search from Python: `tuning.search(space, **overrides)` runs `tuning.run` in this process and returns
what it found (the best configuration, the best model's folder, a DataFrame of every trial, the final metrics).

    import tuning
    found = tuning.search("smoke", storage="/tmp/ray_results", name="demo")
    found.test["ndcg@100"], found.best_model          # then multivae.load(found.best_model).recommend(...)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class SearchResult:
    experiment: str                 # <storage>/<name>
    best_config: dict[str, Any]     # best_config.yaml: dataset, model and train settings of the best trial
    best_model: str                 # its self-contained model folder (multivae.load / multivae.recommend --checkpoint)
    trials: pd.DataFrame            # one row per trial: id, number, status, epochs, best value and epoch, its parameters
    val: dict[str, float]           # the best model's validation metrics (each with `<metric>_se`)
    test: dict[str, float]          # ... on the held-out test users, tested once
    popularity: dict[str, dict]     # the popularity baseline on the same users
    results: dict[str, Any]         # all of results.json


def _flags(overrides: dict[str, Any]) -> list[str]:
    argv: list[str] = []
    for key, value in overrides.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def search(space: str = "default", **overrides: Any) -> SearchResult:
    """Run a search like `python -m tuning.run --space SPACE --<override> VALUE ...` (keyword names are the
    flags with `_` for `-`; True for a switch such as `quiet=True` or `resume=True`). Bad input raises
    `multivae.errors.UserError`; a search left unfinished raises RuntimeError with the resume command."""
    import yaml

    from tuning import experiment, run

    argv = ([] if overrides.get("resume") else ["--space", space]) + _flags(overrides)
    planned: list[str] = []
    rc = run.main(argv, planned=planned)
    if rc != 0:
        raise RuntimeError(f"the search stopped before its end (exit {rc}); continue it with tuning.search(resume=True, "
                           f"name=..., storage=...) or `python -m tuning.run --resume`")
    exp = planned[0]   # the experiment this run made (or resumed), whatever else the storage holds
    results = experiment.read_json(experiment.join(exp, experiment.RESULTS), "the search's results")
    rows = [{k: v for k, v in r.items() if k != "config"} | r["config"] for r in results["trials_table"]]
    return SearchResult(exp, yaml.safe_load(experiment.read_text(experiment.join(exp, experiment.BEST_CONFIG))),
                        results["best_model"], pd.DataFrame(rows), results["val"], results["test"], results["popularity"], results)


__all__ = ["SearchResult", "search"]
