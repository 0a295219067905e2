"""Batch recommendation throughput: users/s of `multivae-recommend --all-users`, against the matmul limit.

    python -m bench.recommend_throughput --threads 1     # 10,000 known users x 20,108 items (ML-20M-shaped), k = 10
    python -m bench.recommend_throughput --tiny          # seconds; what the smoke test runs

ours:    `Recommender.recommend_all` (forward, mask everything the user has, top-k, probabilities, DataFrame);
top_k:   `multivae.recommend.top_k` alone (no DataFrame); forward: the model's forward alone.
limits:  the forward's matmuls alone, at their shapes, in the same run, on random matrices:
         "matmuls ours does": [B,600]@[600,400], [B,200]@[200,600], [B,600]@[600,I] per batch (the first
         layer is a sparse embedding-bag sum, not a matmul); "dense forward": those plus the dense first layer
         [B,I]@[I,600] that a reference-style implementation would run.
The bench first checks that ours returns what a slow per-user numpy ranking returns.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np
import torch

from bench.common import ML20M_ITEMS, interleave, machine_info, ml20m_like_rows, print_table, set_threads, stats, write_result
from multivae.batch import SparseBatch
from multivae.model import ModelConfig, build_model
from multivae.recommend import Recommender, top_k


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.recommend_throughput", description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="a few seconds: 300 users x 1,000 items")
    p.add_argument("--users", type=int, default=10_000, help="known users scored")
    p.add_argument("--items", type=int, default=ML20M_ITEMS)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=2000, help="users per forward pass (the CLI's default)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for the JSON (default bench/results)")
    args = p.parse_args(argv)
    if args.tiny:
        args.users, args.items, args.batch_size, args.rounds = 300, 1000, 100, 1
        args.threads = args.threads or 1
    if min(args.users, args.items, args.batch_size, args.rounds, args.k) < 1:
        p.error("sizes, -k and --rounds must be >= 1")
    return args


def slow_reference(model: torch.nn.Module, rows, k: int, n: int) -> list[list[int]]:
    """Per user in numpy: softmax over everything, the user's items set to -inf, argsort."""
    out = []
    with torch.no_grad():
        logits = model(torch.from_numpy(rows[:n].toarray()))[0].double().numpy()
    for r in range(n):
        s = logits[r].copy()
        s[rows[r].indices] = -np.inf
        out.append(np.argsort(-s, kind="stable")[:k].tolist())
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    set_threads(args.threads or None)
    activity = 85.6 if args.items == ML20M_ITEMS else max(6.0, 85.6 * args.items / ML20M_ITEMS)
    known = ml20m_like_rows(args.users, args.items, mean_activity=activity, seed=args.seed)
    torch.manual_seed(args.seed)
    cfg = ModelConfig()
    model = build_model(args.items, cfg).eval()
    rec = Recommender(model, np.arange(args.items) + 1, np.arange(args.users) + 1, known)
    print(f"{args.users:,} known users x {args.items:,} items ({known.nnz:,} interactions), k {args.k}, batch {args.batch_size}, "
          f"threads {torch.get_num_threads()}; Mult-VAE [I-600-200-600-I]")

    idx, _ = top_k(model, known, args.k, args.batch_size)
    n_check = min(20, args.users)
    agree = [sorted(a) == sorted(b) for a, b in zip(idx[:n_check].tolist(), slow_reference(model, known, args.k, n_check))]
    assert all(agree), "top_k disagrees with the per-user numpy reference"

    batches = [(s, min(s + args.batch_size, args.users)) for s in range(0, args.users, args.batch_size)]
    hidden, latent = cfg.hidden[0], cfg.latent_dim
    g = torch.Generator().manual_seed(args.seed)
    mats = {(b, d_in, d_out): (torch.randn(b, d_in, generator=g), torch.randn(d_in, d_out, generator=g))
            for b in {e - s for s, e in batches}
            for d_in, d_out in ((hidden, 2 * latent), (latent, hidden), (hidden, args.items), (args.items, hidden))}

    def matmuls(shapes) -> None:
        for s, e in batches:
            for d_in, d_out in shapes:
                a, w = mats[(e - s, d_in, d_out)]
                torch.mm(a, w)

    ours_shapes = ((hidden, 2 * latent), (latent, hidden), (hidden, args.items))
    dense_shapes = ((args.items, hidden), *ours_shapes)

    def forward_only() -> None:
        with torch.no_grad():
            for s, e in batches:
                model(SparseBatch.from_csr(known, slice(s, e)))

    import contextlib
    import io

    def ours() -> None:
        with contextlib.redirect_stderr(io.StringIO()):
            rec.recommend_all(args.k, args.batch_size)

    cases = {
        "ours: Recommender.recommend_all (DataFrame)": ours,
        "top_k (forward, mask, top-k, probabilities)": lambda: top_k(model, known, args.k, args.batch_size),
        "forward alone": forward_only,
        "limit: the matmuls ours does": lambda: matmuls(ours_shapes),
        "limit: dense forward's matmuls": lambda: matmuls(dense_shapes),
    }
    samples = interleave(cases, rounds=args.rounds, warmup=1)
    st = {k: stats(v) for k, v in samples.items()}
    lim_ours, lim_dense = st["limit: the matmuls ours does"], st["limit: dense forward's matmuls"]
    results: dict[str, Any] = {}
    for name, s in st.items():
        results[name] = {**s, **{f"users_per_s_{b}": args.users / s[f"{b}_median_s"] for b in ("wall", "cpu")},
                         **{f"pct_of_limit_ours_matmuls_{b}": 100 * lim_ours[f"{b}_median_s"] / s[f"{b}_median_s"] for b in ("wall", "cpu")},
                         **{f"pct_of_limit_dense_{b}": 100 * lim_dense[f"{b}_median_s"] / s[f"{b}_median_s"] for b in ("wall", "cpu")}}
    headers = ["case", "s wall", "s cpu", "users/s (cpu)", "% of ours-matmul limit (cpu)", "% of dense-matmul limit (cpu)"]
    print_table(headers, [[n, r["wall_median_s"], r["cpu_median_s"], r["users_per_s_cpu"], r["pct_of_limit_ours_matmuls_cpu"],
                           r["pct_of_limit_dense_cpu"]] for n, r in results.items()])
    payload = {
        "machine": machine_info(),
        "config": {"users": args.users, "items": args.items, "interactions": int(known.nnz), "k": args.k, "batch_size": args.batch_size,
                   "rounds": args.rounds, "threads": torch.get_num_threads(), "tiny": args.tiny,
                   "model": "Mult-VAE [I-600-200-600-I], untrained (the cost does not depend on the weights)"},
        "agreement_with_numpy_reference": {"users_checked": n_check, "all_equal": all(agree)},
        "results": results,
    }
    path = write_result("recommend_throughput", payload, argv, args.out)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
