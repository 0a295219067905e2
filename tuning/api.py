"""The search from Python: `tuning.search(space, **overrides)` runs `tuning.run` in this process and returns
what it found (the best configuration, the best model's folder, a DataFrame of every trial, the final metrics).

    import tuning
    found = tuning.search("smoke", storage="/tmp/ray_results", name="demo")
    found.test["ndcg@100"], found.best_model          # then multivae.load(found.best_model).recommend(...)
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class SearchResult:
    experiment: str                 # <storage>/<name>
    best_config: dict[str, Any]     # best_config.yaml: dataset, model and train settings of the best trial
    best_model: str                 # its self-contained model folder (multivae.load / multivae.recommend --checkpoint)
    trials: pd.DataFrame            # one row per trial: id, number, status, epochs run, best value and epoch, then its
                                    # parameters (`_row`: a result column wins over a parameter of the same name)
    val: dict[str, float]           # the best model's validation metrics (each with `<metric>_se`)
    test: dict[str, float]          # ... on the held-out test users, tested once
    popularity: dict[str, dict]     # the popularity baseline on the same users
    results: dict[str, Any]         # all of results.json


def _flags(overrides: dict[str, Any]) -> list[str]:
    """The command line of `overrides`, each keyword checked against the flag it stands for."""
    from multivae.errors import UserError, check_keyword_text, short_repr
    from tuning import run

    actions = {a.dest: a for a in run._parser()._actions if a.option_strings and a.dest not in ("help", "version")}
    argv: list[str] = []
    for key, value in overrides.items():
        action = actions.get(key)
        if action is None:
            raise UserError(f"tuning.search: unknown keyword {short_repr(key)} (keywords: {', '.join(sorted(actions))})")
        switch = action.nargs == 0
        if switch and not isinstance(value, bool):
            raise UserError(f"tuning.search: {key} must be True or False, got {short_repr(value)}")
        if not switch and (isinstance(value, bool) or not isinstance(value, (str, int, float, PathLike))) and value is not None:
            raise UserError(f"tuning.search: {key} must be a string or a number, got {short_repr(value)}")
        if value is None or value is False:
            continue
        check_keyword_text("tuning.search", key, value)
        argv += [action.option_strings[-1]] if value is True else [f"{action.option_strings[-1]}={value}"]
    return argv


def search(space: str = "default", **overrides: Any) -> SearchResult:
    """Run a search like `python -m tuning.run --space SPACE --<override> VALUE ...` (keyword names are the
    flags with `_` for `-`; True for a switch such as `quiet=True` or `resume=True`). Bad input raises
    `multivae.errors.UserError`; a search left unfinished raises RuntimeError with the resume command."""
    import yaml

    from multivae.errors import UserError, api_call, check_keyword_text, short_repr
    from tuning import experiment, run

    if not isinstance(space, (str, PathLike)):
        raise UserError(f"tuning.search: space must be a search space name or a YAML path, got {short_repr(space)}")
    check_keyword_text("tuning.search", "space", space)
    argv = ([] if overrides.get("resume") else [f"--space={space}"]) + _flags(overrides)
    planned: list[str] = []
    with api_call("tuning.search"):
        run._parser().parse_args(argv)   # a bad value: UserError here, before anything runs
        rc = run.main(argv, planned=planned)
    if rc != 0:
        raise RuntimeError(f"the search stopped before its end (exit {rc}); continue it with tuning.search(resume=True, "
                           f"name=..., storage=...) or `python -m tuning.run --resume`")
    exp = planned[0]   # the experiment this run made (or resumed), whatever else the storage holds
    results = experiment.read_json(experiment.join(exp, experiment.RESULTS), "the search's results")
    rows = [_row(r) for r in results["trials_table"]]
    return SearchResult(exp, yaml.safe_load(experiment.read_text(experiment.join(exp, experiment.BEST_CONFIG))),
                        results["best_model"], pd.DataFrame(rows), results["val"], results["test"], results["popularity"], results)


def _row(trial: dict[str, Any]) -> dict[str, Any]:
    """A results.json trial row, flat: what the trial did, then its parameters. A result column wins over the
    parameter of that name: `epochs` is the epochs the trial ran, not the configured maximum (which stays in
    results["trials_table"][i]["config"])."""
    done = {k: v for k, v in trial.items() if k != "config"}
    return done | {k: v for k, v in trial["config"].items() if k not in done}


__all__ = ["SearchResult", "search"]
