"""Scoring held-out users: fold-in rows in, their target rows ranked, metrics averaged over users with a target."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from multivae.batch import SparseBatch
from multivae.metrics import parse_metric, ranking_metrics

ScoreFn = Callable[[SparseBatch], torch.Tensor]
DEFAULT_METRICS = ("ndcg@100", "recall@20", "recall@50")


@torch.no_grad()
def per_user_metrics(
    score: ScoreFn,
    fold_in: sp.csr_matrix,
    target: sp.csr_matrix,
    metrics: Sequence[str] = DEFAULT_METRICS,
    batch_size: int = 2000,
    device: torch.device | str = "cpu",
) -> dict[str, np.ndarray]:
    """Per-user values (NaN for users without a target), in row order. The values stay on the device until
    all batches are scored and come back in one transfer per metric (no host round trip per batch)."""
    parsed = {m: parse_metric(m) for m in metrics}
    device = torch.device(device)
    pin = device.type == "cuda"
    out: dict[str, list[torch.Tensor]] = {m: [] for m in metrics}
    n_target_host = np.diff(target.indptr).astype(np.int64)
    n_target = torch.from_numpy(n_target_host).to(device)
    for start in range(0, fold_in.shape[0], batch_size):
        rows = slice(start, min(start + batch_size, fold_in.shape[0]))
        if not n_target_host[rows].any():
            for m in metrics:
                out[m].append(torch.full((rows.stop - rows.start,), float("nan"), dtype=torch.float64, device=device))
            continue
        x = SparseBatch.from_csr(fold_in, rows, pin=pin).to(device)
        scores = score(x).float()
        scores[x.row_of_each(), x.indices] = -torch.inf        # never recommend what the user already has
        t = SparseBatch.from_csr(target, rows, pin=pin).to(device).dense(torch.bool)
        for m, v in ranking_metrics(scores, t, n_target[rows], parsed).items():
            out[m].append(v)
    return {m: torch.cat(v).cpu().numpy() if v else np.zeros(0) for m, v in out.items()}


def summarize(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean over users with a target, plus the standard error of each mean (`<metric>_se`)."""
    result: dict[str, float] = {}
    for m, v in per_user.items():
        v = v[~np.isnan(v)]
        result[m] = float(v.mean()) if v.size else float("nan")
        result[f"{m}_se"] = float(v.std() / np.sqrt(v.size)) if v.size else float("nan")
    return result


def paired_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    """Two models on the same users: the mean per-user difference a - b of each metric (users with a target,
    NaN in neither) and the standard error of that mean (`<metric>_se`).

    Both models see the same users, so the between-user spread cancels: this error is the one that says whether
    a gap is real; two separate standard errors (`summarize`) overstate it several times."""
    out: dict[str, float] = {}
    for m in a:
        if m not in b:
            continue
        if a[m].shape != b[m].shape:
            raise ValueError(f"{m}: per-user values of different users ({a[m].shape} vs {b[m].shape})")
        d = a[m] - b[m]
        d = d[~np.isnan(d)]
        out[m] = float(d.mean()) if d.size else float("nan")
        out[f"{m}_se"] = float(d.std() / np.sqrt(d.size)) if d.size else float("nan")
    return out


def evaluate(score: ScoreFn, fold_in: sp.csr_matrix, target: sp.csr_matrix, metrics: Sequence[str] = DEFAULT_METRICS,
             batch_size: int = 2000, device: torch.device | str = "cpu") -> dict[str, float]:
    return summarize(per_user_metrics(score, fold_in, target, metrics, batch_size, device))


def model_scorer(model: torch.nn.Module) -> ScoreFn:
    """Logits of a model in eval mode (z = mu, no dropout)."""
    def score(x: SparseBatch) -> torch.Tensor:
        model.eval()
        return model(x)[0]
    return score


def popularity_scorer(train: sp.csr_matrix) -> ScoreFn:
    """The popularity baseline: every user gets the items ranked by their count among training users."""
    counts = torch.from_numpy(np.asarray(train.sum(axis=0)).ravel().astype(np.float32))

    def score(x: SparseBatch) -> torch.Tensor:
        return counts.to(x.device).expand(x.n_rows, -1).clone()
    return score


def evaluate_on_split(score: ScoreFn, split, metrics: Sequence[str] = DEFAULT_METRICS, batch_size: int = 2000,
                      device: torch.device | str = "cpu", *, baselines: bool = True, per_user: bool = False) -> dict[str, dict]:
    """The protocol's last step, in one place: `score` on the validation and the test users, next to the
    popularity baseline on the same users (each metric with its standard error, `<metric>_se`). With
    `per_user`, also `per_user: {"val", "test"}` (`per_user_metrics`' arrays, for `paired_difference`) and,
    with `baselines`, `vs_popularity: {"val", "test"}`, the paired difference score - popularity.

    Serves `multivae.train`, the search's final test of its best trial and the ablations."""
    def on(s: ScoreFn) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, np.ndarray]]]:
        pu = {"val": per_user_metrics(s, split.val_fold_in, split.val_target, metrics, batch_size, device),
              "test": per_user_metrics(s, split.test_fold_in, split.test_target, metrics, batch_size, device)}
        return {k: summarize(v) for k, v in pu.items()}, pu

    out, pu = on(score)
    out = dict(out)
    if baselines:
        out["popularity"], pop_pu = on(popularity_scorer(split.train))
        if per_user:
            out["vs_popularity"] = {k: paired_difference(pu[k], pop_pu[k]) for k in pu}
    if per_user:
        out["per_user"] = pu
    return out
