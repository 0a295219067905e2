"""MultiVAE / MultiDAE for collaborative filtering (Liang et al., WWW 2018) in pure PyTorch.

    import multivae
    rec = multivae.fit(data="ml-1m", data_dir="../shared/datasets", out="runs/ml1m")   # = python -m multivae.train
    rec = multivae.load("runs/ml1m")                                                   # a model folder, run or experiment
    rec.recommend(users=[1, 42], k=10)                                                 # pandas DataFrame

This package never imports Ray; the Ray Tune layer lives in `tuning/`. Imports are lazy: `import multivae`
loads neither torch nor pandas.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from multivae.version import __version__

if TYPE_CHECKING:
    from multivae.recommend import Recommender


def fit(data: Any = "synthetic", out: str | Path = "runs/train", **options: Any) -> "Recommender | dict":
    """Train one model exactly as `python -m multivae.train` does and return it, loaded (`multivae.load(out)`).

    data: a dataset name (`synthetic`, `ml-1m`, ...), a CSV/TSV/Parquet file of interactions, or a pandas
    DataFrame with columns user, item[, rating] (written to `<out>/interactions.parquet` first).
    options: the command's flags as keywords, `-` written `_`: `epochs=20, hidden_dims=[600], overwrite=True,
    config="best_config.yaml", data_dir="../shared/datasets"`. `quiet` defaults to True here.
    The result's `.metrics` holds the validation and test metrics; the popularity baseline has no model to
    keep, so for it the metrics.json contents come back instead.
    """
    from multivae import train_cli as train
    from multivae.errors import UserError, api_call, check_keyword_text
    from multivae.recommend import load

    dests = {a.dest: a for a in train._parser()._actions if a.dest not in ("help", "version")}
    flags: list[str] = []
    for key, value in {"quiet": True, **options}.items():    # every option checked before anything is written
        action = dests.get(key)
        if action is None or key in ("data", "dataset", "out"):
            raise UserError(f"multivae.fit: unknown option {key!r} (options: {', '.join(sorted(set(dests) - {'data', 'dataset', 'out'}))})")
        flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
        if value is None or value is False:
            continue
        check_keyword_text("multivae.fit", key, value)
        if value is True:
            flags.append(flag)
        elif isinstance(value, (list, tuple)):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    for key, value in (("data", data), ("out", out)):
        if isinstance(value, (str, Path)):
            check_keyword_text("multivae.fit", key, value)
    if isinstance(data, (str, Path)) and str(data) in _dataset_names():
        argv = ["--dataset", str(data)]
    elif isinstance(data, (str, Path)):
        argv = ["--data", str(data)]
    elif hasattr(data, "to_parquet"):
        from multivae.checkpoint import CHECKPOINT_NAME
        from multivae.files import atomic_write_bytes

        run_there = (Path(out) / CHECKPOINT_NAME).exists() or (Path(out) / "metrics.json").exists()
        if run_there and not (options.get("overwrite") or options.get("resume")):   # before anything is written there
            raise UserError(f"{out}: a run already exists there; pass resume=True to continue it or overwrite=True to replace it")
        path = Path(out) / "interactions.parquet"
        atomic_write_bytes(path, data.to_parquet(index=False))
        argv = ["--data", str(path)]
    else:
        raise UserError(f"data must be a dataset name, a file path or a pandas DataFrame, got {type(data).__name__}")
    argv += flags
    argv += ["--out", str(out)]
    with api_call("multivae.fit"):   # a bad value is a UserError naming the keyword, never a SystemExit
        train.main(argv)
    model_dir = Path(out) / train.MODEL_DIR
    if model_dir.is_dir():
        return load(model_dir)
    import json

    return json.loads((Path(out) / "metrics.json").read_text())


def load(path: str | Path, titles: str | Path | None = None, device: str = "cpu") -> "Recommender":
    """A `Recommender` from a model folder, a train run (its `model/`), a search experiment (its `best_model/`)
    or an older run's checkpoint file. `titles`: a titles table when the MovieLens metadata is not found."""
    from multivae.recommend import load as _load

    return _load(path, titles=titles, device=device)


def _dataset_names() -> tuple[str, ...]:
    from multivae.data import DATASET_NAMES

    return tuple(n for n in DATASET_NAMES if n != "file")


def __getattr__(name: str) -> Any:
    if name == "Recommender":
        from multivae.recommend import Recommender

        return Recommender
    raise AttributeError(f"module 'multivae' has no attribute {name!r}")


__all__ = ["Recommender", "__version__", "fit", "load"]
