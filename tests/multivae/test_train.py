"""The training loop: determinism, the never-resetting global step, resume, best-model selection."""

import dataclasses

import numpy as np
import pytest
import torch

from multivae.evaluate import evaluate, model_scorer, popularity_scorer
from multivae.model import ModelConfig
from multivae.train import (REFERENCE_TOTAL_ANNEAL_EPOCHS, Callback, TrainConfig, best_model, fit, init_state, resolved_anneal_steps,
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
                                 dict(select_metric="recall@7"), dict(metrics=("ndcg",))])
def test_train_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_init_is_seeded():
    a = init_state(50, SMALL, TrainConfig(seed=3)).model.state_dict()
    b = init_state(50, SMALL, TrainConfig(seed=3)).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
