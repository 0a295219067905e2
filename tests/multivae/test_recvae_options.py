"""The RecVAE options (decoder_dims, prior composite, kl_scale interactions, alternating updates): their math,
their training mechanics, exact resume, and that with every option at its default nothing changes."""

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from multivae.batch import SparseBatch
from multivae.config import from_dict
from multivae.errors import UserError
from multivae.model import (ModelConfig, MultiDAE, MultiVAE, build_model, composite_log_prior, kl_divergence, kl_monte_carlo, kl_weight,
                            l2_penalty, log_normal_pdf, reconstruction_loss, state_shapes)
from multivae.training import (Callback, TrainConfig, _one_pass, _StepLog, batch_loss, fit, init_state, resolved_anneal_steps, restore_state,
                               save_state, train_epoch)

from .helpers import small_split

SMALL = ModelConfig(hidden_dims=(32,), latent_dim=16)
RECVAE = dataclasses.replace(SMALL, decoder_dims=(), prior="composite", kl_scale="interactions")


@pytest.fixture(scope="module")
def split():
    return small_split()


# --- the pure functions ---------------------------------------------------------------------------

def test_log_normal_pdf_matches_hand_values():
    z = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    mu = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    logvar = torch.tensor([[0.0, math.log(4.0)]], dtype=torch.float64)
    # N(0.5; 0, 1) and N(-1; 1, 4): log of exp(-(z-m)^2 / 2v) / sqrt(2 pi v)
    expected = [math.log(math.exp(-0.25 / 2) / math.sqrt(2 * math.pi)),
                math.log(math.exp(-4.0 / 8) / math.sqrt(2 * math.pi * 4))]
    assert log_normal_pdf(z, mu, logvar)[0].tolist() == pytest.approx(expected, rel=1e-12)


def test_composite_log_prior_matches_hand_values():
    z = torch.tensor([[0.3, -2.0]], dtype=torch.float64)
    mu_old = torch.tensor([[0.1, 1.5]], dtype=torch.float64)
    var_old = [0.25, 0.5]
    logvar_old = torch.log(torch.tensor([var_old], dtype=torch.float64))

    def pdf(v, m, var):
        return math.exp(-(v - m) ** 2 / (2 * var)) / math.sqrt(2 * math.pi * var)

    expected = [math.log(3 / 20 * pdf(zv, 0, 1) + 3 / 4 * pdf(zv, m, v) + 1 / 10 * pdf(zv, 0, math.exp(10)))
                for zv, m, v in zip([0.3, -2.0], [0.1, 1.5], var_old)]
    got = composite_log_prior(z, mu_old, logvar_old)
    assert got.shape == (1, 2)                                   # elementwise: per user and latent dimension
    assert got[0].tolist() == pytest.approx(expected, rel=1e-12)


def test_kl_monte_carlo_against_a_standard_normal_approaches_the_exact_kl():
    g = torch.Generator().manual_seed(0)
    n = 1_000_000
    mu = torch.tensor([0.5, -1.0], dtype=torch.float64).expand(n, 2)
    logvar = torch.log(torch.tensor([0.5, 2.0], dtype=torch.float64)).expand(n, 2)
    z = mu + torch.randn(n, 2, generator=g, dtype=torch.float64) * torch.exp(0.5 * logvar)
    per_user = kl_monte_carlo(z, mu, logvar, log_normal_pdf(z, 0.0, 0.0))
    assert per_user.shape == (n,)
    exact = 0.5 * sum(v + m * m - 1 - math.log(v) for m, v in [(0.5, 0.5), (-1.0, 2.0)])   # = 0.875
    assert exact == pytest.approx(0.875)
    se = per_user.std().item() / math.sqrt(n)            # about 0.0017: the estimate's sd per sample is about 1.66
    # tolerance: 4 standard errors of the mean, which is itself below 0.01
    assert 4 * se < 0.01
    assert abs(per_user.mean().item() - exact) < 4 * se


# --- decoder_dims -----------------------------------------------------------------------------------

@pytest.mark.parametrize("decoder_dims, shapes", [((), [(8, 50)]), ((300,), [(8, 300), (300, 50)]),
                                                   ((600, 300), [(8, 600), (600, 300), (300, 50)])])
def test_decoder_dims_shapes(decoder_dims, shapes):
    cfg = ModelConfig(hidden_dims=(40,), latent_dim=8, decoder_dims=decoder_dims)
    model = MultiVAE(50, cfg)
    assert [tuple(w.shape) for w in model.dec_w] == shapes
    assert [tuple(b.shape) for b in model.dec_b] == [s[1:] for s in shapes]
    assert [tuple(w.shape) for w in model.enc_w] == [(50, 40), (40, 16)]   # the encoder is not touched
    expected = {f"dec_w.{i}": s for i, s in enumerate(shapes)}
    assert {k: v for k, v in state_shapes(50, cfg).items() if k.startswith("dec_w")} == expected


def test_decoder_dims_none_is_the_mirror_and_dae_follows():
    torch.manual_seed(3)
    mirror = MultiVAE(50, ModelConfig(hidden_dims=(40, 20), latent_dim=8))
    torch.manual_seed(3)
    explicit = MultiVAE(50, ModelConfig(hidden_dims=(40, 20), latent_dim=8, decoder_dims=(20, 40)))
    assert [tuple(w.shape) for w in mirror.dec_w] == [(8, 20), (20, 40), (40, 50)]
    assert all(torch.equal(a, b) for a, b in zip(mirror.state_dict().values(), explicit.state_dict().values()))
    dae = MultiDAE(50, ModelConfig(model="dae", latent_dim=8, decoder_dims=(30,)))
    assert [tuple(w.shape) for w in dae.enc_w] == [(50, 8)] and [tuple(w.shape) for w in dae.dec_w] == [(8, 30), (30, 50)]
    assert state_shapes(50, dae.config)["dec_w.0"] == (8, 30)


def test_l2_penalty_of_one_half():
    model = MultiVAE(20, ModelConfig(hidden_dims=(6,), latent_dim=3))
    enc = sum(float((w.detach() ** 2).sum()) for w in model.enc_w)
    dec = sum(float((w.detach() ** 2).sum()) for w in model.dec_w)
    with torch.no_grad():
        assert float(l2_penalty(model, 0.5, "encoder")) == pytest.approx(0.5 * enc)
        assert float(l2_penalty(model, 0.5, "decoder")) == pytest.approx(0.5 * dec)
        assert float(l2_penalty(model, 0.5)) == pytest.approx(0.5 * (enc + dec))


# --- the per-user KL weight and the composite prior in the loss ---------------------------------------

def _two_users():
    return SparseBatch(indices=torch.tensor([4, 1, 7, 9]), offsets=torch.tensor([0, 1, 4]), n_items=12)   # 1 and 3 items


@torch.no_grad()
def _by_hand(model, x, rows, beta, kl_of):
    logits, mu, logvar = model(x)
    logp = F.log_softmax(logits.double(), dim=1)
    terms = []
    for u, items in enumerate(rows):
        recon_u = -sum(logp[u, i].item() for i in items)
        terms.append(recon_u + beta * len(items) * kl_of(u, mu.double(), logvar.double()))
    return sum(terms) / len(terms)


def test_kl_scale_interactions_weighs_each_user_by_its_interactions():
    torch.manual_seed(0)
    state = init_state(12, ModelConfig(hidden_dims=(5,), latent_dim=3, kl_scale="interactions"), TrainConfig(device="cpu"))
    state.model.eval()                       # no dropout, z = mu: the loss is a function of the outputs alone
    x, beta = _two_users(), 0.3
    loss, recon, kl = batch_loss(state, x, beta, lam=0.0)

    def exact_kl(u, mu, logvar):
        return 0.5 * sum(math.exp(lv) + m * m - 1 - lv for m, lv in zip(mu[u].tolist(), logvar[u].tolist()))

    expected = _by_hand(state.model, x, [[4], [1, 7, 9]], beta, exact_kl)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # the logged kl stays the unweighted mean per-user KL, and the constant weight would give another loss
    logits, mu, logvar = state.model(x)
    assert kl.item() == pytest.approx(kl_divergence(mu, logvar).item(), rel=1e-6)
    assert (recon + beta * kl).item() != pytest.approx(loss.item(), rel=1e-3)


def test_composite_prior_loss_uses_the_frozen_encoder():
    torch.manual_seed(0)
    state = init_state(12, ModelConfig(hidden_dims=(5,), latent_dim=3, prior="composite", kl_scale="interactions"), TrainConfig(device="cpu"))
    model = state.model.eval()
    # a frozen copy that differs from the live encoder
    state.prior_encoder = {k: v + 0.1 for k, v in model.encoder_state().items()}
    x, beta = _two_users(), 0.2
    loss, _, kl = batch_loss(state, x, beta, lam=0.0)
    with torch.no_grad():
        mu_old, logvar_old = model.encode_frozen(state.prior_encoder, x)
    assert not torch.equal(mu_old, model.encode(x)[0])

    def mc_kl(u, mu, logvar):                  # at z = mu (eval mode), from the functions checked above
        z = mu[u:u + 1]
        return float((log_normal_pdf(z, z, logvar[u:u + 1]) - composite_log_prior(z, mu_old[u:u + 1].double(),
                                                                                  logvar_old[u:u + 1].double())).sum())

    assert loss.item() == pytest.approx(_by_hand(model, x, [[4], [1, 7, 9]], beta, mc_kl), rel=1e-5)
    state.prior_encoder = model.encoder_state()
    assert batch_loss(state, x, beta, lam=0.0)[0].item() != pytest.approx(loss.item(), rel=1e-4)


# --- alternating updates --------------------------------------------------------------------------------

def _snapshot(state, params):
    opt = state.optimizer
    return ([p.detach().clone() for p in params],
            [{k: v.clone() for k, v in opt.state[p].items()} for p in params])


def _same(a, b):
    (pa, sa), (pb, sb) = a, b
    return (all(torch.equal(x, y) for x, y in zip(pa, pb))
            and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(sa, sb)))


def test_alternating_passes_update_one_half_and_leave_the_other_and_its_adam_state_alone(split):
    cfg = TrainConfig(epochs=1, batch_size=100, alternating=True, encoder_passes=1, decoder_passes=1, seed=5, weight_decay=1e-4)
    state = init_state(split.n_items, RECVAE, cfg)
    steps, lam = resolved_anneal_steps(cfg, split.train.shape[0]), 1e-4
    train_epoch(state, split, steps, lam, Callback())     # both halves now have Adam moments
    model = state.model
    enc, dec = model.encoder_parameters(), model.decoder_parameters()
    assert all(len(state.optimizer.state[p]) > 0 for p in enc + dec)
    batches = math.ceil(split.train.shape[0] / 100)

    enc0, dec0 = _snapshot(state, enc), _snapshot(state, dec)
    g0 = state.global_step
    _one_pass(state, split, steps, lam, _StepLog(state, Callback()), update="encoder")
    assert _same(dec0, _snapshot(state, dec))
    assert all(not torch.equal(a, b) for a, b in zip(enc0[0], _snapshot(state, enc)[0]))
    assert all(int(state.optimizer.state[p]["step"]) == int(enc0[1][0]["step"]) + batches for p in enc)
    assert state.global_step == g0 + batches
    assert all(p.requires_grad for p in model.parameters())

    enc1, dec1 = _snapshot(state, enc), _snapshot(state, dec)
    _one_pass(state, split, steps, lam, _StepLog(state, Callback()), update="decoder", input_dropout=False)
    assert _same(enc1, _snapshot(state, enc))
    assert all(not torch.equal(a, b) for a, b in zip(dec1[0], _snapshot(state, dec)[0]))
    assert all(p.requires_grad for p in model.parameters())


def test_alternating_counts_every_update_and_refreshes_the_prior_encoder(split):
    class Steps(Callback):
        def __init__(self):
            self.steps = []

        def on_step(self, record):
            self.steps.append(record)

    rec = Steps()
    cfg = TrainConfig(epochs=2, batch_size=100, alternating=True, encoder_passes=2, decoder_passes=1, anneal_steps=50)
    state = fit(split, RECVAE, cfg, callback=rec)
    batches = math.ceil(split.train.shape[0] / 100)
    assert state.global_step == 2 * (2 + 1) * batches
    assert [s["global_step"] for s in rec.steps] == list(range(1, state.global_step + 1))
    assert [s["kl_weight"] for s in rec.steps] == pytest.approx([kl_weight(g, cfg.anneal_cap, 50) for g in range(state.global_step)])
    assert len(state.history) == 2                                          # one validation per epoch
    # refreshed after the encoder passes; the decoder passes leave the encoder as it was
    assert all(torch.equal(state.prior_encoder[k], v) for k, v in state.model.encoder_state().items())
    assert set(state.prior_encoder) == {"enc_w.0", "enc_b.0", "enc_w.1", "enc_b.1"}
    assert set(state.model.state_dict()) == set(state_shapes(split.n_items, RECVAE))   # not in the state_dict


# --- checkpoints ----------------------------------------------------------------------------------------

def test_composite_alternating_resume_is_exact(split, tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=100, alternating=True, encoder_passes=2, decoder_passes=1, anneal_steps=0,
                      anneal_cap=0.005, lr=5e-4, seed=11)
    straight = fit(split, RECVAE, cfg)
    first = fit(split, RECVAE, dataclasses.replace(cfg, epochs=2))
    save_state(first, tmp_path / "ck.pt")
    assert set(torch.load(tmp_path / "ck.pt", weights_only=True)["prior_encoder"]) == set(first.prior_encoder)
    resumed = fit(split, state=restore_state(tmp_path / "ck.pt", train_config=cfg))
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    for k, v in straight.prior_encoder.items():
        assert torch.equal(v, resumed.prior_encoder[k]), k
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in resumed.history]
    # at an epoch's end the copy equals the encoder, so check that the saved copy itself is what comes back
    first.prior_encoder = {k: v * 0.5 for k, v in first.prior_encoder.items()}
    save_state(first, tmp_path / "halved.pt")
    back = restore_state(tmp_path / "halved.pt")
    assert all(torch.equal(back.prior_encoder[k], v) for k, v in first.prior_encoder.items())
    assert not torch.equal(back.prior_encoder["enc_w.0"], back.model.enc_w[0].detach())


def test_a_checkpoint_without_a_prior_encoder_still_loads(split, tmp_path):
    state = fit(split, SMALL, TrainConfig(epochs=1, batch_size=100))
    save_state(state, tmp_path / "ck.pt")
    payload = torch.load(tmp_path / "ck.pt", weights_only=True)
    del payload["prior_encoder"]                                            # as written before the option existed
    torch.save(payload, tmp_path / "old.pt")
    restored = restore_state(tmp_path / "old.pt")
    assert restored.prior_encoder is None
    # switching to the composite prior on restore starts the prior from the restored encoder
    restored = restore_state(tmp_path / "old.pt", model_config=dataclasses.replace(SMALL, prior="composite"))
    assert all(torch.equal(restored.prior_encoder[k], v) for k, v in restored.model.encoder_state().items())


# --- defaults change nothing ----------------------------------------------------------------------------

def _old_train_epoch(state, split, anneal_steps, lam):
    """The training epoch as it was before the options (one pass, model(x), exact KL), written out here."""
    model, opt, cfg = state.model, state.optimizer, state.train_config
    model.train()
    order = state.rng.permutation(split.train.shape[0])
    losses = []
    for start in range(0, len(order), cfg.batch_size):
        x = SparseBatch.from_csr(split.train, np.sort(order[start:start + cfg.batch_size]))
        beta = kl_weight(state.global_step, cfg.anneal_cap, anneal_steps) if isinstance(model, MultiVAE) else 0.0
        logits, mu, logvar = model(x)
        recon = reconstruction_loss(logits.float(), x, model.config.likelihood)
        kl = kl_divergence(mu.float(), logvar.float()) if isinstance(model, MultiVAE) else torch.zeros(())
        loss = recon + beta * kl + l2_penalty(model, lam)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state.global_step += 1
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("model_cfg", [SMALL, ModelConfig(model="dae", latent_dim=16)], ids=["vae", "dae"])
def test_defaults_train_bit_identically_to_the_old_loop(split, model_cfg):
    cfg = TrainConfig(epochs=2, batch_size=100, anneal_steps=5, weight_decay=1e-3, device="cpu", seed=4)
    steps, lam = resolved_anneal_steps(cfg, split.train.shape[0]), 1e-3

    class Losses(Callback):
        def __init__(self):
            self.losses = []

        def on_step(self, record):
            self.losses.append(record["loss"])

    new, rec = init_state(split.n_items, model_cfg, cfg), Losses()
    for _ in range(2):
        train_epoch(new, split, steps, lam, rec)
    old = init_state(split.n_items, model_cfg, cfg)
    old_losses = [loss for _ in range(2) for loss in _old_train_epoch(old, split, steps, lam)]
    assert rec.losses == old_losses
    for k, v in old.model.state_dict().items():
        assert torch.equal(v, new.model.state_dict()[k]), k
    for p_old, p_new in zip(old.model.parameters(), new.model.parameters()):
        for k, v in old.optimizer.state[p_old].items():
            assert torch.equal(v, new.optimizer.state[p_new][k]), k
    assert new.prior_encoder is None


def test_explicit_defaults_equal_implicit_ones(split):
    cfg = TrainConfig(epochs=2, batch_size=100, anneal_steps=10)
    implicit = fit(split, SMALL, cfg)
    explicit = fit(split, dataclasses.replace(SMALL, decoder_dims=None, prior="standard", kl_scale="constant"),
                   dataclasses.replace(cfg, alternating=False, encoder_passes=3, decoder_passes=1))
    for k, v in implicit.model.state_dict().items():
        assert torch.equal(v, explicit.model.state_dict()[k]), k
    assert [h["loss"] for h in implicit.history] == [h["loss"] for h in explicit.history]


# --- bad values -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls, data, message", [
    (ModelConfig, {"model": "dae", "prior": "composite"}, r"^c\.yaml: prior 'composite' needs model 'vae'"),
    (ModelConfig, {"model": "dae", "kl_scale": "interactions"}, r"^c\.yaml: kl_scale 'interactions' needs model 'vae'"),
    (ModelConfig, {"prior": "vamp"}, r"^c\.yaml: prior must be one of 'standard', 'composite', got 'vamp'"),
    (ModelConfig, {"decoder_dims": [600, 0]}, r"^c\.yaml: decoder_dims\[1\] must be >= 1, got 0$"),
    (TrainConfig, {"encoder_passes": 0}, r"^c\.yaml: encoder_passes must be >= 1, got 0$"),
    (TrainConfig, {"decoder_passes": 0}, r"^c\.yaml: decoder_passes must be >= 1, got 0$"),
    (TrainConfig, {"alternating": "yes"}, r"^c\.yaml: alternating must be bool, got 'yes'"),
])
def test_bad_values_are_refused_naming_the_key(cls, data, message):
    with pytest.raises(UserError, match=message):
        from_dict(cls, data, where="c.yaml")


def test_build_model_keeps_the_state_dict_names():
    model = build_model(30, dataclasses.replace(RECVAE, latent_dim=4, hidden_dims=(8,)))
    assert set(model.state_dict()) == {"enc_w.0", "enc_w.1", "enc_b.0", "enc_b.1", "dec_w.0", "dec_b.0"}
