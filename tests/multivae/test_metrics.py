"""NDCG@k and Recall@k against a slow per-user implementation written here and hand-computed cases."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from multivae.evaluate import evaluate, per_user_metrics, popularity_scorer
from multivae.metrics import ndcg_at_k, parse_metric, recall_at_k


def slow_ndcg(scores: np.ndarray, target: np.ndarray, k: int) -> float:
    """The paper's definition, one user at a time with a full argsort."""
    if target.sum() == 0:
        return math.nan
    order = np.argsort(-scores, kind="stable")[:k]
    dcg = sum(1 / math.log2(r + 2) for r, i in enumerate(order) if target[i])
    idcg = sum(1 / math.log2(r + 2) for r in range(min(int(target.sum()), k)))
    return dcg / idcg


def slow_recall(scores: np.ndarray, target: np.ndarray, k: int) -> float:
    if target.sum() == 0:
        return math.nan
    order = np.argsort(-scores, kind="stable")[:k]
    return sum(bool(target[i]) for i in order) / min(k, int(target.sum()))


@pytest.mark.parametrize("k", [1, 5, 20, 100, 500])
def test_matches_slow_reference_on_random_data(k):
    rng = np.random.default_rng(k)
    scores = rng.normal(size=(64, 300))                       # continuous: no ties
    target = rng.random((64, 300)) < rng.uniform(0.0, 0.1, size=(64, 1))
    target[:3] = False                                        # users without a target
    target[3, :] = False
    target[3, 7] = True                                       # a user with one held-out item
    fast_n = ndcg_at_k(torch.tensor(scores), torch.tensor(target), k).numpy()
    fast_r = recall_at_k(torch.tensor(scores), torch.tensor(target), k).numpy()
    slow_n = np.array([slow_ndcg(s, t, k) for s, t in zip(scores, target)])
    slow_r = np.array([slow_recall(s, t, k) for s, t in zip(scores, target)])
    np.testing.assert_allclose(fast_n, slow_n, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(fast_r, slow_r, rtol=1e-12, equal_nan=True)
    assert np.isnan(fast_n[:3]).all() and np.isnan(fast_r[:3]).all()


def test_hand_computed_cases():
    s = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    # one held-out item at rank 2 (0-based 1): NDCG = (1/log2 3) / 1
    t = torch.tensor([[False, True, False, False]])
    assert ndcg_at_k(s, t, 3).item() == pytest.approx(1 / math.log2(3))
    assert recall_at_k(s, t, 1).item() == 0.0 and recall_at_k(s, t, 2).item() == 1.0
    # two targets at ranks 0 and 2: DCG = 1 + 1/2, IDCG = 1 + 1/log2 3
    t = torch.tensor([[True, False, True, False]])
    assert ndcg_at_k(s, t, 4).item() == pytest.approx((1 + 0.5) / (1 + 1 / math.log2(3)))
    # k = 1 with 2 targets: IDCG over min(n, k) = 1 item, recall divides by min(k, n) = 1
    assert ndcg_at_k(s, t, 1).item() == 1.0 and recall_at_k(s, t, 1).item() == 1.0


def test_k_larger_than_catalogue():
    s = torch.tensor([[0.1, 0.9, 0.5]])
    t = torch.tensor([[True, False, False]])
    # the single target sits last (rank 2): NDCG = 1/log2(4) = 0.5, recall = 1/min(100, 1)
    assert ndcg_at_k(s, t, 100).item() == pytest.approx(0.5)
    assert recall_at_k(s, t, 100).item() == 1.0


def test_ties_do_not_change_the_value_when_tied_items_are_alike():
    s = torch.tensor([[2.0, 2.0, 1.0, 1.0]])
    both_targets = torch.tensor([[True, True, False, False]])
    assert ndcg_at_k(s, both_targets, 2).item() == pytest.approx(1.0)
    neither = torch.tensor([[False, False, True, True]])
    assert ndcg_at_k(s, neither, 2).item() == 0.0
    assert recall_at_k(s, neither, 3).item() == pytest.approx(0.5)


def test_fold_in_items_are_masked_and_users_without_target_skipped():
    fold_in = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float32))
    target = sp.csr_matrix(np.array([[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]], dtype=np.float32))

    def score(x):   # item 0 is the best-scored item for everyone, but user 0 already has it
        return torch.tensor([[9.0, 3.0, 2.0, 1.0]]).expand(x.n_rows, -1).clone()

    per_user = per_user_metrics(score, fold_in, target, ["ndcg@1", "recall@1"], batch_size=2)
    assert per_user["ndcg@1"][0] == 1.0          # item 0 masked, so item 1 ranks first
    assert np.isnan(per_user["ndcg@1"][1])       # no target: skipped
    assert per_user["recall@1"][2] == 0.0        # user 2: item 0 ranks first (not masked for them)
    summary = evaluate(score, fold_in, target, ["ndcg@1"])
    assert summary["ndcg@1"] == pytest.approx(0.5)


def test_popularity_scorer_ranks_by_training_counts():
    train = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=np.float32))
    fold_in = sp.csr_matrix(np.array([[1, 0, 0]], dtype=np.float32))
    target = sp.csr_matrix(np.array([[0, 0, 1]], dtype=np.float32))
    r = evaluate(popularity_scorer(train), fold_in, target, ["ndcg@2", "recall@1"])
    assert r["recall@1"] == 0.0                  # item 1 (count 2) outranks item 2 (count 1)
    assert r["ndcg@2"] == pytest.approx(1 / math.log2(3))


@pytest.mark.parametrize("name", ["ndcg", "ndcg@0", "map@10", "recall@x"])
def test_parse_metric_rejects_bad_names(name):
    with pytest.raises(ValueError, match="unknown metric"):
        parse_metric(name)


def test_per_user_metrics_share_one_topk_and_match_the_slow_reference():
    """per_user_metrics ranks once with the largest k and reads the smaller ks from its prefix, and counts the
    targets from the CSR: every metric (k above the catalogue too) must still equal the per-user reference."""
    rng = np.random.default_rng(0)
    n_users, n_items = 90, 300
    scores = rng.normal(size=(n_users, n_items))
    fold_in = sp.csr_matrix((rng.random((n_users, n_items)) < 0.05).astype(np.float32))
    target_dense = (rng.random((n_users, n_items)) < rng.uniform(0.0, 0.1, size=(n_users, 1))) & (fold_in.toarray() == 0)
    target_dense[:4] = False                                   # users without a target
    target = sp.csr_matrix(target_dense.astype(np.float32))
    metrics = ["recall@5", "ndcg@1", "ndcg@20", "recall@100", "ndcg@500"]

    def score(x):
        return torch.tensor(scores[x_rows.pop(0)])

    x_rows = [slice(s, min(s + 32, n_users)) for s in range(0, n_users, 32)]
    got = per_user_metrics(score, fold_in, target, metrics, batch_size=32)
    masked = np.where(fold_in.toarray() > 0, -np.inf, scores)
    for m in metrics:
        kind, k = parse_metric(m)
        slow = slow_ndcg if kind == "ndcg" else slow_recall
        want = np.array([slow(s, t, k) for s, t in zip(masked, target_dense)])
        np.testing.assert_allclose(got[m], want, rtol=1e-12, equal_nan=True, err_msg=m)
    assert np.isnan(got["ndcg@20"][:4]).all() and not np.isnan(got["ndcg@20"][4:][target_dense[4:].any(1)]).any()


# --- the named variants: LightGCN / RecBole recall, precision, hit ---------------------------------------

def slow_variant(kind: str, scores: np.ndarray, target: np.ndarray, k: int) -> float:
    """Each variant as its source writes it, one user at a time (LightGCN's `RecallPrecision_ATk`, RecBole's hit)."""
    n = int(target.sum())
    if n == 0:
        return math.nan
    top = np.argsort(-scores, kind="stable")[:k]
    hits = sum(bool(target[i]) for i in top)
    return {"recall_n": hits / n, "precision": hits / k, "hit": float(hits > 0),
            "recall": hits / min(k, n), "ndcg": slow_ndcg(scores, target, k)}[kind]


@pytest.mark.parametrize("kind", ["recall", "recall_n", "precision", "hit", "ndcg"])
@pytest.mark.parametrize("k", [1, 3, 20])
def test_variants_match_their_slow_definitions(kind, k):
    from multivae.metrics import METRICS

    rng = np.random.default_rng(k)
    scores = rng.normal(size=(50, 120))
    target = rng.random((50, 120)) < rng.uniform(0.0, 0.3, size=(50, 1))   # some users with n > k, some with n < k
    target[0] = False
    got = METRICS[kind](torch.tensor(scores), torch.tensor(target), k).numpy()
    want = np.array([slow_variant(kind, s, t, k) for s, t in zip(scores, target)])
    np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True)


def test_variants_differ_where_they_should_by_hand():
    from multivae.metrics import METRICS

    s = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    t = torch.tensor([[True, False, True, True, False]])          # n = 3 targets, at ranks 0, 2, 3
    assert METRICS["recall"](s, t, 2).item() == pytest.approx(1 / 2)      # 1 hit / min(2, 3)
    assert METRICS["recall_n"](s, t, 2).item() == pytest.approx(1 / 3)    # 1 hit / 3
    assert METRICS["precision"](s, t, 2).item() == pytest.approx(1 / 2)   # 1 hit / 2
    assert METRICS["hit"](s, t, 2).item() == 1.0
    assert METRICS["hit"](torch.tensor([[1.0, 5.0, 0.0, 0.0, 4.0]]), t, 2).item() == 0.0
    assert METRICS["recall_n"](s, t, 5).item() == 1.0 and METRICS["precision"](s, t, 5).item() == pytest.approx(3 / 5)


def test_parse_metric_knows_every_variant_and_definitions_name_k():
    from multivae.metrics import metric_definitions

    assert [parse_metric(m) for m in ("recall_n@20", "precision@5", "hit@10")] == [("recall_n", 20), ("precision", 5), ("hit", 10)]
    d = metric_definitions(["recall@20", "recall_n@20", "ndcg@100"])
    assert d["recall@20"].startswith("hits in the top 20 / min(20, n_target)")
    assert d["recall_n@20"].startswith("hits in the top 20 / n_target")
    assert "min(n_target, 100)" in d["ndcg@100"]
    with pytest.raises(ValueError, match="recall_n@K"):
        parse_metric("mrr@10")


def test_paired_difference_by_hand():
    """Users 0..3: a - b = 0.5, -0.25, NaN (no target), 0.25 -> mean 1/6, population std over 3 users, / sqrt(3)."""
    from multivae.evaluate import paired_difference

    a = {"ndcg@100": np.array([1.0, 0.25, np.nan, 0.5]), "only_a": np.array([1.0])}
    b = {"ndcg@100": np.array([0.5, 0.5, np.nan, 0.25])}
    out = paired_difference(a, b)
    mean = (0.5 - 0.25 + 0.25) / 3
    std = math.sqrt(((0.5 - mean) ** 2 + (-0.25 - mean) ** 2 + (0.25 - mean) ** 2) / 3)
    assert out == {"ndcg@100": pytest.approx(mean, abs=1e-15), "ndcg@100_se": pytest.approx(std / math.sqrt(3), abs=1e-15)}
    with pytest.raises(ValueError, match="different users"):
        paired_difference(a, {"ndcg@100": np.zeros(3)})
