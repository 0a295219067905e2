"""tuning.ablation: the measures on hand-built inputs, and the whole analysis on a tiny experiment laid out as
Tune lays it out (trial directories with checkpoint_NNNNNN/checkpoint.pt), trained here without Ray."""

import copy
import json
from pathlib import Path

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

from tuning.space import load_space
from tuning.space_yaml import available_spaces


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


# --- the report: every kind from a hand-written result --------------------------------------------------

def _stat(mean, std=0.0, n=3, values=()):
    return {"mean": mean, "std": std, "n": n, "values": list(values)}


def _level(label, settings, ndcg, n=3, **summary):
    return {"label": label, "settings": settings, "seeds": list(range(1, n + 1)), "per_seed": [{}], "summary": {
        "ndcg@100": _stat(ndcg, 0.0021, n, [ndcg - 0.002, ndcg, ndcg + 0.002][:n]), "recall@20": _stat(ndcg - 0.0712, 0.00345, n),
        "val_ndcg@100": _stat(ndcg + 0.01, 0.001, n), "best_epoch": _stat(41.0, 3.5, n), **summary}}


def _results():
    """One result per kind, as `analyse` would leave it, with a missing value or a single seed here and there."""
    curves = lambda peak, kl: {"ndcg@100": [0.1, 0.3, peak, peak - 0.01], "kl": [3 * kl, 2 * kl, kl, kl],  # noqa: E731
                               "kl_weight": [0.05, 0.1, 0.15, 0.2]}
    anneal = {"anneal_cap": 1.0, "anneal_steps": 0, "latent_dim": 200}
    annealing = [_level("β = 1 fixed", anneal, 0.4012, kl_end=_stat(12.345, 0.67), kl_weight_end=_stat(1.0),
                        active_units=_stat(14.0, 2.0), mean_variance=_stat(0.01234, 0.0011), beta_at_best=_stat(1.0),
                        curves=curves(0.39, 12.3)),
                 _level("annealed toward 1 (β reaches 0.200)", {**anneal, "anneal_steps": 200_000}, 0.4231, n=1,
                        kl_end=_stat(25.5, 0, 1), kl_weight_end=_stat(0.2, 0, 1), active_units=_stat(61.0, 0, 1),
                        mean_variance=_stat(0.1, 0, 1), beta_at_best=_stat(0.15, 0, 1), curves=curves(0.42, 25.0))]
    beta_star = {"level": annealing[1]["label"], "epoch": 3, "beta": 0.15, "val_ndcg@100": 0.42,
                 "per_seed_beta_at_best": [0.15], "stage2": {"anneal_cap": 0.15, "anneal_steps": 30000}}
    sampled = {"sample": {m: _stat(0.35, 0.01) for m in METRICS}, "mean10": {m: _stat(0.38, 0.02) for m in METRICS}}
    inference = [{**annealing[0], "summary": {**annealing[0]["summary"], **sampled}}, annealing[1]]   # the 2nd: no draws
    quintiles = lambda base: [{"group": g + 1, "users": 120, "min_size": 5 * g + 1, "max_size": 5 * g + 5,  # noqa: E731
                               "ndcg@100": _stat(base + 0.02 * g, 0.004, 2, [base + 0.02 * g - 0.003, base + 0.02 * g + 0.003])}
                              for g in range(5)]
    inputs = [_level(f"L2 norm {'on' if norm else 'off'}, dropout {d:g}", {"normalize_input": norm, "dropout": d},
                     0.40 + 0.01 * i, n=2, kl_end=_stat(30.0 + i, 1.0, 2), quintiles=quintiles(0.3 + 0.01 * i))
              for i, (norm, d) in enumerate([(True, 0.0), (True, 0.5), (False, 0.0), (False, 0.5)])]
    likelihood = [_level(name, {"likelihood": name}, 0.42 - 0.03 * i, kl_end=_stat(20.0 + i, 0.5) if i < 2 else None)
                  for i, name in enumerate(["multinomial", "bernoulli", "gaussian"])]
    budget = [_level(f"Mult-{m.upper()} (lr {lr:.2g}, dropout {d:.2f})", {"model": m, "lr": lr, "dropout": d}, v)
              for m, lr, d, v in [("vae", 0.00123, 0.5, 0.4257), ("dae", 0.004, 0.25, 0.4198)]]
    searches = {"budget_vae": [{"trial": "trial_0001", "lr": 0.001, "dropout": 0.5, "val_ndcg@100": 0.43561, "best_epoch": 77},
                               {"trial": "trial_0002", "lr": 0.0123456, "dropout": 0.12345, "val_ndcg@100": 0.401,
                                "best_epoch": 9}]}
    extra = {"annealing": dict(beta_star=beta_star), "inference": dict(beta_star=beta_star),
             "budget": dict(popularity={"ndcg@100": 0.18765, "recall@20": 0.1}, searches=searches)}
    return {kind: {"kind": kind, "metrics": METRICS, "levels": levels, "notes": ["skipped a/trial_0003: no checkpoint"],
                   "run_commands": [f"python -m tuning.run --space ablations/{kind}"],
                   "command": f"python -m tuning.ablation x --kind {kind}", "wall_time_s": {kind: 5400.0, "paper": None},
                   "plot": f"docs/ablations/{kind}.png", **extra.get(kind, {})}
            for kind, levels in [("likelihood", likelihood), ("annealing", annealing), ("inference", inference),
                                 ("input", inputs), ("budget", budget)]}


METRICS = ["ndcg@100", "recall@20"]


RENDERED = {   # the text of tuning.ablation.render before the registry (commit eba7931), on _results()
    "likelihood": """\
## likelihood

| level | seeds | NDCG@100 | Recall@20 | val NDCG@100 | best epoch | KL at end (train) |
|---|---|---|---|---|---|---|
| multinomial | 3 | 0.4200 ± 0.0021 | 0.3488 ± 0.0034 | 0.4300 ± 0.0010 | 41.0 ± 3.5 | 20.0 ± 0.5 |
| bernoulli | 3 | 0.3900 ± 0.0021 | 0.3188 ± 0.0034 | 0.4000 ± 0.0010 | 41.0 ± 3.5 | 21.0 ± 0.5 |
| gaussian | 3 | 0.3600 ± 0.0021 | 0.2888 ± 0.0034 | 0.3700 ± 0.0010 | 41.0 ± 3.5 | — |

Mean ± sample std over seeds; test users of the paper's split. Wall time of the searches: likelihood 90.0 min, paper ?. Plot: `docs/ablations/likelihood.png`.
- skipped a/trial_0003: no checkpoint

Commands:

    python -m tuning.run --space ablations/likelihood
    python -m tuning.ablation x --kind likelihood
""",
    "annealing": """\
## annealing

| level | seeds | NDCG@100 | Recall@20 | KL at end (train) | β at end | active units (of 200) | mean var(mu) | best epoch | β at best |
|---|---|---|---|---|---|---|---|---|---|
| β = 1 fixed | 3 | 0.4012 ± 0.0021 | 0.3300 ± 0.0034 | 12.3 ± 0.7 | 1.000 ± 0.000 | 14.0 ± 2.0 | 0.0123 ± 0.0011 | 41.0 ± 3.5 | 1.000 ± 0.000 |
| annealed toward 1 (β reaches 0.200) | 1 | 0.4231 | 0.3519 | 25.5 | 0.200 | 61.0 | 0.1000 | 41.0 | 0.150 |

β* (paper's recipe) from 'annealed toward 1 (β reaches 0.200)': the seed-averaged validation NDCG@100 peaks at epoch 3 (0.4200) where β = 0.1500 (per seed β at the best epoch: 0.150); stage 2 retrains with anneal_cap 0.15, anneal_steps 30000 (the same slope, rounded).

Mean ± sample std over seeds; test users of the paper's split. Wall time of the searches: annealing 90.0 min, paper ?. Plot: `docs/ablations/annealing.png`.
- skipped a/trial_0003: no checkpoint

Commands:

    python -m tuning.run --space ablations/annealing
    python -m tuning.ablation x --kind annealing
""",
    "inference": """\
## inference

| level | inference | seeds | NDCG@100 | Recall@20 |
|---|---|---|---|---|
| β = 1 fixed | z = mu | 3 | 0.4012 ± 0.0021 | 0.3300 ± 0.0034 |
| β = 1 fixed | z sampled (1 draw) | 3 | 0.3500 ± 0.0100 | 0.3500 ± 0.0100 |
| β = 1 fixed | mean of 10 draws | 3 | 0.3800 ± 0.0200 | 0.3800 ± 0.0200 |
| annealed toward 1 (β reaches 0.200) | z = mu | 1 | 0.4231 | 0.3519 |
| annealed toward 1 (β reaches 0.200) | z sampled (1 draw) | 1 | — | — |
| annealed toward 1 (β reaches 0.200) | mean of 10 draws | 1 | — | — |

Mean ± sample std over seeds; test users of the paper's split. Wall time of the searches: inference 90.0 min, paper ?. Plot: `docs/ablations/inference.png`.
- skipped a/trial_0003: no checkpoint

Commands:

    python -m tuning.run --space ablations/inference
    python -m tuning.ablation x --kind inference
""",
    "input": """\
## input

| level | seeds | NDCG@100 | Recall@20 | NDCG@100 Q1 (1–5 items) | NDCG@100 Q2 (6–10 items) | NDCG@100 Q3 (11–15 items) | NDCG@100 Q4 (16–20 items) | NDCG@100 Q5 (21–25 items) |
|---|---|---|---|---|---|---|---|---|
| L2 norm on, dropout 0 | 2 | 0.4000 ± 0.0021 | 0.3288 ± 0.0034 | 0.3000 ± 0.0040 | 0.3200 ± 0.0040 | 0.3400 ± 0.0040 | 0.3600 ± 0.0040 | 0.3800 ± 0.0040 |
| L2 norm on, dropout 0.5 | 2 | 0.4100 ± 0.0021 | 0.3388 ± 0.0034 | 0.3100 ± 0.0040 | 0.3300 ± 0.0040 | 0.3500 ± 0.0040 | 0.3700 ± 0.0040 | 0.3900 ± 0.0040 |
| L2 norm off, dropout 0 | 2 | 0.4200 ± 0.0021 | 0.3488 ± 0.0034 | 0.3200 ± 0.0040 | 0.3400 ± 0.0040 | 0.3600 ± 0.0040 | 0.3800 ± 0.0040 | 0.4000 ± 0.0040 |
| L2 norm off, dropout 0.5 | 2 | 0.4300 ± 0.0021 | 0.3588 ± 0.0034 | 0.3300 ± 0.0040 | 0.3500 ± 0.0040 | 0.3700 ± 0.0040 | 0.3900 ± 0.0040 | 0.4100 ± 0.0040 |

Quintiles: the test users ranked by fold-in size (ties in user order), cut into 5 groups of 120 users; NDCG@100 averaged inside each group, then over seeds.

Mean ± sample std over seeds; test users of the paper's split. Wall time of the searches: input 90.0 min, paper ?. Plot: `docs/ablations/input.png`.
- skipped a/trial_0003: no checkpoint

Commands:

    python -m tuning.run --space ablations/input
    python -m tuning.ablation x --kind input
""",
    "budget": """\
## budget

| level | seeds | NDCG@100 | Recall@20 | val NDCG@100 | best epoch |
|---|---|---|---|---|---|
| Mult-VAE (lr 0.0012, dropout 0.50) | 3 | 0.4257 ± 0.0021 | 0.3545 ± 0.0034 | 0.4357 ± 0.0010 | 41.0 ± 3.5 |
| Mult-DAE (lr 0.004, dropout 0.25) | 3 | 0.4198 ± 0.0021 | 0.3486 ± 0.0034 | 0.4298 ± 0.0010 | 41.0 ± 3.5 |
| popularity (nothing to tune) | — | 0.1877 | 0.1000 | — | — |

Search `budget_vae` (2 trials, validation only):

| trial | lr | dropout | best val NDCG@100 | best epoch |
|---|---|---|---|---|
| trial_0001 | 0.001 | 0.500 | 0.4356 | 77 |
| trial_0002 | 0.0123 | 0.123 | 0.4010 | 9 |

Mean ± sample std over seeds; test users of the paper's split. Wall time of the searches: budget 90.0 min, paper ?. Plot: `docs/ablations/budget.png`.
- skipped a/trial_0003: no checkpoint

Commands:

    python -m tuning.run --space ablations/budget
    python -m tuning.ablation x --kind budget
""",
}


@pytest.mark.parametrize("kind", list(RENDERED))
def test_render_gives_the_reference_text_of_every_kind(kind):
    assert ablation.render(kind, _results()[kind]) == RENDERED[kind]


def test_every_kind_plots_its_result(tmp_path):
    for kind, result in _results().items():
        ablation.plot(kind, result, tmp_path / f"{kind}.png")
        png = (tmp_path / f"{kind}.png").read_bytes()
        assert png[:4] == b"\x89PNG" and len(png) > 10_000, kind


def test_the_registry_orders_and_labels_the_levels_of_each_kind():
    def trials(kind, settings):
        return [ablation.TrialRun(Path(kind), Path(f"t{i}"), Path("c"), {}, s, seed)
                for i, s in enumerate(settings) for seed in (2, 1)]
    levels = ablation.group_levels(trials("likelihood", [{"likelihood": n} for n in ("gaussian", "multinomial", "bernoulli")]),
                                   "likelihood")
    assert [lv[0].settings["likelihood"] for lv in levels] == ["multinomial", "bernoulli", "gaussian"]
    assert all([t.seed for t in lv] == [1, 2] for lv in levels)
    inputs = [{"normalize_input": n, "dropout": d} for n, d in [(False, 0.5), (True, 0.5), (False, 0.0), (True, 0.0)]]
    assert [ablation.KINDS["input"].label(lv[0].settings, 0) for lv in ablation.group_levels(trials("input", inputs), "input")] \
        == ["L2 norm on, dropout 0", "L2 norm on, dropout 0.5", "L2 norm off, dropout 0", "L2 norm off, dropout 0.5"]
    budget = [{"model": "dae", "lr": 0.004, "dropout": 0.25}, {"model": "vae", "lr": 0.00123, "dropout": 0.5}]
    assert [ablation.KINDS["budget"].label(lv[0].settings, 0) for lv in ablation.group_levels(trials("budget", budget), "budget")] \
        == ["Mult-VAE (lr 0.0012, dropout 0.50)", "Mult-DAE (lr 0.004, dropout 0.25)"]
    anneal = [{"anneal_cap": c, "anneal_steps": st, "epochs": 10, "batch_size": 100} for c, st in [(1.0, 0), (0.2, 50), (1.0, 500)]]
    assert [ablation.KINDS["annealing"].label(s, 1000, 0.2) for s in anneal] == [   # 10 epochs of 10 updates: β = 0.2 at the end
        "β = 1 fixed", "annealed to β* = 0.2", "annealed toward 1 (β reaches 0.200)"]
    assert ablation.KINDS["annealing"].label(anneal[1], 1000) == "annealed to 0.2"
    assert list(ablation.KINDS) == ["likelihood", "annealing", "inference", "input", "budget"]   # ablation.md's order


def test_aggregate_skips_non_finite_seeds_and_cuts_the_curves_to_the_shortest():
    def trial(seed, kl, ndcg, quintile_means, epochs):
        curves = {k: [seed * 0.1 * (e + 1) for e in range(epochs)] for k in ("ndcg@100", "kl", "kl_weight")}
        quintiles = [{"group": g + 1, "users": 4, "min_size": g, "max_size": g + 1, "mean": q} for g, q in enumerate(quintile_means)]
        measures = {"ndcg@100": ndcg, "kl_end": kl, "quintiles": quintiles, "curves": curves,
                    "sample": {"ndcg@100": ndcg - 0.1}} if seed < 3 else {"ndcg@100": ndcg, "kl_end": kl, "quintiles": quintiles,
                                                                         "curves": curves}
        return ablation.TrialRun(Path("e"), Path(f"t{seed}"), Path("c"), {}, {}, seed, measures)
    level = [trial(1, 10.0, 0.30, [0.1, 0.5], 3), trial(2, float("inf"), 0.40, [0.2, 0.6], 4), trial(3, None, 0.35, [0.3, 0.4], 3)]
    out = ablation.aggregate(level, metrics=["ndcg@100"])
    assert out["ndcg@100"] == {"mean": pytest.approx(0.35), "std": pytest.approx(0.05), "n": 3, "values": [0.30, 0.40, 0.35]}
    assert out["kl_end"] == {"mean": 10.0, "std": 0.0, "n": 1, "values": [10.0]}    # inf and None left out
    assert "sample" not in out                                                           # the third trial has no draws
    assert [g["ndcg@100"]["mean"] for g in out["quintiles"]] == [pytest.approx(0.2), pytest.approx(0.5)]
    assert out["quintiles"][1]["ndcg@100"]["std"] == pytest.approx(0.1)
    assert out["quintiles"][0]["users"] == 4 and out["quintiles"][1]["max_size"] == 2
    assert out["curves"]["kl"] == pytest.approx([0.2, 0.4, 0.6])                       # mean of 0.1, 0.2, 0.3 × epoch; 3 epochs
