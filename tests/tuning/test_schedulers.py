"""The schedulers beyond FIFO and ASHA: BOHB (TuneBOHB + HyperBandForBOHB) and PBT, from the YAML space to a
real search on a real Ray: validation of their keys, HyperBand's rungs, pause/resume from exact checkpoints,
and PBT continuing a copied checkpoint with perturbed hyperparameters inside the searched ranges."""

import json
import math

import numpy as np
import pytest
import yaml

from multivae.errors import UserError, run_cli
from tests.tuning.helpers import result_rows, trial_dirs
from tuning import experiment, run
from tuning.scheduler_settings import PBT_KEEP
from tuning.space import parse_space, space_to_dict
from tuning.space_yaml import SPACES_DIR
from tuning.trial_config import split_trial_config


def smoke(scheduler: dict, epochs: int = 9, samples: int = 6, **extra) -> dict:
    data = yaml.safe_load((SPACES_DIR / "smoke.yaml").read_text())
    data["fixed"]["epochs"] = epochs
    data["scheduler"] = scheduler
    data["search"]["num_samples"] = samples
    data.pop("checkpoint")
    data.update(extra)
    return data


def test_bohb_and_pbt_spaces_parse_and_round_trip():
    bohb = parse_space(smoke({"type": "bohb", "max_t": 9, "reduction_factor": 3}), "b.yaml")
    assert bohb.scheduler.stops_early and bohb.scheduler.decision_epochs(9) == [1, 3]
    pbt = parse_space(smoke({"type": "pbt", "perturbation_interval": 3}), "p.yaml")
    s = pbt.scheduler
    assert not s.stops_early and s.decision_epochs(9) == [3, 6]
    assert s.mutations == ("lr", "dropout", "anneal_cap") and (s.quantile_fraction, s.resample_probability) == (0.25, 0.25)
    assert (pbt.checkpoint.every, pbt.checkpoint.keep) == (3, PBT_KEEP)   # at the perturbations, kept longer
    for space in (bohb, pbt):
        assert parse_space(space_to_dict(space), space.source) == space
        assert parse_space(yaml.safe_load(yaml.safe_dump(json.loads(json.dumps(space_to_dict(space))))), space.source) == space


@pytest.mark.parametrize("scheduler,extra,pattern", [
    ({"type": "pbt", "mutations": ["latent_dim"]}, {}, r"^s\.yaml: scheduler\.mutations: PBT cannot change 'latent_dim'"),
    ({"type": "pbt", "mutations": ["weight_decay"]}, {}, r"weight_decay must be a searched parameter"),
    ({"type": "pbt", "mutations": "lr"}, {}, r"scheduler\.mutations must be a non-empty list"),
    ({"type": "pbt", "perturbation_interval": 9}, {}, r"perturbation_interval must be in \[1, epochs\) = \[1, 9\), got 9"),
    ({"type": "pbt", "quantile_fraction": 0.7}, {}, r"quantile_fraction must be in \(0, 0\.5\], got 0\.7"),
    ({"type": "pbt", "resample_probability": -0.1}, {}, r"resample_probability must be in \[0, 1\]"),
    ({"type": "pbt", "perturbation_interval": 3}, {"checkpoint": {"every": 2}},
     r"checkpoint\.every must equal scheduler\.perturbation_interval \(3\) with scheduler\.type pbt, got 2"),
    ({"type": "pbt", "perturbation_interval": 3}, {"checkpoint": {"keep": 2}}, r"checkpoint\.keep must be >= 3"),
    ({"type": "pbt", "max_t": 9}, {}, r"unknown key 'scheduler\.max_t' \(allowed: type, perturbation_interval"),
    ({"type": "bohb", "max_t": 8}, {}, r"scheduler\.max_t must equal the trials' epochs \(9"),
    ({"type": "bohb", "reduction_factor": 1}, {}, r"reduction_factor must be > 1"),
    ({"type": "bohb", "grace_period": 2}, {}, r"unknown key 'scheduler\.grace_period' \(allowed: type, max_t, reduction_factor\)"),
    ({"type": "pbt"}, {"resources": {"reuse_actors": True}}, r"resources\.reuse_actors must be false with scheduler\.type pbt"),
    ({"type": "hyperband"}, {}, r"scheduler\.type must be one of fifo, asha, bohb, pbt, got 'hyperband'"),
])
def test_bad_scheduler_keys_get_one_line(scheduler, extra, pattern):
    with pytest.raises(UserError, match=pattern):
        parse_space(smoke(scheduler, **extra), "s.yaml")


@pytest.mark.parametrize("scheduler,default", [
    ({"type": "fifo"}, True), ({"type": "asha", "max_t": 9, "grace_period": 1}, True),
    ({"type": "bohb", "max_t": 9}, True), ({"type": "pbt", "perturbation_interval": 3}, False),
])
def test_reused_workers_are_the_default_except_with_pbt(scheduler, default):
    assert parse_space(smoke(scheduler), "s.yaml").resources.reuse_actors is default
    off = parse_space(smoke(scheduler, resources={"reuse_actors": False}), "s.yaml")
    assert off.resources.reuse_actors is False and parse_space(space_to_dict(off), "s.yaml") == off


def test_bohb_configs_with_numpy_scalars_build_trials():
    # TuneBOHB's ConfigSpace samples numpy scalars: they must reach the dataclasses as Python values
    model_cfg, cfg = split_trial_config({"latent_dim": np.int64(16), "hidden_dims": np.str_("[64]"), "lr": np.float64(1e-3)}, "t")
    assert model_cfg.latent_dim == 16 and type(model_cfg.latent_dim) is int and model_cfg.hidden_dims == (64,)


def test_optuna_storage_is_refused_for_a_searcher_that_is_not_optuna(tmp_path, capsys):
    space = tmp_path / "b.yaml"
    space.write_text(yaml.safe_dump(smoke({"type": "bohb", "max_t": 9})))
    rc = run_cli(run.main, ["--space", str(space), "--storage", str(tmp_path / "rr"), "--name", "b", "--cache-dir", str(tmp_path / "c"),
                            "--optuna-storage", f"sqlite:///{tmp_path / 's.db'}"], prog="python -m tuning.run")
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "scheduler.type bohb" in err and "Optuna" in err, err
    assert not (tmp_path / "rr" / "b").exists()


def _search(tmp_path, data: dict, name: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    rc = run.main(["--space", str(path), "--storage", str(tmp_path / "rr"), "--name", name, "--cache-dir", str(tmp_path / "c"), "--quiet"])
    exp = tmp_path / "rr" / name
    return rc, exp, json.loads((exp / experiment.RESULTS).read_text())


def test_bohb_search_pauses_and_resumes_trials_from_their_rung_checkpoints(ray_session, tmp_path):
    rc, exp, res = _search(tmp_path, smoke({"type": "bohb", "max_t": 9, "reduction_factor": 3}, samples=5), "bohb")
    assert rc == 0
    counts = res["trials"]
    assert counts["total"] == 5 and counts["completed"] >= 1 and counts["stopped_early"] >= 1, counts
    assert counts["unfinished"] == counts["errored"] == 0, counts
    resumed = 0
    for d in trial_dirs(exp):
        epochs = [r["epoch"] for r in result_rows(d)]
        # a trial HyperBand paused and resumed goes on from its checkpoint at the rung: no epoch trained twice
        assert epochs == list(range(1, len(epochs) + 1)), (d.name, epochs)
        assert epochs[-1] in (1, 3, 9), (d.name, epochs)   # it ends at a rung or at max_t
        resumed += epochs[-1] > 1
        # ConfigSpace sampled the list choice as its JSON text (and numpy scalars): the trial's config is plain
        config = json.loads((d / "params.json").read_text())
        assert isinstance(config["hidden_dims"], list) and type(config["latent_dim"]) is int, (d.name, config)
    assert resumed >= 1
    assert res["val"]["ndcg@100"] > 0 and res["test"]["ndcg@100"] > 0
    # reused workers (the default): 5 trials, 2 at a time, paused and resumed, in fewer worker processes
    pids = {r["pid"] for d in trial_dirs(exp) for r in result_rows(d)}
    assert len(pids) < counts["total"], pids


def test_pbt_search_copies_checkpoints_and_perturbs_within_the_ranges(ray_session, tmp_path):
    # 4 trials of 4 epochs, a perturbation after every epoch (async PBT exploits only when the other trials have
    # reported; three chances make an exploit all but certain). Each exploit starts a worker process: seconds.
    data = smoke({"type": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.5}, epochs=4, samples=4)
    rc, exp, res = _search(tmp_path, data, "pbt")
    assert rc == 0 and res["trials"]["completed"] == 4 == res["trials"]["total"], res["trials"]
    params = data["params"]
    exploited = 0
    for d in trial_dirs(exp):
        rows = result_rows(d)
        assert rows[-1]["epoch"] == 4
        for prev, row in zip(rows, rows[1:]):
            cfg = row["config"]
            assert cfg["latent_dim"] in params["latent_dim"]["values"]
            assert cfg["hidden_dims"] in params["hidden_dims"]["values"], (d.name, cfg["hidden_dims"])   # a list
            for key in ("lr", "dropout", "anneal_cap"):
                assert params[key]["low"] - 1e-12 <= cfg[key] <= params[key]["high"] + 1e-12, (d.name, key, cfg[key])
            if cfg != prev["config"]:   # an exploit: training goes on from a copied checkpoint, perturbed
                exploited += 1
                assert row["epoch"] - 1 in (1, 2, 3), (d.name, prev["epoch"], row["epoch"])   # a perturbation's checkpoint
                assert prev["epoch"] in (1, 2, 3), (d.name, prev["epoch"])
                # the KL weight: the copied step's place on the schedule, under the new cap (the epoch's last update
                # is made at global step - 1, counted before it)
                cap, g = cfg["anneal_cap"], row["global_step"] - 1
                assert math.isclose(row["kl_weight"], min(cap, cap * g / cfg["anneal_steps"]), rel_tol=1e-6)
    assert exploited >= 1
    assert (exp / "pbt_global.txt").exists()
