"""Benchmarks: `python -m bench.<name>` prints a table and writes `bench/results/<name>.json`.

train_throughput: training users/s, ours against a reference-style dense implementation and the matmul limit.
eval_throughput:  NDCG@100 + Recall@20/50 over 10,000 held-out users, against a per-user numpy evaluator.
preprocess:       read + filter + split + CSR time and peak memory, cold and cached, against the reference's pandas.
"""
