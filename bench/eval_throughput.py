"""Evaluation throughput: NDCG@100 + Recall@20/50 over the held-out users, as a fraction of a training epoch.

    python -m bench.eval_throughput                 # 10,000 held-out users x 20,108 items (ML-20M's validation)
    python -m bench.eval_throughput --threads 1
    python -m bench.eval_throughput --tiny          # seconds; what the smoke test runs

ours:  `multivae.evaluate.per_user_metrics` with the model's scorer (batch 2,000: score, mask the fold-in
       items, top-k and metrics in torch), timed whole; "scoring" is the model's forward alone.
before: the committed code before one top-k was shared by the metrics (per_metric_topk_metrics), for the ratio.
naive: a per-user numpy evaluator written here: the same scores, then per user `s[fold_in] = -inf`,
       `np.argsort(-s)` and the metrics in Python. Both must give the same per-user numbers (to 1e-9);
       the bench checks that on the model's scores and on a popularity scorer (with random tie-breaking).
epoch: `train_epoch` on ML-20M-shaped training rows (batch 500), timed in the same run and extrapolated
       to ML-20M's 234 batches.
"""

from __future__ import annotations

import argparse
import sys

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from bench.common import (
    ML20M_BATCHES_PER_EPOCH, ML20M_HELDOUT_USERS, ML20M_ITEMS, interleave, machine_info, ml20m_like_rows, print_table,
    set_malloc, set_threads, stats, write_result,
)
from bench.train_throughput import ANNEAL_STEPS, as_split, ours_state
from multivae.batch import SparseBatch
from multivae.evaluate import DEFAULT_METRICS, ScoreFn, model_scorer, per_user_metrics
from multivae.metrics import METRICS, parse_metric
from multivae.model import ModelConfig, build_model
from multivae.training import Callback, train_epoch


def heldout_split(rows: sp.csr_matrix, fraction: float = 0.2, min_items: int = 5, seed: int = 0) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """The protocol's fold-in / target split of every row: int(0.2 n) random items become the target
    (rows with fewer than 5 items keep everything as fold-in)."""
    rng = np.random.default_rng(seed)
    is_target = np.zeros(rows.nnz, dtype=bool)
    for u in range(rows.shape[0]):
        s, e = rows.indptr[u], rows.indptr[u + 1]
        n = e - s
        if n >= min_items:
            is_target[s + rng.choice(n, int(fraction * n), replace=False)] = True
    user = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))

    def part(mask: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix((np.ones(mask.sum(), dtype=np.float32), (user[mask], rows.indices[mask])), shape=rows.shape)

    return part(~is_target), part(is_target)


def naive_metrics(score: ScoreFn, fold_in: sp.csr_matrix, target: sp.csr_matrix, metrics: tuple[str, ...],
                  batch_size: int) -> dict[str, np.ndarray]:
    """Per user, in numpy: mask the fold-in items, argsort everything, read the top k."""
    parsed = [(m, *parse_metric(m)) for m in metrics]
    kmax = max(k for _, _, k in parsed)
    disc = 1.0 / np.log2(np.arange(2, kmax + 2))
    out = {m: np.full(fold_in.shape[0], np.nan) for m in metrics}
    for start in range(0, fold_in.shape[0], batch_size):
        stop = min(start + batch_size, fold_in.shape[0])
        with torch.no_grad():
            scores = score(SparseBatch.from_csr(fold_in, slice(start, stop))).float().numpy()
        for r in range(stop - start):
            u = start + r
            held = target.indices[target.indptr[u]:target.indptr[u + 1]]
            if len(held) == 0:
                continue
            s = scores[r].copy()
            s[fold_in.indices[fold_in.indptr[u]:fold_in.indptr[u + 1]]] = -np.inf
            ranked = np.argsort(-s)
            held_set = set(held.tolist())
            for m, kind, k in parsed:
                kk = min(k, len(s))
                hits = np.array([i in held_set for i in ranked[:kk]], dtype=np.float64)
                if kind == "ndcg":
                    out[m][u] = (hits * disc[:kk]).sum() / disc[:min(len(held), kk)].sum()
                else:
                    out[m][u] = hits.sum() / min(k, len(held))
    return out


@torch.no_grad()
def per_metric_topk_metrics(score: ScoreFn, fold_in: sp.csr_matrix, target: sp.csr_matrix, metrics: tuple[str, ...],
                            batch_size: int) -> dict[str, np.ndarray]:
    """`per_user_metrics` as it was before: a top-k per metric over all items and the target counts by
    `target.sum(1)` over the dense bool matrix, in each metric (each a 2,000 x 20,108 int64 copy)."""
    parsed = {m: parse_metric(m) for m in metrics}
    out: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    for start in range(0, fold_in.shape[0], batch_size):
        rows = slice(start, min(start + batch_size, fold_in.shape[0]))
        x = SparseBatch.from_csr(fold_in, rows)
        scores = score(x).float()
        scores[x.row_of_each(), x.indices] = -torch.inf
        t = SparseBatch.from_csr(target, rows).dense(torch.bool)
        for m, (kind, k) in parsed.items():
            out[m].append(METRICS[kind](scores, t, k).numpy())
    return {m: np.concatenate(v) for m, v in out.items()}


def max_abs_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    worst = 0.0
    for m in a:
        if not np.array_equal(np.isnan(a[m]), np.isnan(b[m])):
            return float("inf")
        ok = ~np.isnan(a[m])
        if ok.any():
            worst = max(worst, float(np.abs(a[m][ok] - b[m][ok]).max()))
    return worst


def popularity_jitter_scorer(train_like: sp.csr_matrix, seed: int) -> ScoreFn:
    """Item counts plus a fixed random offset in [0, 0.5) per item: popularity ranking, no ties."""
    counts = np.asarray(train_like.sum(axis=0)).ravel().astype(np.float64)
    jitter = np.random.default_rng(seed).random(len(counts)) * 0.5
    vec = torch.from_numpy((counts + jitter).astype(np.float32))

    def score(x: SparseBatch) -> torch.Tensor:
        return vec.expand(x.n_rows, -1).clone()
    return score


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.eval_throughput", description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="a few seconds: 300 users x 1,000 items")
    p.add_argument("--users", type=int, default=ML20M_HELDOUT_USERS, help="held-out users evaluated")
    p.add_argument("--items", type=int, default=ML20M_ITEMS)
    p.add_argument("--eval-batch-size", type=int, default=2000)
    p.add_argument("--train-batch-size", type=int, default=500)
    p.add_argument("--train-batches", type=int, default=4, help="training steps timed per round (for the epoch time)")
    p.add_argument("--epoch-batches", type=int, default=ML20M_BATCHES_PER_EPOCH)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--malloc", choices=["default", "keep"], default="default", help="glibc allocator mode (bench.common.set_malloc)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for the JSON (default bench/results)")
    args = p.parse_args(argv)
    if args.tiny:
        args.users, args.items, args.eval_batch_size, args.train_batch_size, args.train_batches, args.rounds = 300, 1000, 100, 64, 2, 1
        args.threads = args.threads or 1
    if min(args.users, args.items, args.eval_batch_size, args.train_batch_size, args.train_batches, args.rounds) < 1:
        p.error("sizes and --rounds must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    set_threads(args.threads or None)
    set_malloc(args.malloc)
    metrics = DEFAULT_METRICS
    ml20m = args.items == ML20M_ITEMS
    activity = 85.6 if ml20m else max(6.0, 85.6 * args.items / ML20M_ITEMS)
    rows = ml20m_like_rows(args.users, args.items, mean_activity=activity, seed=args.seed)
    fold_in, target = heldout_split(rows, seed=args.seed)
    train_rows = ml20m_like_rows(args.train_batches * args.train_batch_size, args.items, mean_activity=activity, seed=args.seed + 1)
    print(f"held-out: {args.users:,} users x {args.items:,} items, {fold_in.nnz:,} fold-in / {target.nnz:,} target "
          f"({int((np.diff(target.indptr) > 0).sum()):,} users with a target); metrics {', '.join(metrics)}; "
          f"eval batch {args.eval_batch_size}; threads {torch.get_num_threads()}; malloc {args.malloc}")

    torch.manual_seed(args.seed)
    model = build_model(args.items, ModelConfig()).eval()
    score = model_scorer(model)

    # Same numbers: ours and the naive evaluator, on the model's scores and on a popularity ranking.
    ours_vals = per_user_metrics(score, fold_in, target, metrics, args.eval_batch_size)
    naive_vals = naive_metrics(score, fold_in, target, metrics, args.eval_batch_size)
    pop = popularity_jitter_scorer(rows, args.seed)
    pop_diff = max_abs_diff(per_user_metrics(pop, fold_in, target, metrics, args.eval_batch_size),
                            naive_metrics(pop, fold_in, target, metrics, args.eval_batch_size))
    model_diff = max_abs_diff(ours_vals, naive_vals)
    assert model_diff <= 1e-9 and pop_diff <= 1e-9, f"ours and the naive evaluator disagree: {model_diff}, {pop_diff}"
    before_diff = max_abs_diff(ours_vals, per_metric_topk_metrics(score, fold_in, target, metrics, args.eval_batch_size))
    assert before_diff <= 1e-12, f"ours disagrees with the top-k-per-metric evaluator: {before_diff}"

    state = ours_state(args.items, args.train_batch_size, args.seed)
    split = as_split(train_rows)

    def scoring_only() -> None:
        with torch.no_grad():
            for start in range(0, fold_in.shape[0], args.eval_batch_size):
                score(SparseBatch.from_csr(fold_in, slice(start, min(start + args.eval_batch_size, fold_in.shape[0]))))

    cases = {
        "train (train_epoch)": lambda: train_epoch(state, split, ANNEAL_STEPS, 0.0, Callback()),
        "ours: per_user_metrics": lambda: per_user_metrics(score, fold_in, target, metrics, args.eval_batch_size),
        "scoring alone (model forward)": scoring_only,
        "before: a top-k per metric, dense counts": lambda: per_metric_topk_metrics(score, fold_in, target, metrics, args.eval_batch_size),
        "naive: per-user numpy argsort": lambda: naive_metrics(score, fold_in, target, metrics, args.eval_batch_size),
    }
    samples = interleave(cases, rounds=args.rounds, warmup=0)   # the agreement checks above were the warm-up
    set_malloc("default")
    st = {k: stats(v) for k, v in samples.items()}
    n_train = train_rows.shape[0] // args.train_batch_size
    epoch = {b: st["train (train_epoch)"][f"{b}_median_s"] / n_train * args.epoch_batches for b in ("wall", "cpu")}
    results: dict[str, Any] = {"epoch_s_extrapolated": epoch, "train_batch_s": {b: epoch[b] / args.epoch_batches for b in epoch}}
    timed = ("ours: per_user_metrics", "scoring alone (model forward)", "before: a top-k per metric, dense counts", "naive: per-user numpy argsort")
    for name in timed:
        results[name] = {**st[name], **{f"users_per_s_{b}": args.users / st[name][f"{b}_median_s"] for b in ("wall", "cpu")},
                         **{f"pct_of_epoch_{b}": 100 * st[name][f"{b}_median_s"] / epoch[b] for b in ("wall", "cpu")}}
    ours_t, naive_t, scoring_t = (st[n] for n in ("ours: per_user_metrics", "naive: per-user numpy argsort", "scoring alone (model forward)"))
    results["ratio_ours_over_naive"] = {b: ours_t[f"{b}_median_s"] / naive_t[f"{b}_median_s"] for b in ("wall", "cpu")}
    results["ratio_ours_over_naive_metrics_only"] = {
        b: (ours_t[f"{b}_median_s"] - scoring_t[f"{b}_median_s"]) / max(1e-9, naive_t[f"{b}_median_s"] - scoring_t[f"{b}_median_s"])
        for b in ("wall", "cpu")}
    results["ratio_ours_over_before"] = {b: ours_t[f"{b}_median_s"] / st["before: a top-k per metric, dense counts"][f"{b}_median_s"] for b in ("wall", "cpu")}
    results["agreement_max_abs_diff"] = {"model_scores": model_diff, "popularity_scores": pop_diff, "before_vs_ours": before_diff}
    results["metric_means_model"] = {m: float(np.nanmean(v)) for m, v in ours_vals.items()}

    headers = ["case", "s wall", "s cpu", "users/s (cpu)", "% of ML-20M epoch (wall)", "% of epoch (cpu)"]
    table = [[n, results[n]["wall_median_s"], results[n]["cpu_median_s"], results[n]["users_per_s_cpu"],
              results[n]["pct_of_epoch_wall"], results[n]["pct_of_epoch_cpu"]]
             for n in timed]
    table.append([f"train epoch ({args.epoch_batches} x {args.train_batch_size}, extrapolated)", epoch["wall"], epoch["cpu"], "", 100.0, 100.0])
    print_table(headers, table)
    r = results["ratio_ours_over_naive"]
    rm = results["ratio_ours_over_naive_metrics_only"]
    print(f"ours / naive time: {r['cpu']:.3f} (cpu), {r['wall']:.3f} (wall); ranking + metrics only: {rm['cpu']:.3f} (cpu)")
    print(f"ours / before time: {results['ratio_ours_over_before']['cpu']:.3f} (cpu)")
    print(f"agreement (max |ours - naive| per user): model {model_diff:.2e}, popularity {pop_diff:.2e}; before vs ours {before_diff:.2e}")

    payload = {
        "machine": machine_info(),
        "config": {"users": args.users, "items": args.items, "fold_in_interactions": int(fold_in.nnz), "target_interactions": int(target.nnz),
                   "metrics": list(metrics), "eval_batch_size": args.eval_batch_size, "train_batch_size": args.train_batch_size,
                   "train_batches_timed": n_train, "epoch_batches": args.epoch_batches, "rounds": args.rounds,
                   "threads": torch.get_num_threads(), "malloc": args.malloc, "tiny": args.tiny,
                   "model": "Mult-VAE [I-600-200-600-I], untrained (scores only need to be realistic in shape)"},
        "results": results,
    }
    path = write_result("eval_throughput", payload, argv, args.out)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
