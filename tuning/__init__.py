"""Hyperparameter search for Mult-VAE: Ray Tune runs the trials, Optuna proposes them, ASHA stops the weak.

`tuning.search(space, **overrides)` is the Python entry (`tuning.api`); `python -m tuning.run` the command."""

from typing import Any


def __getattr__(name: str) -> Any:   # lazy: `import tuning` imports neither Ray nor torch
    if name in ("search", "SearchResult"):
        from tuning import api

        return getattr(api, name)
    raise AttributeError(f"module 'tuning' has no attribute {name!r}")


__all__ = ["SearchResult", "search"]
