"""The model, its losses and the KL schedule against hand-computed values and the reference's definitions."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from multivae.batch import SparseBatch
from multivae.data.split import binary_csr
from multivae.model import ModelConfig, MultiDAE, MultiVAE, build_model, kl_divergence, kl_weight, l2_penalty, reconstruction_loss


def random_rows(n=6, items=40, density=0.2, seed=0) -> sp.csr_matrix:
    m = sp.random(n, items, density=density, format="csr", random_state=seed, dtype=np.float32)
    m.data[:] = 1
    return m


@pytest.mark.parametrize("step,expected", [(0, 0.0), (10_000, 0.1), (20_000, 0.2), (30_000, 0.2)])
def test_kl_weight_worked_example(step, expected):
    assert kl_weight(step, cap=0.2, anneal_steps=20_000) == pytest.approx(expected)


def test_kl_weight_zero_anneal_steps_is_constant_cap():
    assert kl_weight(0, cap=0.3, anneal_steps=0) == 0.3
    assert kl_weight(10**6, cap=0.3, anneal_steps=0) == 0.3


def test_kl_weight_matches_reference_form():
    # reference: min(anneal_cap, update_count / total_anneal_steps); ours with anneal_steps = cap * total
    total, cap = 200_000, 0.2
    for step in [0, 1, 999, 39_999, 40_000, 123_456]:
        assert kl_weight(step, cap, int(cap * total)) == pytest.approx(min(cap, step / total))


def test_l2_normalization_example():
    # a user with 3 items: every input value is 1/sqrt(3), in the sparse and the dense path alike
    model = MultiVAE(4, ModelConfig(hidden_dims=(3,), latent_dim=2)).eval()
    x = binary_csr(np.array([0, 0, 0]), np.array([0, 1, 2]), (1, 4))
    vals = model._input_values(SparseBatch.from_csr(x))
    assert torch.allclose(vals, torch.full((3,), 1 / math.sqrt(3)))
    dense = F.normalize(torch.tensor([[1.0, 1.0, 1.0, 0.0]]), dim=1)
    assert torch.allclose(dense[0, :3], torch.full((3,), 1 / math.sqrt(3)))


def test_multinomial_loss_hand_computed():
    # probabilities 0.5, 0.3, 0.2 as logits; user 1 has items {1, 2}, user 2 has item {0}
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]]))
    x = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    expected = (-(math.log(0.3) + math.log(0.2)) + -math.log(0.5)) / 2   # = 1.7533
    assert reconstruction_loss(logits, x, "multinomial").item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(1.7533, abs=1e-4)


def test_bernoulli_and_gaussian_hand_computed():
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    x = torch.tensor([[1.0, 0.0, 1.0]])
    sig = lambda v: 1 / (1 + math.exp(-v))
    bce = -(math.log(sig(0.0)) + math.log(1 - sig(2.0)) + math.log(sig(-1.0)))
    assert reconstruction_loss(logits, x, "bernoulli").item() == pytest.approx(bce, rel=1e-6)
    # the paper's sum c/2 (x - f)^2 with c = 1
    assert reconstruction_loss(logits, x, "gaussian").item() == pytest.approx(0.5 * ((1 - 0) ** 2 + 2.0 ** 2 + (1 + 1) ** 2))


@pytest.mark.parametrize("likelihood", ["multinomial", "bernoulli", "gaussian"])
def test_sparse_and_dense_paths_agree(likelihood):
    m = random_rows()
    model = MultiVAE(m.shape[1], ModelConfig(hidden_dims=(16,), latent_dim=8, likelihood=likelihood)).eval()
    xs, xd = SparseBatch.from_csr(m), torch.from_numpy(m.toarray())
    ls, mus, _ = model(xs)
    ld, mud, _ = model(xd)
    assert torch.allclose(ls, ld, atol=1e-5) and torch.allclose(mus, mud, atol=1e-6)
    assert reconstruction_loss(ls, xs, likelihood).item() == pytest.approx(reconstruction_loss(ld, xd, likelihood).item(), rel=1e-5)


def test_kl_divergence_matches_closed_form_and_reference():
    mu = torch.tensor([[0.5, -1.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.2, -0.3], [0.0, 0.0]])
    ref = torch.mean(torch.sum(0.5 * (-logvar + logvar.exp() + mu ** 2 - 1), dim=1))   # the notebook's form
    assert kl_divergence(mu, logvar).item() == pytest.approx(ref.item())
    # per-dimension KL of N(0.5, e^0.2) and N(-1, e^-0.3), by hand
    by_hand = 0.5 * (-0.2 + math.exp(0.2) + 0.25 - 1) + 0.5 * (0.3 + math.exp(-0.3) + 1 - 1)
    assert kl_divergence(mu[:1], logvar[:1]).item() == pytest.approx(by_hand, rel=1e-6)
    assert kl_divergence(mu[1:], logvar[1:]).item() == 0.0


def test_reparameterization_samples_in_training_and_uses_mu_in_eval():
    torch.manual_seed(0)
    model = MultiVAE(30, ModelConfig(hidden_dims=(16,), latent_dim=4, dropout=0.0))
    mu = torch.tensor([[1.0, -2.0, 0.0, 3.0]]).repeat(20_000, 1)
    logvar = torch.log(torch.tensor([[0.25, 1.0, 4.0, 0.01]])).repeat(20_000, 1)
    model.eval()
    assert torch.equal(model.reparameterize(mu, logvar), mu)
    model.train()
    z = model.reparameterize(mu, logvar)
    assert torch.allclose(z.mean(0), mu[0], atol=0.05)
    assert torch.allclose(z.std(0), torch.tensor([0.5, 1.0, 2.0, 0.1]), rtol=0.05)
    # end to end: eval forward is deterministic, training forward is not
    x = SparseBatch.from_csr(random_rows(items=30))
    model.eval()
    assert torch.equal(model(x)[0], model(x)[0])
    model.train()
    assert not torch.equal(model(x)[0], model(x)[0])


def test_architecture_and_init_follow_the_reference():
    vae = MultiVAE(1000)
    assert [tuple(w.shape) for w in vae.enc_w] == [(1000, 600), (600, 400)]   # last layer: mu and logvar
    assert [tuple(w.shape) for w in vae.dec_w] == [(200, 600), (600, 1000)]
    dae = build_model(1000, ModelConfig(model="dae"))
    assert isinstance(dae, MultiDAE)
    assert [tuple(w.shape) for w in dae.weights()] == [(1000, 200), (200, 1000)]   # [I-200-I]
    w = vae.enc_w[0].detach()
    limit = math.sqrt(6 / (1000 + 600))
    assert w.abs().max() <= limit and w.abs().max() > 0.9 * limit       # Xavier-uniform
    b = torch.cat([p.detach() for p in [*vae.enc_b, *vae.dec_b]])
    assert b.abs().max() <= 0.002 and 0.0007 < b.std() < 0.0012          # truncated normal, std 0.001


def test_dropout_applies_only_in_training():
    m = random_rows(n=50, items=200, density=0.3)
    model = MultiVAE(200, ModelConfig(hidden_dims=(8,), latent_dim=4, dropout=0.5))
    x = SparseBatch.from_csr(m)
    model.train()
    vals = model._input_values(x)
    kept = (vals != 0).float().mean().item()
    assert 0.4 < kept < 0.6
    # kept entries are scaled by 1 / keep_prob
    norms = torch.repeat_interleave(x.counts().float().rsqrt(), x.counts())
    assert torch.allclose(vals[vals != 0], 2 * norms[vals != 0])
    model.eval()
    assert torch.allclose(model._input_values(x), norms)


def test_l2_penalty_covers_weights_not_biases():
    model = MultiDAE(5, ModelConfig(model="dae", latent_dim=3))
    expected = 0.01 * sum((w ** 2).sum() for w in [model.enc_w[0], model.dec_w[0]])
    assert l2_penalty(model, 0.01).item() == pytest.approx(expected.item())
    assert l2_penalty(model, 0.0) == 0.0


def test_binary_csr_collapses_duplicates():
    m = binary_csr(np.array([0, 0, 0, 1]), np.array([2, 2, 3, 0]), (2, 4))
    assert m.nnz == 3 and set(m.data.tolist()) == {1.0}
    assert m.toarray().tolist() == [[0, 0, 1, 1], [1, 0, 0, 0]]


@pytest.mark.parametrize("bad", [dict(latent_dim=0), dict(dropout=1.0), dict(hidden_dims=(0,))])
def test_model_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        ModelConfig(**bad)
