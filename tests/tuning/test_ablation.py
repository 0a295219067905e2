"""tuning.ablation: the measures on hand-built inputs, and the whole analysis on a tiny experiment laid out as
Tune lays it out (trial directories with checkpoint_NNNNNN/checkpoint.pt), trained here without Ray."""

import copy
import json

import numpy as np
import pytest
import torch

from multivae.errors import UserError
from multivae.evaluate import evaluate, model_scorer, per_user_metrics
from multivae.model import ModelConfig, MultiVAE
from multivae.training import TrainConfig, best_model, fit, save_state
from multivae import latent
from tuning import ablation
from optuna.distributions import CategoricalDistribution

from tuning.space import available_spaces, load_space


# --- measures -------------------------------------------------------------------------------------------

def test_active_units_counts_dimensions_whose_mean_varies_over_users():
    rng = np.random.default_rng(0)
    n = 20_000
    mu = np.stack([rng.normal(0, 1.0, n),       # variance 1: active
                   rng.normal(3, 0.05, n),      # variance 0.0025: inactive, whatever its mean
                   rng.normal(0, 0.2, n),       # variance 0.04: active
                   np.full(n, 0.7)], axis=1)    # constant: inactive
    units = latent.active_units(mu)
    assert units["active_units"] == 2
    assert units["latent_dim"] == 4
    assert units["mean_variance"] == pytest.approx((1.0 + 0.0025 + 0.04 + 0.0) / 4, rel=0.05)
    assert latent.active_units(mu, threshold=0.001)["active_units"] == 3


def test_activity_groups_are_equal_sized_and_ordered_by_size():
    sizes = np.array([50, 5, 12, 7, 30, 9, 100, 6, 8, 20, 15, 11])
    groups = latent.activity_groups(sizes, 4)
    assert np.bincount(groups).tolist() == [3, 3, 3, 3]
    assert sorted(sizes[groups == 0]) == [5, 6, 7]            # the lightest users
    assert sorted(sizes[groups == 3]) == [30, 50, 100]        # the heaviest
    for g in range(3):                                         # every user of a group is at most as active as the next's
        assert sizes[groups == g].max() <= sizes[groups == g + 1].min()
    assert np.bincount(latent.activity_groups(np.arange(11), 5)).tolist() == [3, 2, 2, 2, 2]
    with pytest.raises(ValueError, match="cannot be cut into 5 groups"):
        latent.activity_groups(np.arange(4), 5)


def test_group_means_leave_out_users_without_a_target():
    values = np.array([1.0, np.nan, 0.0, 0.5, 0.25, np.nan])
    sizes = np.array([10, 1, 2, 8, 4, 100])
    groups = latent.group_means(values, sizes, n_groups=2)
    assert [(g["users"], g["min_size"], g["max_size"], g["mean"]) for g in groups] == [(2, 2, 4, 0.125), (2, 8, 10, 0.75)]


def test_mean_std_is_the_sample_std_over_seeds():
    s = ablation.mean_std([0.40, 0.42, 0.44])
    assert s["mean"] == pytest.approx(0.42) and s["std"] == pytest.approx(0.02) and s["n"] == 3
    assert ablation.mean_std([0.3])["std"] == 0.0
    assert ablation.fmt(s) == "0.4200 ± 0.0200" and ablation.fmt(ablation.mean_std([0.3])) == "0.3000"


@pytest.fixture(scope="module")
def trained_vae(tiny_split):
    state = fit(tiny_split, ModelConfig(hidden_dims=(32,), latent_dim=8), TrainConfig(epochs=2, batch_size=100, seed=3, threads=1))
    return best_model(state)


def _with_logvar(model: MultiVAE, logvar_bias: float) -> MultiVAE:
    """A copy of `model` whose encoder outputs logvar = logvar_bias for every user (mu unchanged)."""
    model = copy.deepcopy(model)
    d = model.config.latent_dim
    with torch.no_grad():
        model.enc_w[-1][:, d:] = 0.0
        model.enc_b[-1][d:] = logvar_bias
    return model


@pytest.mark.parametrize("n_samples", [1, 10])
def test_sampled_z_equals_z_mu_when_the_posterior_has_no_variance(tiny_split, trained_vae, n_samples):
    model = _with_logvar(trained_vae, -1e4)                 # sigma = exp(-5000) = 0 in float32
    args = (tiny_split.test_fold_in, tiny_split.test_target)
    at_mu = per_user_metrics(model_scorer(model), *args)
    sampled = per_user_metrics(latent.sampled_scorer(model, n_samples), *args)
    for m in at_mu:
        np.testing.assert_allclose(sampled[m], at_mu[m], equal_nan=True)


def test_sampled_z_differs_from_z_mu_when_the_posterior_is_wide(tiny_split, trained_vae):
    model = _with_logvar(trained_vae, 4.0)                   # sigma = e^2 = 7.4: the draws swamp mu
    args = (tiny_split.test_fold_in, tiny_split.test_target)
    at_mu = evaluate(model_scorer(model), *args)["ndcg@100"]
    one = evaluate(latent.sampled_scorer(model, 1), *args)["ndcg@100"]
    assert one != pytest.approx(at_mu, abs=1e-6)
    assert one == evaluate(latent.sampled_scorer(model, 1), *args)["ndcg@100"]   # seeded: reproducible


# --- the whole analysis on a tiny experiment ------------------------------------------------------------

LEVELS = {"fixed": dict(anneal_cap=1.0, anneal_steps=0), "annealed": dict(anneal_cap=1.0, anneal_steps=40)}


def _trial(exp, number, split, model_cfg, cfg):
    """Train `cfg` and leave it where Tune would: <exp>/trial_000N_<id>/checkpoint_000001/checkpoint.pt."""
    d = exp / f"trial_{number:04d}_abcd{number:04d}"
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps({"seed": cfg.seed}))
    state = fit(split, model_cfg, cfg)
    save_state(state, d / "checkpoint_000000" / "checkpoint.pt", split.item_ids)   # an older one: not read
    save_state(state, d / "checkpoint_000001" / "checkpoint.pt", split.item_ids)
    return state


@pytest.fixture(scope="module")
def tiny_experiment(tiny_split, tmp_path_factory):
    exp = tmp_path_factory.mktemp("ablations") / "annealing"
    model_cfg = ModelConfig(hidden_dims=(32,), latent_dim=8)
    states, n = {}, 0
    for name, anneal in LEVELS.items():
        for seed in (1, 2):
            n += 1
            cfg = TrainConfig(epochs=4, batch_size=100, seed=seed, threads=1, **anneal)
            states[name, seed] = _trial(exp, n, tiny_split, model_cfg, cfg)
    return exp, states


def test_analyse_tests_each_trial_and_aggregates_over_seeds(tiny_experiment, tiny_split, tmp_path):
    exp, states = tiny_experiment
    png = tmp_path / "annealing.png"
    result = ablation.analyse("annealing", [exp], split=tiny_split, plot_path=png, log=lambda s: None)

    assert [lv["seeds"] for lv in result["levels"]] == [[1, 2], [1, 2]]
    assert [lv["label"] for lv in result["levels"]] == ["β = 1 fixed", "annealed toward 1 (β reaches 0.400)"]
    for lv, name in zip(result["levels"], LEVELS):
        for per_seed, seed in zip(lv["per_seed"], (1, 2)):
            state = states[name, seed]
            expected = evaluate(model_scorer(best_model(state)), tiny_split.test_fold_in, tiny_split.test_target)
            assert per_seed["ndcg@100"] == pytest.approx(expected["ndcg@100"])   # the best-by-validation weights
            assert per_seed["kl_end"] == pytest.approx(state.history[-1]["kl"])
            assert 0 <= per_seed["active_units"] <= 8
        s = lv["summary"]
        assert s["ndcg@100"]["mean"] == pytest.approx(np.mean([p["ndcg@100"] for p in lv["per_seed"]]))
        assert s["ndcg@100"]["std"] == pytest.approx(np.std([p["ndcg@100"] for p in lv["per_seed"]], ddof=1))
        assert len(s["curves"]["ndcg@100"]) == 4

    bs = result["beta_star"]   # from the annealed level: β at the best epoch of its seed-mean validation curve
    curves = result["levels"][1]["summary"]["curves"]
    best = int(np.argmax(curves["ndcg@100"]))
    assert bs["epoch"] == best + 1 and bs["beta"] == pytest.approx(curves["kl_weight"][best])
    assert bs["stage2"]["anneal_steps"] == round(bs["stage2"]["anneal_cap"] * 40)   # the same slope, 1 / 40 per update

    data = json.loads((exp / "ablation.json").read_text())
    assert set(data) == {"annealing"}
    assert "| β = 1 fixed | 2 |" in (exp / "ablation.md").read_text()
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"

    ablation.analyse("inference", [exp], split=tiny_split, plot_path=tmp_path / "inference.png", log=lambda s: None)
    data = json.loads((exp / "ablation.json").read_text())
    assert set(data) == {"annealing", "inference"}             # the second kind is added, the first kept
    for per_seed in data["inference"]["levels"][0]["per_seed"]:
        assert set(per_seed["sample"]) == set(per_seed["mean10"]) == {"ndcg@100", "recall@20", "recall@50"}
    assert "mean of 10 draws" in (exp / "ablation.md").read_text()


def test_other_settings_must_match_unless_given_with_also(tiny_experiment, tiny_split, tmp_path):
    exp, _ = tiny_experiment
    other = tmp_path / "other"
    _trial(other, 1, tiny_split, ModelConfig(hidden_dims=(32,), latent_dim=8, dropout=0.2),
           TrainConfig(epochs=4, batch_size=100, seed=1, threads=1))
    with pytest.raises(UserError, match="differs from .* in dropout, which the annealing ablation does not vary"):
        ablation.analyse("annealing", [exp, other], split=tiny_split, plot_path=tmp_path / "a.png", log=lambda s: None)
    result = ablation.analyse("annealing", [exp], also=[other], split=tiny_split, plot_path=tmp_path / "b.png",
                              log=lambda s: None)
    assert sum(len(lv["seeds"]) for lv in result["levels"]) == 4   # the dropout-0.2 trial is not comparable: left out
    assert "0 of 1 trials of other" in result["notes"][0]


# --- the shipped ablation spaces ------------------------------------------------------------------------

ABLATION_SPACES = sorted(n for n in available_spaces() if n.startswith("ablations/"))


def test_the_ablation_spaces_are_shipped():
    assert {"ablations/annealing", "ablations/likelihood", "ablations/input", "ablations/budget_vae",
            "ablations/budget_dae"} <= set(ABLATION_SPACES)


@pytest.mark.parametrize("name", ABLATION_SPACES)
def test_every_ablation_space_is_an_exact_grid_or_a_search_on_ml1m(name):
    space = load_space(name)
    assert space.dataset.name == "ml-1m" and space.scheduler.type == "fifo"
    assert space.fixed["epochs"] == 100
    points = [json.dumps(p, sort_keys=True) for p in space.search.points_to_evaluate]
    assert len(set(points)) == len(points)                     # no combination twice
    if all(isinstance(d, CategoricalDistribution) for d in space.params.values()):   # a grid: every point runs, nothing else
        assert space.search.num_samples == len(points)
    else:                                                      # the budget searches: the paper's point first
        assert space.search.points_to_evaluate[0] == {"lr": 1e-3, "dropout": 0.5}


def test_beta_star_is_read_only_from_a_run_that_never_reaches_its_cap():
    def level(cap, steps, ndcg, beta):
        return {"settings": {"anneal_cap": cap, "anneal_steps": steps}, "label": f"{cap}/{steps}",
                "summary": {"curves": {"ndcg@100": ndcg, "kl_weight": beta}, "beta_at_best": {"values": [0.1, 0.2]}}}
    reached = level(0.2, 10, [0.1, 0.3, 0.2], [0.1, 0.2, 0.2])      # annealed to its cap 0.2
    toward = level(1.0, 50, [0.1, 0.3, 0.2], [0.1, 0.2, 0.3])       # toward 1, stopped at 0.3
    fixed = level(1.0, 0, [0.1, 0.2, 0.25], [1.0, 1.0, 1.0])
    assert ablation.beta_star([reached, fixed]) is None
    bs = ablation.beta_star([reached, toward, fixed])
    assert (bs["level"], bs["epoch"], bs["beta"]) == (1, 2, 0.2)     # the peak of the mean validation curve
    assert bs["stage2"] == {"anneal_cap": 0.2, "anneal_steps": 10}  # the same slope: 1 / 50 per update
