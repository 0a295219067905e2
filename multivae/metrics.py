"""Ranking metrics, vectorized over a batch of users, with the reference's definitions.

scores: (B, I) float tensor with the fold-in items already set to -inf.
target: (B, I) bool tensor of held-out items.
NDCG@k = DCG / IDCG with DCG = sum_{r<k} rel_r / log2(r + 2) over the top k and IDCG the DCG of
min(n_target, k) hits; Recall@k = hits in the top k / min(k, n_target). Users without a target get NaN
(the caller skips them). k larger than the catalogue is clamped to it.
"""

from __future__ import annotations

import torch


def _discounts(k: int, device: torch.device) -> torch.Tensor:
    return 1.0 / torch.log2(torch.arange(2, k + 2, device=device, dtype=torch.float64))


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
    return torch.where(n_target > 0, dcg / idcg.clamp_min(1e-12), torch.full_like(dcg, float("nan")))


def recall_from_hits(hits: torch.Tensor, n_target: torch.Tensor, k: int) -> torch.Tensor:
    """Recall@k from the ranked hits of a top-k' with k' >= min(k, I)."""
    found = hits[:, :k].sum(dim=1).to(torch.float64)
    denom = n_target.clamp(max=k).to(torch.float64)
    return torch.where(n_target > 0, found / denom.clamp_min(1), torch.full_like(found, float("nan")))


def ndcg_at_k(scores: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    return ndcg_from_hits(topk_hits(scores, target, k), target.sum(dim=1), k)


def recall_at_k(scores: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    return recall_from_hits(topk_hits(scores, target, k), target.sum(dim=1), k)


def ranking_metrics(scores: torch.Tensor, target: torch.Tensor, n_target: torch.Tensor,
                    metrics: dict[str, tuple[str, int]]) -> dict[str, torch.Tensor]:
    """Several metrics from one top-k (the largest k; a sorted top-k's prefixes are the smaller top-ks), with
    the target counts given (from the CSR's row pointers: no pass over the dense target)."""
    hits = topk_hits(scores, target, max(k for _, k in metrics.values()))
    return {name: FROM_HITS[kind](hits, n_target, k) for name, (kind, k) in metrics.items()}


METRICS = {"ndcg": ndcg_at_k, "recall": recall_at_k}
FROM_HITS = {"ndcg": ndcg_from_hits, "recall": recall_from_hits}


def parse_metric(name: str) -> tuple[str, int]:
    """'ndcg@100' -> ('ndcg', 100)."""
    kind, _, k = name.partition("@")
    if kind not in METRICS or not k.isdigit() or int(k) < 1:
        raise ValueError(f"unknown metric {name!r}: use ndcg@K or recall@K with K >= 1")
    return kind, int(k)
