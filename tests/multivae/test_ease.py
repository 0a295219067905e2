"""EASE against a hand-computed case and a numpy reference of Steck's formula; the lambda grid, the memory
refusal, the retrain option, `--model ease` end to end, and the given-split search-space template."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from multivae.batch import SparseBatch
from multivae.data import DatasetConfig, load_dataset
from multivae.data.synthetic import SyntheticConfig
from multivae.data.split import ProtocolConfig
from multivae.ease import check_memory, ease_baseline, ease_scorer, ease_weights, fit_ease, gram
from multivae.errors import UserError
from multivae.evaluate import evaluate
from multivae.train import main as train_main


def reference_ease(x: np.ndarray, lam: float) -> np.ndarray:
    """Steck (2019), eq. 8, written as the paper does: B = I - P diag(1 / diag(P))."""
    p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
    return np.eye(x.shape[1]) - p @ np.diag(1.0 / np.diag(p))


def test_two_items_by_hand():
    # G = [[2, 1], [1, 1]], lambda 1: P = [[2, -1], [-1, 3]] / 5, B_01 = -P_01 / P_11 = 1/3, B_10 = -P_10 / P_00 = 1/2
    b = fit_ease(sp.csr_matrix(np.array([[1, 1], [1, 0]], dtype=np.float32)), 1.0)
    np.testing.assert_allclose(b.numpy(), [[0.0, 1 / 3], [1 / 2, 0.0]], rtol=1e-12)


@pytest.mark.parametrize("lam", [0.5, 10.0, 500.0])
def test_weights_match_the_formula_and_zero_the_diagonal(lam):
    rng = np.random.default_rng(int(lam))
    x = (rng.random((80, 30)) < 0.2).astype(np.float32)
    b = ease_weights(gram(sp.csr_matrix(x)), lam)
    assert b.dtype == torch.float64 and (b.diagonal() == 0).all()
    np.testing.assert_allclose(b.numpy(), reference_ease(x.astype(np.float64), lam), rtol=1e-9, atol=1e-12)
    b32 = ease_weights(gram(sp.csr_matrix(x), "float32"), lam)
    assert b32.dtype == torch.float32
    np.testing.assert_allclose(b32.numpy(), b.numpy(), rtol=1e-3, atol=1e-5)
    scores = ease_scorer(b)(SparseBatch.from_csr(sp.csr_matrix(x[:7])))
    np.testing.assert_allclose(scores.numpy(), x[:7] @ b.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="lambda must be > 0"):
        ease_weights(gram(sp.csr_matrix(x)), 0.0)
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match=r"lambda must be > 0 and finite, got (nan|inf)$"):
            ease_weights(gram(sp.csr_matrix(x)), bad)


def test_refuses_a_catalogue_too_large_for_memory_naming_the_bytes():
    gib = 2 ** 30
    with pytest.raises(UserError, match=r"EASE on 100,000 items needs 245\.9 GiB in float64 .* but 200\.0 GiB is available; "
                                        r"float32 would need 122\.9 GiB and fits"):
        check_memory(100_000, "float64", available=200 * gib)
    with pytest.raises(UserError) as err:
        check_memory(100_000, "float64", available=8 * gib)
    assert "float32" not in str(err.value) and "8.0 GiB is available" in str(err.value)
    check_memory(3_000, "float64", available=8 * gib)   # 0.2 GiB: fine


@pytest.fixture(scope="module")
def small_split():
    cfg = DatasetConfig(name="synthetic", synthetic=SyntheticConfig(n_users=600, n_items=150, n_topics=6, seed=3),
                        protocol=ProtocolConfig(heldout_users=100), cache=False)
    return load_dataset(cfg, verbose=False)


def test_baseline_picks_the_best_validation_lambda_and_tests_it_once(small_split):
    grid = (1.0, 30.0, 1000.0, 100000.0)
    r = ease_baseline(small_split, grid=grid, metrics=("ndcg@20", "recall@10"), select_metric="ndcg@20")
    curve = {c["lambda"]: c["val"]["ndcg@20"] for c in r["grid"]}
    assert list(curve) == list(grid) and r["lambda"] == max(curve, key=curve.get)
    assert len(set(curve.values())) == len(grid)                   # lambda changes the model
    b = fit_ease(small_split.train, r["lambda"])
    want = evaluate(ease_scorer(b), small_split.test_fold_in, small_split.test_target, ("ndcg@20", "recall@10"))
    assert r["test"] == pytest.approx(want, rel=1e-12)
    assert r["val"]["ndcg@20"] == curve[r["lambda"]] and r["val"]["ndcg@20_se"] > 0
    assert r["test"]["ndcg@20"] > r["popularity"]["test"]["ndcg@20"]
    assert set(r["metric_definitions"]) == {"ndcg@20", "recall@10"} and r["retrain"] == "none" and r["time_s"] > 0
    with pytest.raises(ValueError, match="select_metric 'ndcg@100' must be one of"):
        ease_baseline(small_split, metrics=("ndcg@20",), select_metric="ndcg@100")


def _lightgcn_files(tmp_path, n_users=120, n_items=40, seed=0):
    rng = np.random.default_rng(seed)
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    tr, te = [], []
    for u in range(n_users):
        items = rng.choice(n_items, size=int(rng.integers(6, 15)), replace=False, p=np.arange(n_items, 0, -1) / (n_items * (n_items + 1) / 2))
        tr.append(f"{u} {' '.join(map(str, items[:-2]))}\n")
        te.append(f"{u} {' '.join(map(str, items[-2:]))}\n")
    train.write_text("".join(tr))
    test.write_text("".join(te))
    return train, test


def test_retrain_refits_on_train_and_valid_with_the_chosen_lambda(tmp_path):
    train, test = _lightgcn_files(tmp_path)
    split = load_dataset(DatasetConfig(name="given", train=str(train), test=str(test), retrain="train+valid"), verbose=False)
    r = ease_baseline(split, grid=(5.0, 50.0), metrics=("recall_n@5", "ndcg@5"))
    b = fit_ease(split.test_fold_in, r["lambda"])                  # every known item: train file rows, held-out ones too
    assert not torch.equal(b, fit_ease(split.train, r["lambda"]))
    want = evaluate(ease_scorer(b), split.test_fold_in, split.test_target, ("recall_n@5", "ndcg@5"))
    assert r["retrain"] == "train+valid" and r["test"] == pytest.approx(want, rel=1e-12)
    assert r["val"] == next(c["val"] for c in r["grid"] if c["lambda"] == r["lambda"])   # before the refit


def test_cli_ease_on_a_lightgcn_split_writes_metrics_with_definitions(tmp_path, capsys):
    train, test = _lightgcn_files(tmp_path)
    out = tmp_path / "run"
    assert train_main(["--train-file", str(train), "--test-file", str(test), "--model", "ease", "--ease-lambda", "5", "50",
                       "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["model"] == "ease" and report["lambda"] in (5.0, 50.0) and [c["lambda"] for c in report["grid"]] == [5.0, 50.0]
    assert report["select_metric"] == "recall_n@20" and set(report["metric_definitions"]) == {"recall_n@20", "ndcg@20", "precision@20"}
    assert {"val", "test", "popularity"} <= set(report) and math.isfinite(report["test"]["recall_n@20_se"])
    assert report["dataset"]["name"] == "given" and report["split"]["format"] == "lightgcn"
    assert "recall_n@20" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--model", "vae", "--ease-lambda", "10"], "--ease-lambda needs --model ease"),
    (["--model", "ease", "--ease-lambda", "0"], "values > 0"),
    (["--model", "ease", "--ease-lambda", "nan"], "--ease-lambda needs values > 0 (and finite), got nan"),   # was a LinAlgError
    (["--model", "ease", "--ease-lambda", "10", "inf"], "--ease-lambda needs values > 0 (and finite), got inf"),   # ranked by NaN
    (["--valid-file", "v.txt"], "need --train-file and --test-file"),
    (["--train-file", "a.txt"], "needs train and test files"),
])
def test_cli_rejects_bad_flags_in_one_line_and_writes_nothing(tmp_path, argv, message, capsys):
    from multivae.errors import run_cli

    out = tmp_path / "run"
    assert run_cli(train_main, [*argv, "--out", str(out)], prog="multivae.train") == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()


def test_given_split_search_space_parses():
    from tuning.space import load_space

    space = load_space("given_split")
    assert space.dataset.name == "given" and space.dataset.format == "lightgcn" and space.dataset.retrain == "none"
    assert space.search.metric == "recall_n@20"


def test_cli_retrain_refits_mult_vae_on_train_and_valid_for_the_best_epochs(tmp_path):
    import torch as _torch

    from multivae.checkpoint import CHECKPOINT_NAME

    train, test = _lightgcn_files(tmp_path)
    out = tmp_path / "run"
    assert train_main(["--train-file", str(train), "--test-file", str(test), "--retrain", "train+valid", "--epochs", "3",
                       "--batch-size", "50", "--hidden-dims", "16", "--latent-dim", "8", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    best = report["best"]["epoch"]
    assert report["retrain"] == {"on": "train+valid", "epochs": best}
    again = _torch.load(out / "retrain" / CHECKPOINT_NAME, weights_only=True)
    assert again["epoch"] == best                                      # trained for the chosen epochs, on more rows
    assert again["global_step"] == best * math.ceil(120 / 50)


def test_a_memory_refusal_after_the_data_is_read_leaves_no_out_folder(tmp_path, capsys, monkeypatch):
    """EASE's memory check needs the catalogue, so it runs after the data is read, but still before --out is made."""
    import multivae.ease
    from multivae.errors import run_cli

    train, test = _lightgcn_files(tmp_path)
    monkeypatch.setattr(multivae.ease, "available_memory", lambda: 1000)
    out = tmp_path / "run"
    assert run_cli(train_main, ["--train-file", str(train), "--test-file", str(test), "--model", "ease", "--out", str(out)],
                   prog="multivae.train") == 2
    assert "EASE on 40 items needs" in capsys.readouterr().err and not out.exists()
