"""The training loop: determinism, the never-resetting global step, resume, best-model selection."""

import dataclasses

import numpy as np
import pytest
import torch

from multivae.errors import UserError
from multivae.evaluate import evaluate, model_scorer, popularity_scorer
from multivae.model import ModelConfig
from multivae.training import (ADAM_KERNELS, REFERENCE_TOTAL_ANNEAL_EPOCHS, Callback, TrainConfig, best_model, fit, init_state, resolved_anneal_steps,
                            resolved_weight_decay, restore_state, save_state)

from .helpers import small_split

SMALL = ModelConfig(hidden_dims=(32,), latent_dim=16)


@pytest.fixture(scope="module")
def split():
    return small_split()


class Recorder(Callback):
    def __init__(self):
        self.steps, self.epochs = [], []

    def on_step(self, record):
        self.steps.append(record)

    def on_epoch(self, record, state):
        self.epochs.append(record)


def test_same_seed_same_run_on_cpu(split):
    cfg = TrainConfig(epochs=3, batch_size=100, seed=7)
    a, b = fit(split, SMALL, cfg), fit(split, SMALL, cfg)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert [h["ndcg@100"] for h in a.history] == [h["ndcg@100"] for h in b.history]
    c = fit(split, SMALL, dataclasses.replace(cfg, seed=8))
    assert [h["loss"] for h in c.history] != [h["loss"] for h in a.history]


def test_global_step_spans_epochs_and_drives_the_kl_weight(split):
    rec = Recorder()
    cfg = TrainConfig(epochs=3, batch_size=100, anneal_cap=0.2, anneal_steps=10)
    state = fit(split, SMALL, cfg, callback=rec)
    per_epoch = int(np.ceil(split.train.shape[0] / 100))
    assert state.global_step == 3 * per_epoch
    assert [s["global_step"] for s in rec.steps] == list(range(1, 3 * per_epoch + 1))
    # beta of the update made at global step g (counted before it) = min(cap, cap * g / anneal_steps)
    assert [s["kl_weight"] for s in rec.steps] == pytest.approx([min(0.2, 0.2 * g / 10) for g in range(3 * per_epoch)])
    assert rec.epochs[1]["kl_weight"] > 0 and rec.epochs[1]["global_step"] == 2 * per_epoch


def test_resume_continues_exactly(split, tmp_path):
    cfg = TrainConfig(epochs=4, batch_size=100, anneal_steps=20)
    full = Recorder()
    fit(split, SMALL, cfg, callback=full)
    first = fit(split, SMALL, dataclasses.replace(cfg, epochs=2))
    save_state(first, tmp_path / "c.pt", split.item_ids)
    resumed = restore_state(tmp_path / "c.pt", n_items=split.n_items, train_config=cfg)
    assert (resumed.epoch, resumed.global_step) == (2, first.global_step)
    rest = Recorder()
    fit(split, state=resumed, callback=rest)
    # the KL weight goes on where it was (no reset to 0) and every step equals the uninterrupted run's
    assert rest.steps[0]["kl_weight"] > 0
    assert [s["kl_weight"] for s in rest.steps] == [s["kl_weight"] for s in full.steps[len(full.steps) - len(rest.steps):]]
    assert [s["loss"] for s in rest.steps] == pytest.approx([s["loss"] for s in full.steps[-len(rest.steps):]], rel=1e-6)
    assert [e["ndcg@100"] for e in rest.epochs] == pytest.approx([e["ndcg@100"] for e in full.epochs[2:]], rel=1e-9)


def test_best_model_is_the_best_validation_epoch(split):
    state = fit(split, SMALL, TrainConfig(epochs=5, batch_size=100))
    vals = [h["ndcg@100"] for h in state.history]
    assert state.best["epoch"] == int(np.argmax(vals)) + 1
    assert state.best["value"] == max(vals)
    again = evaluate(model_scorer(best_model(state)), split.val_fold_in, split.val_target)
    assert again["ndcg@100"] == pytest.approx(state.best["value"], rel=1e-9)


def test_stop_from_callback(split):
    class StopAfterTwo(Callback):
        def on_epoch(self, record, state):
            return record["epoch"] >= 2
    assert fit(split, SMALL, TrainConfig(epochs=10, batch_size=100), callback=StopAfterTwo()).epoch == 2


def test_nan_loss_raises_a_clear_error(split):
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        fit(split, SMALL, TrainConfig(epochs=3, batch_size=100, lr=1e6), )


def test_reference_defaults_resolve(split):
    # ML-20M: 116,677 training users in batches of 500 -> 234 updates/epoch -> cap 0.2 at update 40,000
    assert resolved_anneal_steps(TrainConfig(), 116_677) == 40_000
    assert resolved_anneal_steps(TrainConfig(anneal_cap=1.0), 116_677) == 200_000
    assert resolved_anneal_steps(TrainConfig(anneal_steps=123), 10) == 123
    assert REFERENCE_TOTAL_ANNEAL_EPOCHS == pytest.approx(200_000 / 234)
    assert resolved_weight_decay(TrainConfig(), ModelConfig()) == 0.0
    assert resolved_weight_decay(TrainConfig(), ModelConfig(model="dae")) == pytest.approx(0.01 / 500)


def test_vae_and_dae_beat_popularity(split):
    pop = evaluate(popularity_scorer(split.train), split.test_fold_in, split.test_target)["ndcg@100"]
    for model_cfg in (ModelConfig(hidden_dims=(64,), latent_dim=32), ModelConfig(model="dae", latent_dim=32)):
        state = fit(split, model_cfg, TrainConfig(epochs=15, batch_size=100, anneal_steps=50))
        got = evaluate(model_scorer(best_model(state)), split.test_fold_in, split.test_target)["ndcg@100"]
        assert got > 1.5 * pop, (model_cfg.model, got, pop)


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(lr=0.0), dict(batch_size=0), dict(anneal_steps=-1),
                                 dict(select_metric="recall@7"), dict(metrics=("ndcg",)), dict(adam="sgd"),
                                 dict(adam="Fused"), dict(malloc="jemalloc")])
def test_train_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_init_is_seeded():
    a = init_state(50, SMALL, TrainConfig(seed=3)).model.state_dict()
    b = init_state(50, SMALL, TrainConfig(seed=3)).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_adam_kernels_run_one_algorithm(split):
    """foreach and single-tensor Adam give the same bits; fused (the default) the same numbers up to rounding,
    and a hand-written Adam step (the paper's optimizer, Kingma & Ba) agrees with all three."""
    cfg = TrainConfig(epochs=2, batch_size=100, anneal_steps=10)
    runs = {k: fit(split, SMALL, dataclasses.replace(cfg, adam=k)) for k in ("fused", "foreach", "single_tensor")}
    params = {k: dict(s.model.named_parameters()) for k, s in runs.items()}
    assert isinstance(runs["fused"].optimizer, torch.optim.Adam) and runs["fused"].optimizer.defaults["fused"]
    for name, p in params["foreach"].items():
        assert torch.equal(p, params["single_tensor"][name]), name
        torch.testing.assert_close(params["fused"][name], p, rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(p, params["foreach"][n]) for n, p in params["fused"].items())   # really another kernel
    assert runs["fused"].history[-1]["ndcg@100"] == pytest.approx(runs["foreach"].history[-1]["ndcg@100"], abs=2e-3)

    # one step by hand: m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, p -= lr m^ / (sqrt(v^) + eps)
    w0 = torch.linspace(-1, 1, 12).reshape(3, 4)
    grads = [torch.sin(torch.arange(12.0) + t).reshape(3, 4) for t in range(3)]
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-8
    w, m, v = w0.clone().double(), torch.zeros(3, 4, dtype=torch.float64), torch.zeros(3, 4, dtype=torch.float64)
    for t, g in enumerate(grads, start=1):
        m, v = b1 * m + (1 - b1) * g.double(), b2 * v + (1 - b2) * g.double() ** 2
        w = w - lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
    for kernel, kwargs in ADAM_KERNELS.items():
        p = torch.nn.Parameter(w0.clone())
        opt = torch.optim.Adam([p], lr=lr, **kwargs)
        for g in grads:
            p.grad = g.clone()
            opt.step()
        torch.testing.assert_close(p.detach().double(), w, rtol=0, atol=1e-6, msg=kernel)


def test_keep_freed_memory_stops_the_page_faults_of_large_tensors():
    """In a fresh process each: allocate and free a 64 MB tensor 20 times. glibc's default serves it by mmap,
    so every allocation faults its 16k pages in again; with keep_freed_memory() the heap grows for the first
    few (where the freed block lands depends on alignment) and then the same block is reused."""
    import subprocess
    import sys

    script = """
import resource, sys, torch
from multivae.allocator import keep_freed_memory
ok = keep_freed_memory() if sys.argv[1] == "keep" else True
faults = []
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 * 1024 * 1024)        # 64 MB, filled, freed at once
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(ok, sum(faults[10:]))
"""
    got = {}
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True).stdout.split()
        assert out[0] == "True", out
        got[mode] = int(out[1])
    assert got["default"] > 10 * 16_000, got               # each of the last 10 allocations faulted 64 MB in again
    assert got["keep"] < got["default"] / 20, got          # reused: almost no faults


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resume_on_cuda_continues_the_dropout_and_noise_stream(split, tmp_path):
    """CUDA's generator (dropout masks, eps) is in the checkpoint: a resumed GPU run equals an uninterrupted one."""
    cfg = TrainConfig(epochs=4, batch_size=100, anneal_steps=20, device="cuda", adam="foreach")
    full = Recorder()
    fit(split, SMALL, cfg, callback=full)
    first = fit(split, SMALL, dataclasses.replace(cfg, epochs=2))
    save_state(first, tmp_path / "c.pt", split.item_ids)
    torch.cuda.manual_seed_all(12345)          # whatever CUDA's generator holds now must not matter
    resumed = restore_state(tmp_path / "c.pt", n_items=split.n_items, train_config=cfg, item_ids=split.item_ids)
    rest = Recorder()
    fit(split, state=resumed, callback=rest)
    # scatter-add order on the GPU moves the last bits; a restarted noise stream moves the loss by far more
    assert [s["loss"] for s in rest.steps] == pytest.approx([s["loss"] for s in full.steps[-len(rest.steps):]], rel=1e-4)


def test_resume_refuses_another_item_catalogue(split, tmp_path):
    state = fit(split, SMALL, TrainConfig(epochs=1, batch_size=100))
    save_state(state, tmp_path / "c.pt", split.item_ids)
    restore_state(tmp_path / "c.pt", n_items=split.n_items, item_ids=split.item_ids)          # the same: fine
    shuffled = split.item_ids[::-1].copy()
    with pytest.raises(UserError, match=r"c\.pt: the checkpoint was trained on another dataset or item catalogue \(column 0 is item"):
        restore_state(tmp_path / "c.pt", n_items=split.n_items, item_ids=shuffled)


def test_restore_with_a_perturbed_config_keeps_weights_moments_and_step_and_takes_the_new_values(split, tmp_path):
    """What PBT does after an exploit: the copied checkpoint goes on under a new lr, dropout and anneal cap."""
    cfg = TrainConfig(epochs=2, batch_size=100, anneal_steps=10_000, lr=1e-3, anneal_cap=0.2)
    first = fit(split, SMALL, cfg)
    save_state(first, tmp_path / "c.pt", split.item_ids)
    new_cfg = dataclasses.replace(cfg, epochs=3, lr=4e-3, anneal_cap=0.05)
    new_model = dataclasses.replace(SMALL, dropout=0.3)
    resumed = restore_state(tmp_path / "c.pt", n_items=split.n_items, train_config=new_cfg, model_config=new_model)
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [4e-3]
    assert resumed.model.config.dropout == 0.3 and resumed.train_config.anneal_cap == 0.05
    assert resumed.global_step == first.global_step and resumed.epoch == 2
    for a, b in zip(resumed.model.state_dict().values(), first.model.state_dict().values()):
        assert torch.equal(a, b)
    moments = [s["exp_avg"] for s in resumed.optimizer.state.values()]
    assert moments and all(torch.equal(m, first.optimizer.state[p]["exp_avg"])
                           for m, p in zip(moments, first.optimizer.state))
    rec = Recorder()
    fit(split, state=resumed, callback=rec)
    g0 = first.global_step   # beta of the first update after the restore: the copied step under the new cap
    assert rec.steps[0]["kl_weight"] == pytest.approx(min(0.05, 0.05 * g0 / 10_000))
    with pytest.raises(UserError, match=r"c\.pt: weights do not match the model config \(enc_w\.1 is torch\.float32 \[32, 32\]"):
        restore_state(tmp_path / "c.pt", n_items=split.n_items, model_config=dataclasses.replace(SMALL, latent_dim=SMALL.latent_dim + 1))
