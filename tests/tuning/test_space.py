"""`tuning.space`: the shipped spaces, the searcher spaces they become, and every refusal (trial configs: test_trial_config.py)."""

import copy
import dataclasses
import os
import re

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")   # before any `import ray` (tests/tuning/conftest.py)

import pytest  # noqa: E402
import yaml  # noqa: E402

from multivae.errors import UserError  # noqa: E402
from multivae.model import ModelConfig  # noqa: E402
from multivae.training import REFERENCE_TOTAL_ANNEAL_EPOCHS, TrainConfig, batches_per_epoch, resolved_anneal_steps  # noqa: E402
from tuning import space as sp, space_yaml  # noqa: E402
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402

from tuning.distributions import choice_values  # noqa: E402
from tuning.scheduler_settings import SchedulerSettings  # noqa: E402
from tuning.search_settings import SearchSettings  # noqa: E402
from tuning.space import (  # noqa: E402
    fixed_config, load_space, parse_space, space_to_dict, validate_resources, with_overrides,
)
from tuning.space_yaml import SPACES_DIR, available_spaces  # noqa: E402
from tuning.trial_config import split_trial_config  # noqa: E402

SHIPPED = ("citeulike_sized", "default", "paper", "smoke")
PAPER_POINT = {"lr": 1e-3, "anneal_cap": 0.2, "anneal_steps": 1709, "dropout": 0.5, "latent_dim": 200,
               "hidden_dims": "[600]", "batch_size": 500, "weight_decay": 0.0, "likelihood": "multinomial"}
ML1M_TRAIN_USERS = 6040 - 2 * 600


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    """Messages name files relative to the working directory: run from the repository root, as a user would."""
    monkeypatch.chdir(SPACES_DIR.parent)


# --- the shipped spaces ---------------------------------------------------------------------------------

def test_shipped_spaces_are_found_by_name():
    assert set(SHIPPED) <= set(available_spaces())


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_space_loads_and_round_trips(name):
    space = load_space(name)
    assert space.name == name and space.description and os.path.isfile(space.source)
    assert parse_space(space_to_dict(space), space.source, name=name) == space
    assert space.params and not set(space.params) & set(space.fixed)
    assert len(space.search.points_to_evaluate) <= space.search.num_samples


def tune_domains(space):
    """The space as Tune domains, as the searcher was given it before Optuna's distributions became the parsed
    form (int ranges include `high`: Tune's randint excludes it)."""
    from ray import tune

    out = {}
    for name, d in space.params.items():
        if isinstance(d, CategoricalDistribution):
            out[name] = tune.choice(list(d.choices))
        elif isinstance(d, IntDistribution):
            out[name] = (tune.lograndint(d.low, d.high + 1) if d.log else tune.qrandint(d.low, d.high, d.step) if d.step > 1
                         else tune.randint(d.low, d.high + 1))
        else:
            out[name] = tune.loguniform(d.low, d.high) if d.log else tune.uniform(d.low, d.high)
    return out


@pytest.mark.parametrize("name", SHIPPED)
def test_the_parsed_distributions_are_what_optuna_search_made_of_the_tune_domains(name):
    """Handing Optuna's distributions to OptunaSearch directly samples exactly what the Tune domains gave."""
    from ray.tune.search.optuna import OptunaSearch

    space = load_space(name)
    assert OptunaSearch.convert_search_space(tune_domains(space)) == space.params
    assert list(OptunaSearch.convert_search_space(tune_domains(space))) == list(space.params)


def test_a_path_loads_like_a_name():
    by_name = load_space("smoke")
    by_path = load_space(by_name.source)
    assert by_path == by_name   # the stem is the name
    assert load_space(by_name.source, name="renamed").name == "renamed"


def test_smoke_is_small_and_offline():
    space = load_space("smoke")
    ds = space.dataset
    assert ds.name == "synthetic" and ds.synthetic.n_users <= 2000 and ds.synthetic.n_items <= 1000
    assert space.search.num_samples == 6 and space.search.max_concurrent == 2
    assert space.fixed["epochs"] == 6
    sched = space.scheduler
    assert (sched.type, sched.grace_period, sched.max_t, sched.reduction_factor) == ("asha", 2, 6, 2.0)
    assert space.checkpoint.every == 2 and space.resources.cpus_per_trial == 1 and space.resources.gpus_per_trial == 0
    assert any(isinstance(d, CategoricalDistribution) and any(isinstance(v, tuple) for v in choice_values(k, d))
               for k, d in space.params.items()), \
        "smoke should exercise the list-choice encoding end to end"


def test_smoke_dataset_builds_in_well_under_a_second(tmp_path):
    import time

    from multivae.data import load_dataset

    t0 = time.perf_counter()
    split = load_dataset(load_space("smoke").dataset, cache_dir=tmp_path, verbose=False)
    assert time.perf_counter() - t0 < 5.0
    assert split.train.shape[0] >= 1000 and split.n_items <= 600


def test_default_starts_with_the_paper_config():
    space = load_space("default")
    assert space.dataset.name == "ml-1m" and space.dataset.protocol.heldout_users == 600
    assert space.search.points_to_evaluate[0] == PAPER_POINT
    # 1,709 updates is the reference schedule (cap 0.2 reached at epoch 171) on ML-1M at batch 500
    paper = TrainConfig(batch_size=500, anneal_cap=0.2, anneal_steps=None)
    assert resolved_anneal_steps(paper, ML1M_TRAIN_USERS) == PAPER_POINT["anneal_steps"] == round(40000 / 234 * 10)
    assert batches_per_epoch(ML1M_TRAIN_USERS, 500) == 10
    model_cfg, cfg = split_trial_config({**space.fixed, **space.search.points_to_evaluate[0]}, where="paper")
    assert model_cfg == ModelConfig(hidden_dims=(600,), latent_dim=200, dropout=0.5, likelihood="multinomial")
    assert (cfg.lr, cfg.batch_size, cfg.weight_decay, cfg.anneal_cap, cfg.epochs) == (1e-3, 500, 0.0, 0.2, 100)
    sched = space.scheduler
    assert (sched.type, sched.max_t, sched.grace_period, sched.reduction_factor) == ("asha", 100, 5, 5.0)
    assert space.resources.reuse_actors   # the default: reused worker processes
    assert (space.search.num_samples, space.search.max_concurrent) == (40, 2)
    assert set(space.params) == {"lr", "anneal_cap", "anneal_steps", "dropout", "latent_dim", "hidden_dims",
                                 "batch_size", "weight_decay", "likelihood"}


def test_paper_fixes_the_paper_and_sweeps_each_cap_once():
    space = load_space("paper")
    model_cfg, cfg = split_trial_config({**space.fixed, "anneal_cap": 0.2}, where="paper")
    assert model_cfg == ModelConfig(hidden_dims=(600,)) and model_cfg.hidden == ModelConfig().hidden   # the paper's
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.anneal_steps, cfg.weight_decay) == (200, 500, 1e-3, None, 0.0)
    assert space.scheduler.type == "fifo" and list(space.params) == ["anneal_cap"]
    caps = choice_values("anneal_cap", space.params["anneal_cap"])
    points = [p["anneal_cap"] for p in space.search.points_to_evaluate]
    assert sorted(points) == sorted(caps) and len(caps) == space.search.num_samples
    # the reference schedule reaches beta = epochs / 854.7 at most: caps above that would repeat a trial
    reachable = cfg.epochs / REFERENCE_TOTAL_ANNEAL_EPOCHS
    assert sorted(caps)[-2] < reachable < sorted(caps)[-1]


# --- the searcher spaces --------------------------------------------------------------------------------

def test_default_space_types_and_bounds():
    space = load_space("default")
    assert fixed_config(space)["epochs"] == 100   # fixed values ride along as constants
    dists = space.params
    assert dists["lr"] == FloatDistribution(3e-4, 3e-2, log=True)
    assert dists["anneal_cap"] == FloatDistribution(0.0, 1.0)
    assert dists["dropout"] == FloatDistribution(0.0, 0.8)
    assert dists["anneal_steps"] == IntDistribution(500, 20000, log=True)
    assert dists["latent_dim"] == CategoricalDistribution([64, 100, 200, 300])
    assert dists["batch_size"] == CategoricalDistribution([128, 256, 500, 1000])
    assert dists["likelihood"] == CategoricalDistribution(["multinomial", "bernoulli", "gaussian"])
    assert dists["weight_decay"] == CategoricalDistribution([0.0, 1e-6, 1e-5, 1e-4])
    assert dists["hidden_dims"] == CategoricalDistribution(["[]", "[400]", "[600]", "[800]", "[600, 400]"])


def _space(params, **sections):
    return parse_space({"fixed": {"epochs": 10}, "params": params, **sections}, "inline.yaml")


@pytest.mark.parametrize("spec,optuna_args", [
    ({"type": "int", "low": 1, "high": 5}, dict(low=1, high=5)),
    ({"type": "int", "low": 100, "high": 1000, "step": 100}, dict(low=100, high=1000, step=100)),
    ({"type": "int", "low": 100, "high": 1000, "log": True}, dict(low=100, high=1000, log=True)),
    ({"type": "int", "low": 7, "high": 7}, dict(low=7, high=7)),
])
def test_int_ranges_include_high(spec, optuna_args):
    import optuna

    space = _space({"batch_size": spec})
    d = space.params["batch_size"]
    assert d == IntDistribution(**optuna_args)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    samples = [study.ask({"b": d}).params["b"] for _ in range(200)]
    assert all(spec["low"] <= s <= spec["high"] and (s - spec["low"]) % spec.get("step", 1) == 0 for s in samples)
    assert spec["high"] in samples or spec.get("log")   # the upper end is reachable


def test_distribution_objects():
    space = _space({"lr": {"type": "loguniform", "low": 1.0e-4, "high": 1}, "anneal_cap": {"type": "uniform", "low": 0, "high": 1},
                    "hidden_dims": {"type": "choice", "values": [[600], None, [200, 100]]}})
    assert space.params == {"lr": FloatDistribution(1e-4, 1.0, log=True), "anneal_cap": FloatDistribution(0.0, 1.0),
                            "hidden_dims": CategoricalDistribution(["[600]", None, "[200, 100]"])}
    assert isinstance(space.params["anneal_cap"].low, float)
    assert choice_values("hidden_dims", space.params["hidden_dims"]) == ((600,), None, (200, 100))


def test_optuna_search_suggests_the_points_first_and_trials_decode():
    """The real searcher: points_to_evaluate (encoded) come out first; every suggestion builds the dataclasses."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space("default")
    searcher = OptunaSearch(space=dict(space.params), metric=space.search.metric, mode=space.search.mode,
                            sampler=optuna.samplers.TPESampler(seed=0), points_to_evaluate=[dict(p) for p in space.search.points_to_evaluate])
    first = searcher.suggest("t0")
    assert first == PAPER_POINT
    fixed = fixed_config(space)
    seen = set()
    for i, config in enumerate([first] + [searcher.suggest(f"t{i}") for i in range(1, 6)]):
        model_cfg, cfg = split_trial_config({**fixed, **config}, where=f"t{i}")
        assert model_cfg.hidden_dims in choice_values("hidden_dims", space.params["hidden_dims"])
        assert 3e-4 <= cfg.lr <= 3e-2 and 500 <= cfg.anneal_steps <= 20000 and cfg.epochs == 100
        seen.add(config["hidden_dims"])
    assert seen <= {"[]", "[600]", "[400]", "[800]", "[600, 400]"}


def test_points_are_stored_in_the_searcher_encoding():
    space = _space({"hidden_dims": {"type": "choice", "values": [[600], [600, 300]]}, "weight_decay": {"type": "choice", "values": [0.0, 1.0e-5]},
                    "batch_size": {"type": "int", "low": 100, "high": 500, "step": 100}},
                   search={"points_to_evaluate": [{"hidden_dims": [600, 300], "weight_decay": 0, "batch_size": 300}]})
    assert space.search.points_to_evaluate == ({"hidden_dims": "[600, 300]", "weight_decay": 0.0, "batch_size": 300},)


# --- overrides and resources ----------------------------------------------------------------------------

def test_with_overrides_replaces_and_revalidates():
    space = load_space("smoke")
    assert with_overrides(space) is space and with_overrides(space, num_samples=None) is space
    changed = with_overrides(space, num_samples=3, max_concurrent=1, cpus_per_trial=2, gpus_per_trial=0.5, seed=7,
                             dataset="ml-1m", data_dir="/data/ml-1m")
    assert (changed.search.num_samples, changed.search.max_concurrent, changed.search.seed) == (3, 1, 7)
    assert (changed.resources.cpus_per_trial, changed.resources.gpus_per_trial) == (2, 0.5)
    assert (changed.dataset.name, changed.dataset.data_dir) == ("ml-1m", "/data/ml-1m")
    assert changed.source == space.source and changed.name == space.name and changed.params == space.params
    with pytest.raises(UserError, match=r"^search_spaces/smoke\.yaml with --num-samples 0: search\.num_samples must be >= 1, got 0$"):
        with_overrides(space, num_samples=0)
    with pytest.raises(UserError, match=r"--gpus-per-trial -1: resources\.gpus_per_trial must be >= 0, got -1"):
        with_overrides(space, gpus_per_trial=-1)
    with pytest.raises(UserError, match=r"--dataset ml-2m: dataset: unknown dataset name 'ml-2m'"):
        with_overrides(space, dataset="ml-2m")
    with pytest.raises(TypeError, match="unknown override 'epochs'"):
        with_overrides(space, epochs=3)


def test_validate_resources():
    space = load_space("smoke")
    validate_resources(space, 0)
    validate_resources(with_overrides(space, gpus_per_trial=1), 1)
    validate_resources(with_overrides(space, gpus_per_trial=4), None)   # unknown (joining a cluster): not checked
    with pytest.raises(UserError, match=r"^search_spaces/smoke\.yaml: resources\.gpus_per_trial is 0\.5 but 0 GPUs are available"):
        validate_resources(with_overrides(space, gpus_per_trial=0.5), 0)


# --- finding the file -----------------------------------------------------------------------------------

def test_unknown_name_lists_the_available_spaces():
    with pytest.raises(UserError, match=r"unknown search space 'smok'.*available: .*default, .*paper, recvae, smoke"):
        load_space("smok")
    with pytest.raises(UserError, match=r"^nowhere/x\.yaml: no such search space file"):
        load_space("nowhere/x.yaml")
    with pytest.raises(UserError, match=r"unknown search space '\.\./pyproject'"):
        load_space("../pyproject")   # a name never leaves search_spaces/


def test_names_may_contain_a_folder(tmp_path, monkeypatch):
    (tmp_path / "ablations").mkdir()
    (tmp_path / "ablations" / "likelihood.yaml").write_text(
        "params:\n  likelihood: {type: choice, values: [multinomial, gaussian]}\n")
    monkeypatch.setattr(space_yaml, "SPACES_DIR", tmp_path)
    space = load_space("ablations/likelihood")
    assert space.name == "ablations/likelihood" and space.params["likelihood"] == CategoricalDistribution(["multinomial", "gaussian"])
    assert available_spaces() == ["ablations/likelihood"]


def test_defaults_of_a_minimal_space():
    space = _space({"lr": {"type": "loguniform", "low": 1.0e-4, "high": 1.0e-2}})
    assert space.dataset.name == "synthetic" and space.description == ""
    assert space.search == SearchSettings() and space.scheduler == SchedulerSettings("fifo")
    assert space.resources == sp.Resources(1, 0) and space.checkpoint == sp.CheckpointSettings(1, 2)
    asha = _space({"lr": {"type": "loguniform", "low": 1.0e-4, "high": 1.0e-2}}, scheduler={"type": "asha"})
    assert asha.scheduler == SchedulerSettings("asha", max_t=10, grace_period=1, reduction_factor=4.0)


def test_readme_documents_every_section_and_key():
    text = (SPACES_DIR / "README.md").read_text()
    keys = [*sp.SECTIONS, *[f.name for f in dataclasses.fields(SearchSettings)],
            "max_t", "grace_period", "reduction_factor", "cpus_per_trial", "gpus_per_trial", "every", "keep",
            "uniform", "loguniform", "int", "choice", "step", "log"]
    assert [k for k in keys if f"`{k}`" not in text] == []


# --- every refusal: one line naming the file, the key path and the value ---------------------------------

BASE = {
    "dataset": {"name": "synthetic", "synthetic": {"n_users": 300, "n_items": 100}},
    "fixed": {"epochs": 10},
    "params": {
        "lr": {"type": "loguniform", "low": 1.0e-4, "high": 1.0e-2},
        "anneal_cap": {"type": "uniform", "low": 0.0, "high": 1.0},
        "anneal_steps": {"type": "int", "low": 10, "high": 1000, "log": True},
        "latent_dim": {"type": "choice", "values": [100, 200]},
        "hidden_dims": {"type": "choice", "values": [[600], [600, 300]]},
    },
    "search": {"num_samples": 4, "max_concurrent": 2, "metric": "ndcg@100", "mode": "max",
               "points_to_evaluate": [{"lr": 1.0e-3, "anneal_cap": 0.2, "anneal_steps": 100, "latent_dim": 200,
                                       "hidden_dims": [600]}]},
    "scheduler": {"type": "asha", "max_t": 10, "grace_period": 2, "reduction_factor": 2},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
    "checkpoint": {"every": 2, "keep": 2},
}
DELETE = object()


def patched(patch):
    """BASE with `patch` merged in: nested dicts merge, DELETE removes a key, anything else replaces."""
    def merge(into, changes):
        for k, v in changes.items():
            if v is DELETE:
                into.pop(k, None)
            elif isinstance(v, dict) and isinstance(into.get(k), dict) and v:
                merge(into[k], v)
            else:
                into[k] = v
        return into
    return yaml.safe_dump(merge(copy.deepcopy(BASE), patch), sort_keys=False)


P0 = "search.points_to_evaluate"
POINT = BASE["search"]["points_to_evaluate"][0]

# (id, the file's text, what the message must say after "x.yaml: ")
INVALID = [
    # the file
    ("yaml-syntax", "description: x\nfixed: epochs: 3\n", r"invalid YAML at line 2, column \d+: mapping values are not allowed here"),
    ("yaml-unclosed", "params: {lr: [1, 2\n", r"invalid YAML at line 2, column \d+: "),
    ("duplicate-key", "params:\n  lr: {type: uniform, low: 0.1, high: 0.2}\n  lr: {type: uniform, low: 0.1, high: 0.3}\n",
     r"invalid YAML at line 3, column 3: found duplicate key 'lr'"),
    ("top-level-list", "- params\n- search\n", r"the top level must be a mapping of sections \(description, .*\), got \['params', 'search'\]"),
    ("empty-file", "", r"the top level must be a mapping of sections .*got None"),
    ("unknown-section", patched({"paramz": {}}), r"unknown key 'paramz' \(allowed: description, dataset, fixed, params"),
    ("description-not-text", patched({"description": ["a"]}), r"description must be text, got \['a'\]"),
    # dataset
    ("dataset-unknown-key", patched({"dataset": {"nmae": "ml-1m"}}), r"unknown key 'dataset\.nmae' \(allowed: cache, data_dir"),
    ("protocol-unknown-key", patched({"dataset": {"protocol": {"heldout": 600}}}), r"unknown key 'dataset\.protocol\.heldout'"),
    ("synthetic-unknown-key", patched({"dataset": {"synthetic": {"users": 9}}}), r"unknown key 'dataset\.synthetic\.users'"),
    ("dataset-name", patched({"dataset": {"name": "ml-2m"}}), r"dataset: unknown dataset name 'ml-2m'"),
    ("dataset-type", patched({"dataset": {"protocol": {"heldout_users": "600"}}}),
     r"dataset\.protocol\.heldout_users must be int or float or null, got '600'"),
    ("dataset-not-mapping", patched({"dataset": "ml-1m"}), r"dataset must be a mapping, got 'ml-1m'"),
    # fixed
    ("fixed-unknown", patched({"fixed": {"epoch": 3}}), r"unknown key 'fixed\.epoch': not a ModelConfig or TrainConfig field \(allowed: model, .*epochs"),
    ("fixed-device", patched({"fixed": {"device": "cuda"}}), r"fixed\.device cannot be set in a search space: the trial sets it from resources\.gpus_per_trial"),
    ("fixed-bool-for-int", patched({"fixed": {"epochs": True}}), r"fixed\.epochs must be int, got True"),
    ("fixed-string-for-float", patched({"fixed": {"weight_decay": "none"}}), r"fixed\.weight_decay must be float or null, got 'none'"),
    ("fixed-yaml-number-text", patched({"fixed": {"weight_decay": "1e-5"}}),
     r"fixed\.weight_decay must be a number, got '1e-5' \(YAML reads a number like 1e-4 as text: write 1\.0e-4\)"),
    ("fixed-list-type", patched({"fixed": {"hidden_dims": [600, "a"]}, "params": {"hidden_dims": DELETE},
                                 "search": {"points_to_evaluate": []}}),
     r"fixed\.hidden_dims must be list of int or null, got \[600, 'a'\]"),
    ("fixed-rejected", patched({"fixed": {"epochs": 0}}), r"fixed: epochs must be >= 1, got 0"),
    ("fixed-rejected-model", patched({"fixed": {"dropout": 1.5}}), r"fixed: dropout must be in \[0, 1\), got 1\.5"),
    ("fixed-literal", patched({"fixed": {"likelihood": "poisson"}}), r"fixed\.likelihood must be one of 'multinomial', 'bernoulli', 'gaussian', got 'poisson'"),
    # params
    ("params-missing", patched({"params": DELETE}), r"params must name at least one searched parameter"),
    ("params-empty", patched({"params": {}}), r"params must name at least one searched parameter"),
    ("params-not-mapping", patched({"params": ["lr"]}), r"params must be a mapping, got \['lr'\]"),
    ("param-unknown-name", patched({"params": {"learning_rate": {"type": "uniform", "low": 0.1, "high": 0.2}}}),
     r"unknown key 'params\.learning_rate': not a ModelConfig or TrainConfig field"),
    ("param-threads", patched({"params": {"threads": {"type": "int", "low": 1, "high": 4}}}),
     r"params\.threads cannot be set in a search space: the trial sets it from resources\.cpus_per_trial"),
    ("param-in-fixed-too", patched({"fixed": {"lr": 0.001}}), r"params\.lr is also in fixed \(fixed\.lr = 0\.001\)"),
    ("param-not-mapping", patched({"params": {"lr": 0.001}}), r"params\.lr must be a mapping like \{type: uniform, .*got 0\.001"),
    ("param-no-type", patched({"params": {"lr": {"type": DELETE}}}), r"params\.lr\.type is required \(one of uniform, loguniform, int, choice\)"),
    ("param-unknown-type", patched({"params": {"lr": {"type": "normal"}}}), r"params\.lr\.type must be one of uniform, loguniform, int, choice, got 'normal'"),
    ("param-unknown-key", patched({"params": {"anneal_cap": {"log": True}}}), r"unknown key 'params\.anneal_cap\.log' \(allowed: type, low, high\)"),
    ("param-choice-unknown-key", patched({"params": {"latent_dim": {"low": 1}}}), r"unknown key 'params\.latent_dim\.low' \(allowed: type, values\)"),
    ("param-missing-bound", patched({"params": {"anneal_cap": {"high": DELETE}}}), r"params\.anneal_cap\.high is required for uniform"),
    ("string-for-number", patched({"params": {"anneal_cap": {"low": "zero"}}}), r"params\.anneal_cap\.low must be a number, got 'zero'$"),
    ("yaml-number-text", patched({"params": {"lr": {"low": "1e-4"}}}), r"params\.lr\.low must be a number, got '1e-4' \(YAML reads"),
    ("bool-for-number", patched({"params": {"anneal_cap": {"high": True}}}), r"params\.anneal_cap\.high must be a number, got True"),
    ("uniform-low-above-high", patched({"params": {"anneal_cap": {"low": 0.8, "high": 0.2}}}),
     r"params\.anneal_cap\.low must be < high for uniform, got low=0\.8, high=0\.2"),
    ("uniform-low-equals-high", patched({"params": {"anneal_cap": {"low": 0.5, "high": 0.5}}}),
     r"params\.anneal_cap\.low must be < high for uniform, got low=0\.5, high=0\.5"),
    ("loguniform-low-zero", patched({"params": {"lr": {"low": 0.0}}}), r"params\.lr\.low must be > 0 for loguniform, got 0\.0"),
    ("loguniform-low-negative", patched({"params": {"lr": {"low": -1.0e-3}}}), r"params\.lr\.low must be > 0 for loguniform, got -0\.001"),
    ("int-low-above-high", patched({"params": {"anneal_steps": {"low": 1000, "high": 10}}}),
     r"params\.anneal_steps\.low must be <= high, got low=1000, high=10"),
    ("int-float-bound", patched({"params": {"anneal_steps": {"low": 10.5}}}), r"params\.anneal_steps\.low must be an integer, got 10\.5"),
    ("int-float-bound-whole", patched({"params": {"anneal_steps": {"high": 1000.0}}}), r"params\.anneal_steps\.high must be an integer, got 1000\.0"),
    ("int-bool-bound", patched({"params": {"anneal_steps": {"low": True}}}), r"params\.anneal_steps\.low must be an integer, got True"),
    ("int-log-not-bool", patched({"params": {"anneal_steps": {"log": "yes please"}}}), r"params\.anneal_steps\.log must be true or false, got 'yes please'"),
    ("int-log-low-zero", patched({"params": {"anneal_steps": {"low": 0}}}), r"params\.anneal_steps\.low must be >= 1 with log: true, got 0"),
    ("int-log-with-step", patched({"params": {"anneal_steps": {"step": 10}}}), r"params\.anneal_steps\.step must be 1 with log: true .*got 10"),
    ("int-step-zero", patched({"params": {"batch_size": {"type": "int", "low": 100, "high": 1000, "step": 0}}}),
     r"params\.batch_size\.step must be >= 1, got 0"),
    ("int-step-off-grid", patched({"params": {"batch_size": {"type": "int", "low": 100, "high": 1000, "step": 400}}}),
     r"params\.batch_size\.high must be low plus a multiple of step \(100 \+ k \* 400\), got 1000"),
    ("choice-empty", patched({"params": {"latent_dim": {"values": []}}}), r"params\.latent_dim\.values must be a non-empty list, got \[\]"),
    ("choice-not-list", patched({"params": {"latent_dim": {"values": 200}}}), r"params\.latent_dim\.values must be a non-empty list, got 200"),
    ("choice-repeat", patched({"params": {"latent_dim": {"values": [100, 200, 100.0]}}}),
     r"params\.latent_dim\.values\[2\] repeats an earlier value, got 100\.0"),
    ("choice-nested", patched({"params": {"latent_dim": {"values": [{"a": 1}]}}}),
     r"params\.latent_dim\.values\[0\] must be null, a bool, a number, a string or a list of those, got \{'a': 1\}"),
    ("choice-rejected", patched({"params": {"dropout": {"type": "choice", "values": [0.5, 1.5]}}}),
     r"params\.dropout\.values\[1\]: dropout must be in \[0, 1\), got 1\.5"),
    ("choice-wrong-type", patched({"params": {"latent_dim": {"values": [100, "big"]}}}),
     r"params\.latent_dim\.values\[1\]: latent_dim must be int, got 'big'"),
    ("choice-list-text", patched({"params": {"hidden_dims": {"values": ["[600]"]}}}),
     r"params\.hidden_dims\.values\[0\]: hidden_dims must be list of int or null, got '\[600\]'"),
    ("uniform-on-int-field", patched({"params": {"latent_dim": {"type": "uniform", "low": 64, "high": 256, "values": DELETE}}}),
     r"params\.latent_dim\.type must be int or choice for latent_dim, got 'uniform'"),
    ("int-on-text-field", patched({"params": {"likelihood": {"type": "int", "low": 0, "high": 2}}}),
     r"params\.likelihood\.type must be choice for likelihood, got 'int'"),
    ("loguniform-on-list-field", patched({"params": {"hidden_dims": {"type": "loguniform", "low": 1.0, "high": 2.0, "values": DELETE}}}),
     r"params\.hidden_dims\.type must be choice for hidden_dims, got 'loguniform'"),
    ("uniform-bound-rejected", patched({"params": {"dropout": {"type": "uniform", "low": 0.0, "high": 1.0}}}),
     r"params\.dropout\.high: dropout must be in \[0, 1\), got 1\.0"),
    ("int-bound-rejected", patched({"params": {"batch_size": {"type": "int", "low": 0, "high": 100}}}),
     r"params\.batch_size\.low: batch_size must be >= 1, got 0"),
    # search
    ("search-unknown-key", patched({"search": {"samples": 5}}), r"unknown key 'search\.samples' \(allowed: num_samples, max_concurrent"),
    ("num-samples-zero", patched({"search": {"num_samples": 0}}), r"search\.num_samples must be >= 1, got 0"),
    ("num-samples-negative", patched({"search": {"num_samples": -3}}), r"search\.num_samples must be >= 1, got -3"),
    ("num-samples-text", patched({"search": {"num_samples": "ten"}}), r"search\.num_samples must be an integer, got 'ten'"),
    ("max-concurrent-zero", patched({"search": {"max_concurrent": 0}}), r"search\.max_concurrent must be >= 1, got 0"),
    ("seed-negative", patched({"search": {"seed": -1}}), r"search\.seed must be an integer in \[0, 2\*\*32\) or null, got -1"),
    ("metric-unknown", patched({"search": {"metric": "ndcg@10"}}),
     r"search\.metric must be one of the validation metrics the trials report \(ndcg@100, recall@20, recall@50\), got 'ndcg@10'"),
    ("metric-loss", patched({"search": {"metric": "loss"}}), r"search\.metric must be one of .*got 'loss'"),
    ("mode-unknown", patched({"search": {"mode": "maximize"}}), r"search\.mode must be 'min' or 'max', got 'maximize'"),
    ("mode-min-for-ndcg", patched({"search": {"mode": "min"}}), r"search\.mode must be 'max' for ndcg@100 \(higher is better\), got 'min'"),
    ("points-not-list", patched({"search": {"points_to_evaluate": {"lr": 0.001}}}), r"search\.points_to_evaluate must be a list of mappings"),
    ("point-not-mapping", patched({"search": {"points_to_evaluate": [0.001]}}), rf"{re.escape(P0)}\[0\] must be a mapping .*got 0\.001"),
    ("point-unknown-param", patched({"search": {"points_to_evaluate": [{**POINT, "epochs": 5}]}}),
     rf"{re.escape(P0)}\[0\]\.epochs is not a searched parameter \(searched: lr, anneal_cap"),
    ("point-missing-param", patched({"search": {"points_to_evaluate": [POINT, {"lr": 1.0e-3}]}}),
     rf"{re.escape(P0)}\[1\] must give every searched parameter .*missing: anneal_cap, anneal_steps, latent_dim, hidden_dims"),
    ("point-float-outside", patched({"search": {"points_to_evaluate": [{**POINT, "lr": 0.5}]}}),
     rf"{re.escape(P0)}\[0\]\.lr must be in \[0\.0001, 0\.01\], got 0\.5"),
    ("point-float-text", patched({"search": {"points_to_evaluate": [{**POINT, "lr": "1e-3"}]}}),
     rf"{re.escape(P0)}\[0\]\.lr must be a number, got '1e-3' \(YAML reads"),
    ("point-int-outside", patched({"search": {"points_to_evaluate": [{**POINT, "anneal_steps": 5000}]}}),
     rf"{re.escape(P0)}\[0\]\.anneal_steps must be an integer in \[10, 1000\], got 5000"),
    ("point-int-not-int", patched({"search": {"points_to_evaluate": [{**POINT, "anneal_steps": 100.5}]}}),
     rf"{re.escape(P0)}\[0\]\.anneal_steps must be an integer, got 100\.5"),
    ("point-choice-outside", patched({"search": {"points_to_evaluate": [{**POINT, "latent_dim": 300}]}}),
     rf"{re.escape(P0)}\[0\]\.latent_dim must be one of \[100, 200\], got 300"),
    ("point-list-choice-outside", patched({"search": {"points_to_evaluate": [{**POINT, "hidden_dims": [500]}]}}),
     rf"{re.escape(P0)}\[0\]\.hidden_dims must be one of \[\[600\], \[600, 300\]\], got \[500\]"),
    ("point-bool-is-not-1", patched({"params": {"normalize_input": {"type": "choice", "values": [True, False]}},
                                     "search": {"points_to_evaluate": [{**POINT, "normalize_input": 1}]}}),
     rf"{re.escape(P0)}\[0\]\.normalize_input must be one of \[True, False\], got 1"),
    # scheduler
    ("scheduler-unknown-type", patched({"scheduler": {"type": "hyperband"}}), r"scheduler\.type must be one of fifo, asha, bohb, pbt, got 'hyperband'"),
    ("scheduler-no-type", patched({"scheduler": {"type": DELETE}}), r"scheduler\.type must be one of fifo, asha, bohb, pbt, got None"),
    ("scheduler-unknown-key", patched({"scheduler": {"brackets": 1}}), r"unknown key 'scheduler\.brackets' \(allowed: type, max_t, grace_period, reduction_factor\)"),
    ("fifo-with-asha-keys", patched({"scheduler": {"type": "fifo"}}), r"unknown key 'scheduler\.max_t' \(allowed: type\)"),
    ("max-t-below-grace", patched({"fixed": {"epochs": 10}, "scheduler": {"max_t": 10, "grace_period": 20}}),
     r"scheduler\.max_t must be >= grace_period \(20\), got 10"),
    ("grace-zero", patched({"scheduler": {"grace_period": 0}}), r"scheduler\.grace_period must be >= 1, got 0"),
    ("grace-float", patched({"scheduler": {"grace_period": 2.5}}), r"scheduler\.grace_period must be an integer, got 2\.5"),
    ("rf-one", patched({"scheduler": {"reduction_factor": 1}}), r"scheduler\.reduction_factor must be > 1, got 1"),
    ("max-t-not-epochs", patched({"scheduler": {"max_t": 20}}), r"scheduler\.max_t must equal the trials' epochs \(10, .*\), got 20"),
    ("asha-searches-epochs", patched({"fixed": {"epochs": DELETE}, "params": {"epochs": {"type": "int", "low": 5, "high": 10}},
                                      "search": {"points_to_evaluate": []}}),
     r"params\.epochs cannot be searched with scheduler\.type asha"),
    # resources and checkpoints
    ("resources-unknown-key", patched({"resources": {"gpus": 1}}), r"unknown key 'resources\.gpus' \(allowed: cpus_per_trial, gpus_per_trial, reuse_actors\)"),
    ("cpus-zero", patched({"resources": {"cpus_per_trial": 0}}), r"resources\.cpus_per_trial must be > 0, got 0"),
    ("gpus-negative", patched({"resources": {"gpus_per_trial": -1}}), r"resources\.gpus_per_trial must be >= 0, got -1"),
    ("gpus-text", patched({"resources": {"gpus_per_trial": "one"}}), r"resources\.gpus_per_trial must be a number, got 'one'"),
    ("checkpoint-unknown-key", patched({"checkpoint": {"keep_last": 2}}), r"unknown key 'checkpoint\.keep_last' \(allowed: every, keep\)"),
    ("checkpoint-every-zero", patched({"checkpoint": {"every": 0}}), r"checkpoint\.every must be >= 1, got 0"),
    ("checkpoint-keep-zero", patched({"checkpoint": {"keep": 0}}), r"checkpoint\.keep must be >= 1, got 0"),
    # every number handed to Ray or Optuna: what they can represent, place and build (tuning/resources.py)
    ("cpus-below-ray-resolution", patched({"resources": {"cpus_per_trial": 0.00001}}),
     r"resources\.cpus_per_trial must be a multiple of 0\.0001 \(Ray keeps resources at that resolution\), got 1e-05"),
    ("gpus-between-ray-units", patched({"resources": {"gpus_per_trial": 0.00015}}),
     r"resources\.gpus_per_trial must be a multiple of 0\.0001 .*, got 0\.00015"),
    ("cpus-huge", patched({"resources": {"cpus_per_trial": 1.0e12}}), r"resources\.cpus_per_trial must be at most 2147483647, got 1000000000000\.0"),
    ("num-samples-huge", patched({"search": {"num_samples": 2**40}}), r"search\.num_samples must be at most 2147483647, got 1099511627776"),
    ("checkpoint-keep-huge", patched({"checkpoint": {"keep": 2**40}}), r"checkpoint\.keep must be at most 2147483647, got 1099511627776"),
    ("rf-near-one", patched({"scheduler": {"reduction_factor": 1.0000001}}),
     r"scheduler\.reduction_factor 1\.0000001 is too close to 1: it gives more rungs than the 10 epochs"),
    ("bohb-rf-near-one", patched({"scheduler": {"type": "bohb", "max_t": 10, "grace_period": DELETE, "reduction_factor": 1.000001}}),
     r"scheduler\.reduction_factor 1\.000001 is too close to 1"),
    ("int-bound-beyond-optuna", patched({"params": {"anneal_steps": {"type": "int", "low": 10, "high": 2**60, "log": True}}}),
     r"params\.anneal_steps\.high must be within ±2\*\*53 \(Optuna keeps integers as floats\), got 1152921504606846976"),
    ("uniform-span-overflows", patched({"params": {"anneal_cap": {"type": "uniform", "low": -1.0e308, "high": 1.0e308}}}),
     r"params\.anneal_cap: high - low must be a finite number, got low=-1e\+308, high=1e\+308"),
]


def test_the_base_of_the_invalid_cases_is_valid(tmp_path):
    (tmp_path / "x.yaml").write_text(patched({}))
    assert load_space(str(tmp_path / "x.yaml")).name == "x"


@pytest.mark.parametrize("text,pattern", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_space_is_one_line_naming_file_key_and_value(tmp_path, monkeypatch, text, pattern):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.yaml").write_text(text)
    with pytest.raises(UserError, match=r"^x\.yaml: " + pattern) as info:
        load_space("x.yaml")
    assert "\n" not in str(info.value)


def test_there_are_enough_invalid_cases():
    assert len(INVALID) >= 25 and len({c[0] for c in INVALID}) == len(INVALID)


def test_parse_space_names_its_source():
    with pytest.raises(UserError, match=r"^somewhere/else\.yaml: search\.num_samples must be >= 1, got 0$"):
        parse_space({"params": {"lr": {"type": "uniform", "low": 0.1, "high": 0.2}}, "search": {"num_samples": 0}},
                    "somewhere/else.yaml")



def test_search_objective_is_best_by_default_and_checked():
    assert load_space("smoke").search.objective == "best"
    assert _space({"lr": {"type": "uniform", "low": 0.001, "high": 0.01}}, search={"objective": "last"}).search.objective == "last"
    with pytest.raises(UserError, match=r"^inline\.yaml: search\.objective must be one of best, last, got 'median'$"):
        _space({"lr": {"type": "uniform", "low": 0.001, "high": 0.01}}, search={"objective": "median"})
