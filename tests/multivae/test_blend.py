"""multivae.blend: the Mult-VAE beside EASE (train.ease_blend), against hand-computed values and a slow numpy
reference of the whole blended ranking."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from multivae.batch import SparseBatch
from multivae.blend import blend_scorer, standardize, trained_scorer
from multivae.evaluate import evaluate, model_scorer
from tests.multivae.helpers import small_split


def test_standardize_matches_hand_computed_rows():
    s = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    z = standardize(s)
    sd = math.sqrt(2 / 3)   # population std of 1, 2, 3
    assert torch.allclose(z[0], torch.tensor([-1 / sd, 0.0, 1 / sd]))
    assert torch.equal(z[1], torch.zeros(3))   # a row of equal scores: zeros, not nan


def test_blend_is_the_weighted_sum_of_standardized_scores():
    a = torch.tensor([[0.0, 1.0, 2.0, 7.0]])
    b = torch.tensor([[4.0, 0.0, 2.0, 2.0]])
    w = 0.25
    got = blend_scorer(lambda x: a, lambda x: b, w)(None)
    za = (a - a.mean()) / a.std(unbiased=False)
    zb = (b - b.mean()) / b.std(unbiased=False)
    assert torch.allclose(got, 0.75 * za + 0.25 * zb)
    # the rankings differ from each part's: the blend is neither model
    assert got.argsort().tolist() != a.argsort().tolist() and got.argsort().tolist() != b.argsort().tolist()


def test_weight_zero_is_the_plain_model_scorer_and_fits_no_ease():
    split = small_split(n_users=200, n_items=150, heldout=20)
    from multivae.model import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(split.n_items, ModelConfig(hidden_dims=(16,), latent_dim=8)).eval()
    x = SparseBatch.from_csr(split.val_fold_in, slice(0, 10))
    plain = model_scorer(model)(x)
    got = trained_scorer(model, SimpleNamespace(ease_blend=0.0, ease_lambda=500.0))(x)   # no rows: nothing fitted
    assert torch.equal(got, plain)
    with pytest.raises(ValueError, match="training rows"):
        trained_scorer(model, SimpleNamespace(ease_blend=0.3, ease_lambda=500.0))


def test_blended_validation_equals_a_slow_numpy_reference():
    """EASE's B from numpy's inverse, the z-scores by hand, the NDCG@100 by multivae.evaluate over a scorer that
    returns the reference scores: equal to the blended scorer's to 1e-6."""
    from multivae.model import ModelConfig, build_model

    split = small_split(n_users=300, n_items=150, heldout=30)
    torch.manual_seed(1)
    model = build_model(split.n_items, ModelConfig(hidden_dims=(16,), latent_dim=8)).eval()
    lam, w = 50.0, 0.4
    cfg = SimpleNamespace(ease_blend=w, ease_lambda=lam)
    got = evaluate(trained_scorer(model, cfg, train=split.train), split.val_fold_in, split.val_target, ("ndcg@100",))

    x_train = split.train.toarray().astype(np.float64)
    p = np.linalg.inv(x_train.T @ x_train + lam * np.eye(split.n_items))
    b_ref = -p / np.diag(p)[None, :]
    np.fill_diagonal(b_ref, 0.0)

    def ref(x: SparseBatch) -> torch.Tensor:
        dense = x.dense(torch.float64).numpy()
        with torch.no_grad():
            logits = model(x)[0].double().numpy()
        e = dense @ b_ref

        def z(s):
            return (s - s.mean(axis=1, keepdims=True)) / s.std(axis=1, keepdims=True)
        return torch.from_numpy((1 - w) * z(logits) + w * z(e))

    want = evaluate(ref, split.val_fold_in, split.val_target, ("ndcg@100",))
    assert got["ndcg@100"] == pytest.approx(want["ndcg@100"], abs=1e-6)
    plain = evaluate(model_scorer(model), split.val_fold_in, split.val_target, ("ndcg@100",))
    assert abs(got["ndcg@100"] - plain["ndcg@100"]) > 1e-3   # the blend changed the ranking


def test_a_blended_model_folder_serves_the_blend_and_refuses_damage(tmp_path):
    """save_model_dir keeps EASE's B beside the weights; recommend ranks by the blend (the same top items as a
    hand ranking of (1-w) z(logits) + w z(x B) without the user's items) and labels the scores; a missing,
    corrupt or misshapen ease_weights.npy is one UserError line naming the file."""
    from multivae.artifact import EASE_WEIGHTS, known_from_split, load_model_dir, save_model_dir
    from multivae.ease import fit_ease
    from multivae.errors import UserError
    from multivae.model import ModelConfig, build_model
    from multivae.recommend import load

    split = small_split(n_users=300, n_items=150, heldout=30)
    cfg = ModelConfig(hidden_dims=(16,), latent_dim=8)
    torch.manual_seed(2)
    model = build_model(split.n_items, cfg).eval()
    w, lam = 0.3, 50.0
    b = fit_ease(split.train, lam)
    train_cfg = {"ease_blend": w, "ease_lambda": lam}
    with pytest.raises(ValueError, match="ease_weights must be given"):
        save_model_dir(tmp_path / "m0", model, cfg, split.item_ids, known_from_split(split), train_config=train_cfg)
    d = save_model_dir(tmp_path / "m", model, cfg, split.item_ids, known_from_split(split), train_config=train_cfg, ease_weights=b)
    rec = load(d)
    users = list(rec.user_ids[:5])
    df = rec.recommend(users=users, k=5)
    assert "blend score" in df.attrs["score"]
    rows = rec.known[:5]
    x = SparseBatch.from_csr(rows, slice(0, 5))
    with torch.no_grad():
        logits = model(x)[0].double()
    e = torch.from_numpy(rows.toarray()).double() @ b.double()
    z = lambda s: (s - s.mean(1, keepdim=True)) / s.std(1, unbiased=False, keepdim=True)   # noqa: E731
    ref = (1 - w) * z(logits) + w * z(e)
    ref[torch.from_numpy(rows.toarray()) > 0] = -math.inf
    for r, u in enumerate(users):
        want = [int(rec.item_ids[i]) for i in ref[r].argsort(descending=True)[:5]]
        assert df[df["user"] == u]["item"].tolist() == want
    plain = load_model_dir(d)
    assert plain.ease_weights is not None and plain.meta["ease_blend"] == {"weight": w, "lambda": lam, "file": EASE_WEIGHTS}

    np.save(d / EASE_WEIGHTS, np.zeros((3, 3), dtype=np.float32))
    with pytest.raises(UserError, match=rf"{EASE_WEIGHTS}: must be a float32 150 x 150 matrix, got float32 of shape \[3, 3\]"):
        load_model_dir(d)
    (d / EASE_WEIGHTS).write_bytes(b"not numpy")
    with pytest.raises(UserError, match=rf"{EASE_WEIGHTS}: not a readable EASE matrix"):
        load_model_dir(d)
    (d / EASE_WEIGHTS).unlink()
    with pytest.raises(UserError, match=rf"{EASE_WEIGHTS}: file not found"):
        load_model_dir(d)
