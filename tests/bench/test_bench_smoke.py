"""Every bench runs end to end at its --tiny size and writes the JSON the README's tables are read from.

No timed assertions: the numbers depend on the machine. What is checked is the shape of the output,
and that the naive implementations the benches compare against compute the same things as ours.
"""

import json

import numpy as np
import torch

from bench import eval_throughput, preprocess, train_throughput
from bench.common import ml20m_like_rows
from multivae.batch import SparseBatch
from multivae.model import ModelConfig, MultiVAE, kl_divergence, reconstruction_loss

MACHINE_KEYS = {"cpu_model", "logical_cores", "torch", "torch_threads", "loadavg_1_5_15"}


def read(path, name):
    doc = json.loads((path / f"{name}.json").read_text())
    assert doc["bench"] == name
    assert doc["command"].startswith(f"python -m bench.{name}")
    assert MACHINE_KEYS <= set(doc["machine"])
    return doc


def test_train_throughput_tiny(tmp_path):
    train_throughput.main(["--tiny", "--out", str(tmp_path)])
    doc = read(tmp_path, "train_throughput")
    (run,) = doc["runs"]
    assert {"default/naive", "default/ours", "default/ours+foreach", "default/ours+bf16"} <= set(run["cases"])
    for row in run["cases"].values():
        assert {"users_per_s_wall", "users_per_s_cpu", "vs_naive_cpu", "pct_of_limit_naive_flops_cpu",
                "pct_of_limit_dense_in_ours_cpu", "epoch_s_ml20m_cpu"} <= set(row)
        assert row["users_per_s_cpu"] > 0
    assert set(run["limits"]) == {"naive_flops", "dense_in_ours", "dense_in_ours_bf16"}
    assert run["cases"]["default/ours+bf16"]["pct_of_limit_dense_in_ours_bf16_cpu"] > 0
    assert {"phase_cpu_s_median", "top_ops"} <= set(doc["profile"]["default"]) and doc["profile"]["default/bf16"]["precision"] == "bf16"
    assert doc["cuda"] is None or set(doc["cuda"]["train"]) == {"fp32", "tf32", "bf16"}


def test_eval_throughput_tiny(tmp_path):
    eval_throughput.main(["--tiny", "--out", str(tmp_path)])
    res = read(tmp_path, "eval_throughput")["results"]
    assert {"epoch_s_extrapolated", "ours: per_user_metrics", "naive: per-user numpy argsort", "ratio_ours_over_naive",
            "agreement_max_abs_diff"} <= set(res)
    assert res["ours: per_user_metrics"]["pct_of_epoch_cpu"] > 0
    assert max(res["agreement_max_abs_diff"].values()) <= 1e-9


def test_preprocess_tiny(tmp_path):
    preprocess.main(["--tiny", "--out", str(tmp_path)])
    doc = read(tmp_path, "preprocess")
    (ds,) = doc["results"].values()
    assert set(ds["cases"]) == {"ours cold", "ours cached", "naive"}
    for case in ds["cases"].values():
        assert {"wall_median_s", "cpu_median_s", "max_rss_mb", "naive_over_this_wall"} <= set(case)
    assert ds["same_matrices_as_naive"]
    assert "ml-1m (--no-movielens)" in doc["skipped"]


def test_flop_count_worked_example():
    # I=1000, B=10: naive = 2*10*(2*1000*600 + 3*(600*400 + 200*600 + 600*1000)); ours drops the first layer
    shape = train_throughput.Shape(n_items=1000, batch=10)
    assert shape.flops_naive() == 2 * 10 * (2 * 1000 * 600 + 3 * (600 * 400 + 200 * 600 + 600 * 1000))
    assert shape.flops_dense_in_ours() == 2 * 10 * 3 * (600 * 400 + 200 * 600 + 600 * 1000)


def test_naive_model_computes_our_loss():
    """With our weights copied in (transposed to nn.Linear's layout), the naive model's loss on the dense
    rows equals ours on the sparse batch, in eval mode (no dropout, z = mu)."""
    rows = ml20m_like_rows(16, 300, mean_activity=12, seed=1)
    torch.manual_seed(0)
    ours = MultiVAE(300, ModelConfig()).eval()
    naive = train_throughput.NaiveMultVAE(300).eval()
    with torch.no_grad():
        for layer, w, b in zip([*naive.q_layers, *naive.p_layers], [*ours.enc_w, *ours.dec_w], [*ours.enc_b, *ours.dec_b]):
            layer.weight.copy_(w.t())
            layer.bias.copy_(b)
    x = SparseBatch.from_csr(rows)
    logits, mu, logvar = ours(x)
    n_logits, n_mu, n_logvar = naive(x.dense())
    expected = reconstruction_loss(logits, x) + 0.2 * kl_divergence(mu, logvar)
    got = train_throughput.naive_loss(n_logits, x.dense(), n_mu, n_logvar, 0.2)
    assert torch.allclose(got, expected, rtol=1e-5)


def test_heldout_split_follows_the_protocol():
    rows = ml20m_like_rows(50, 400, mean_activity=15, seed=2)
    fold_in, target = eval_throughput.heldout_split(rows)
    n = np.diff(rows.indptr)
    assert np.array_equal(np.diff(target.indptr), np.where(n >= 5, (0.2 * n).astype(int), 0))
    assert (fold_in + target != rows).nnz == 0
