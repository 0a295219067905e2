"""Fixtures for the data tests. Every dataset here is generated; no MovieLens rows are ever written to the repo."""

from __future__ import annotations

import io
import zipfile

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest


@pytest.fixture
def data_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MULTIVAE_* variable leaks in from the environment running the tests."""
    monkeypatch.delenv("MULTIVAE_DATA_DIR", raising=False)
    monkeypatch.delenv("MULTIVAE_BASE_URL", raising=False)


@pytest.fixture
def keep_global_rng():
    """The reference notebook reseeds numpy's global RNG; leave it as we found it."""
    state = np.random.get_state()
    yield
    np.random.set_state(state)


def fake_ratings(n_users: int = 200, n_items: int = 80, seed: int = 0) -> pd.DataFrame:
    """MovieLens-like rows (user, item, rating 1-5, timestamp), ids from 1, no duplicated pairs, unordered."""
    rng = np.random.default_rng(seed)
    per_user = rng.integers(8, 30, n_users)
    user = np.repeat(np.arange(1, n_users + 1), per_user)
    item = np.concatenate([rng.choice(n_items, k, replace=False, p=_zipf(n_items)) + 1 for k in per_user])
    df = pd.DataFrame({"user": user, "item": item, "rating": rng.integers(1, 6, len(user)),
                       "timestamp": rng.integers(874_000_000, 893_000_000, len(user))})
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def _zipf(n: int) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1)
    return p / p.sum()


def ml100k_bytes(df: pd.DataFrame) -> bytes:
    """`u.data`: tab-separated user item rating timestamp, no header."""
    buf = io.StringIO()
    df[["user", "item", "rating", "timestamp"]].to_csv(buf, sep="\t", header=False, index=False)
    return buf.getvalue().encode()


@pytest.fixture
def fake_ml100k_dir(tmp_path: Path) -> Callable[..., Path]:
    """Write an extracted fake ml-100k (`<root>/ml-100k/u.data`); returns the `ml-100k` folder."""
    def make(root: Path | None = None, df: pd.DataFrame | None = None) -> Path:
        folder = (root or tmp_path / "movielens") / "ml-100k"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "u.data").write_bytes(ml100k_bytes(fake_ratings() if df is None else df))
        return folder
    return make


def zip_bytes(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    """A zip holding `members` (name -> content) and, optionally, symbolic links (name -> link target)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)  # S_IFLNK: how zip tools mark a symbolic link
            zf.writestr(info, target)
    return buf.getvalue()
