"""EASE (Steck, WWW 2019), the closed-form item-item baseline, fitted and tested by the same harness.

    P = (X^T X + lambda I)^-1,   B = I - P diag(1 / diag(P))   (so diag(B) = 0),   scores = x B

X is `split.train` (the training users; under weak generalization every user's training rows), the Gram
matrix and its inverse are float64 (float32 on request), scoring runs in float32 with a sparse x. lambda is
chosen on the validation users from a small log-spaced grid by `select_metric`; the test is scored once,
with the chosen lambda (after a refit on train + valid when the split asks for `retrain: train+valid`).

    from multivae.ease import ease_baseline
    result = ease_baseline(split)      # {"lambda", "val", "test", "popularity", "grid", "time_s", ...}
"""

from __future__ import annotations

import math
import os
import time
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from multivae.batch import SparseBatch
from multivae.errors import UserError
from multivae.evaluate import ScoreFn, evaluate, evaluate_on_split
from multivae.metrics import metric_definitions, parse_metric

DEFAULT_GRID = (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)   # ~log-spaced 1-2-5 steps around ML-1M's 500-1000
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def memory_needed(n_items: int, dtype: str = "float64") -> int:
    """Bytes of dense I x I matrices held at the peak: the Gram matrix, Gram + lambda I (then its Cholesky factor)
    and the inverse (B, made in place) while solving; the Gram matrix, B and B's float32 copy while scoring;
    plus 10 % for the sparse product and the scoring batches (ML-1M, 3,497 items: 313 MB measured, 323 MB here)."""
    size = DTYPES[dtype].itemsize
    return int(1.1 * n_items * n_items * max(3 * size, 2 * size + 4))


def available_memory() -> int:
    """MemAvailable from /proc/meminfo (bytes), else free physical pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_memory(n_items: int, dtype: str = "float64", available: int | None = None) -> None:
    """Refuse, before allocating anything, a catalogue whose dense matrices do not fit in RAM."""
    available = available_memory() if available is None else available
    need = memory_needed(n_items, dtype)
    if need <= available:
        return
    gib = 2 ** 30
    hint = ""
    if dtype == "float64" and memory_needed(n_items, "float32") <= available:
        hint = f"; float32 would need {memory_needed(n_items, 'float32') / gib:.1f} GiB and fits (--ease-dtype float32 / dtype='float32')"
    raise UserError(f"EASE on {n_items:,} items needs {need / gib:.1f} GiB in {dtype} (dense {n_items:,} x {n_items:,} "
                    f"matrices) but {available / gib:.1f} GiB is available{hint}")


def gram(x: sp.csr_matrix, dtype: str = "float64") -> torch.Tensor:
    """X^T X as a dense tensor (the sparse product is exact: counts of co-occurrences)."""
    x = sp.csr_matrix(x, dtype=np.float64)
    return torch.from_numpy((x.T @ x).toarray()).to(DTYPES[dtype])


def ease_weights(g: torch.Tensor, lam: float) -> torch.Tensor:
    """B from the Gram matrix (left unchanged): B_ij = -P_ij / P_jj off the diagonal, 0 on it."""
    if not (math.isfinite(lam) and lam > 0):   # nan gives a failed Cholesky, inf a B of nan: both rank by nothing
        raise ValueError(f"EASE lambda must be > 0 and finite, got {lam}")
    a = g.clone()
    a.diagonal().add_(lam)
    a = torch.linalg.cholesky(a)                             # X^T X + lambda I is symmetric positive definite
    p = torch.cholesky_inverse(a)
    del a
    p.div_(-p.diagonal().clone())                            # column j divided by -P_jj
    p.diagonal().zero_()
    return p


def ease_scorer(b: torch.Tensor) -> ScoreFn:
    """scores = x B for a batch of binary rows, x kept sparse."""
    b32 = b.to(torch.float32).contiguous()

    def score(x: SparseBatch) -> torch.Tensor:
        rows = torch.sparse_coo_tensor(torch.stack([x.row_of_each(), x.indices]), torch.ones(x.indices.numel(), device=x.device),
                                       (x.n_rows, x.n_items), is_coalesced=True, check_invariants=False)
        return torch.sparse.mm(rows, b32.to(x.device))
    return score


def fit_ease(x: sp.csr_matrix, lam: float, dtype: str = "float64") -> torch.Tensor:
    check_memory(x.shape[1], dtype)
    return ease_weights(gram(x, dtype), lam)


def ease_baseline(split, grid: Sequence[float] = DEFAULT_GRID, metrics: Sequence[str] = ("ndcg@100", "recall@20", "recall@50"),
                  select_metric: str | None = None, dtype: str = "float64", batch_size: int = 2000,
                  baselines: bool = True, per_user: bool = False) -> dict:
    """EASE on `split`: lambda chosen on validation from `grid` (one value: no choice), then tested once.

    Returns {"model": "ease", "lambda", "select_metric", "grid": [{"lambda", "val", "fit_s"}], "val", "test",
    "popularity" (when `baselines`), "metric_definitions", "dtype", "retrain", "fit_s" (Gram + solve at the chosen
    lambda), "time_s" (everything)}. Every metric has its standard error (`<metric>_se`). With `per_user`, also
    evaluate_on_split's per-user arrays of the tested weights (`per_user`; without "val" when the weights were
    refitted on train+valid, whose validation users they have seen)."""
    t_start = time.perf_counter()
    metrics = tuple(metrics)
    select_metric = select_metric or metrics[0]
    for m in (*metrics, select_metric):
        parse_metric(m)
    if select_metric not in metrics:
        raise ValueError(f"select_metric {select_metric!r} must be one of metrics {list(metrics)}")
    grid = [float(v) for v in grid]
    if not grid or not all(math.isfinite(v) and v > 0 for v in grid):
        raise ValueError(f"EASE lambda grid must be non-empty and > 0 (and finite), got {grid}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    check_memory(split.n_items, dtype)

    t0 = time.perf_counter()
    g = gram(split.train, dtype)
    gram_s = time.perf_counter() - t0
    curve = []
    for lam in grid:
        t0 = time.perf_counter()
        b = ease_weights(g, lam)
        fit_s = gram_s + time.perf_counter() - t0
        curve.append({"lambda": lam, "val": evaluate(ease_scorer(b), split.val_fold_in, split.val_target, metrics, batch_size),
                      "fit_s": fit_s})
        del b
    chosen = max(curve, key=lambda c: c["val"][select_metric])   # the first of equals
    lam, fit_s = chosen["lambda"], chosen["fit_s"]
    retrain = split.info.get("retrain", "none")
    if retrain == "train+valid":
        t0 = time.perf_counter()
        del g
        g = gram(split.test_fold_in, dtype)                      # every known item of every user
        fit_s = time.perf_counter() - t0
    # Solved again rather than kept from the grid: one I x I matrix less at the peak.
    b = ease_weights(g, lam)
    del g
    result = evaluate_on_split(ease_scorer(b), split, metrics, batch_size, baselines=baselines, per_user=per_user)
    result["val"] = chosen["val"]       # on validation the model selected (before any refit)
    if per_user and retrain != "none":
        result["per_user"].pop("val")
        result.get("vs_popularity", {}).pop("val", None)
    return {"model": "ease", "lambda": lam, "select_metric": select_metric, "grid": curve, **result,
            "metric_definitions": metric_definitions(metrics), "dtype": dtype, "retrain": retrain,
            "fit_s": fit_s, "time_s": time.perf_counter() - t_start}


def ease_yardstick(split, metrics: Sequence[str], select_metric: str) -> dict:
    """EASE on the same users as a model it stands next to, λ chosen on validation, with its per-user values
    under "per_user" (for the paired difference): what the search's final step and `multivae.train` report. A
    catalogue too large for this machine's memory is recorded as skipped, with the reason."""
    try:
        out = ease_baseline(split, metrics=metrics, select_metric=select_metric, baselines=False, per_user=True)
    except UserError as exc:
        return {"skipped": str(exc)}
    return {k: v for k, v in out.items() if k in ("lambda", "select_metric", "grid", "val", "test", "dtype", "time_s", "per_user")}


def ease_run(split, lambdas: Sequence[float] | None, metrics: Sequence[str], select_metric: str, dtype: str = "float64",
             threads: int | None = None) -> dict:
    """`ease_baseline` as `python -m multivae.train --model ease` runs it: on `threads` torch threads when given,
    lambda chosen from `lambdas` (None: `DEFAULT_GRID`)."""
    if threads:
        torch.set_num_threads(threads)
    return ease_baseline(split, grid=lambdas or DEFAULT_GRID, metrics=metrics, select_metric=select_metric, dtype=dtype)


__all__ = ["DEFAULT_GRID", "available_memory", "check_memory", "ease_baseline", "ease_run", "ease_scorer", "ease_weights", "fit_ease",
           "ease_yardstick", "gram", "memory_needed"]
