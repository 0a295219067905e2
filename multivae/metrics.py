"""Ranking metrics, vectorized over a batch of users, each variant under its own name.

scores: (B, I) float tensor with the fold-in items already set to -inf.
target: (B, I) bool tensor of held-out items; n = a user's number of target items.

| name        | definition                                              | used by                          |
|-------------|---------------------------------------------------------|----------------------------------|
| `ndcg@k`    | DCG / IDCG, DCG = sum_{r<k} rel_r / log2(r + 2), IDCG the DCG of min(n, k) hits | Mult-VAE paper, LightGCN, RecBole |
| `recall@k`  | hits in the top k / min(k, n)                           | Mult-VAE paper (its reference code) |
| `recall_n@k`| hits in the top k / n                                   | LightGCN, NGCF, RecBole          |
| `precision@k` | hits in the top k / k                                 | LightGCN, RecBole                |
| `hit@k`     | 1 if the top k holds a target item, else 0              | RecBole                          |

Users without a target get NaN (the caller skips them). k larger than the catalogue is clamped to it
(precision then divides by the clamped k).
"""

from __future__ import annotations

import torch

DEFINITIONS: dict[str, str] = {
    "ndcg": "DCG/IDCG over the top {k}; DCG = sum_(r<{k}) rel_r / log2(r+2); IDCG over min(n_target, {k}) hits",
    "recall": "hits in the top {k} / min({k}, n_target) (Mult-VAE paper)",
    "recall_n": "hits in the top {k} / n_target (LightGCN, NGCF, RecBole)",
    "precision": "hits in the top {k} / {k}",
    "hit": "1 if any target item is in the top {k}, else 0",
}


def _discounts(k: int, device: torch.device) -> torch.Tensor:
    return 1.0 / torch.log2(torch.arange(2, k + 2, device=device, dtype=torch.float64))


def _per_user(value: torch.Tensor, n_target: torch.Tensor) -> torch.Tensor:
    return torch.where(n_target > 0, value, torch.full_like(value, float("nan")))


def topk_hits(scores: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k') bool: whether the r-th ranked item is a target item; k' = min(k, I)."""
    k = min(k, scores.shape[1])
    top = torch.topk(scores, k, dim=1, sorted=True).indices
    return torch.gather(target, 1, top)


def ndcg_from_hits(hits: torch.Tensor, n_target: torch.Tensor, k: int) -> torch.Tensor:
    """NDCG@k from the ranked hits of a top-k' with k' >= min(k, I) (its first k columns are the top k)."""
    hits = hits[:, :k].to(torch.float64)
    disc = _discounts(hits.shape[1], hits.device)
    dcg = (hits * disc).sum(dim=1)
    ideal_cum = torch.cat([torch.zeros(1, device=hits.device, dtype=torch.float64), disc.cumsum(0)])
    idcg = ideal_cum[n_target.clamp(max=hits.shape[1])]
    return _per_user(dcg / idcg.clamp_min(1e-12), n_target)


def recall_from_hits(hits: torch.Tensor, n_target: torch.Tensor, k: int) -> torch.Tensor:
    """Recall@k, the paper's: hits / min(k, n)."""
    found = hits[:, :k].sum(dim=1).to(torch.float64)
    return _per_user(found / n_target.clamp(max=k).to(torch.float64).clamp_min(1), n_target)


def recall_n_from_hits(hits: torch.Tensor, n_target: torch.Tensor, k: int) -> torch.Tensor:
    """Recall@k as LightGCN and RecBole define it: hits / n."""
    found = hits[:, :k].sum(dim=1).to(torch.float64)
    return _per_user(found / n_target.to(torch.float64).clamp_min(1), n_target)


def precision_from_hits(hits: torch.Tensor, n_target: torch.Tensor, k: int) -> torch.Tensor:
    hits = hits[:, :k]
    return _per_user(hits.sum(dim=1).to(torch.float64) / hits.shape[1], n_target)


def hit_from_hits(hits: torch.Tensor, n_target: torch.Tensor, k: int) -> torch.Tensor:
    return _per_user(hits[:, :k].any(dim=1).to(torch.float64), n_target)


FROM_HITS = {"ndcg": ndcg_from_hits, "recall": recall_from_hits, "recall_n": recall_n_from_hits,
             "precision": precision_from_hits, "hit": hit_from_hits}


def _at_k(kind: str):
    def metric(scores: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
        return FROM_HITS[kind](topk_hits(scores, target, k), target.sum(dim=1), k)
    metric.__name__ = f"{kind}_at_k"
    return metric


METRICS = {kind: _at_k(kind) for kind in FROM_HITS}
ndcg_at_k, recall_at_k = METRICS["ndcg"], METRICS["recall"]


def ranking_metrics(scores: torch.Tensor, target: torch.Tensor, n_target: torch.Tensor,
                    metrics: dict[str, tuple[str, int]]) -> dict[str, torch.Tensor]:
    """Several metrics from one top-k (the largest k; a sorted top-k's prefixes are the smaller top-ks), with
    the target counts given (from the CSR's row pointers: no pass over the dense target)."""
    hits = topk_hits(scores, target, max(k for _, k in metrics.values()))
    return {name: FROM_HITS[kind](hits, n_target, k) for name, (kind, k) in metrics.items()}


def parse_metric(name: str) -> tuple[str, int]:
    """'ndcg@100' -> ('ndcg', 100); 'recall_n@20' -> ('recall_n', 20)."""
    kind, _, k = name.partition("@")
    if kind not in FROM_HITS or not k.isdigit() or int(k) < 1:
        raise ValueError(f"unknown metric {name!r}: use {', '.join(f'{m}@K' for m in FROM_HITS)} with K >= 1")
    return kind, int(k)


def metric_definitions(names) -> dict[str, str]:
    """What each named metric computes, for the `metric_definitions` entry of every result file."""
    return {m: DEFINITIONS[kind].format(k=k) for m in names for kind, k in [parse_metric(m)]}
