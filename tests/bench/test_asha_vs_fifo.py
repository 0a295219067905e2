"""bench.asha_vs_fifo: the "epochs to within 1 %" arithmetic on hand-made epochs, and the bench end to end at
--tiny (three real searches on synthetic data, about a minute) with its JSON checked for consistency. No timed
assertions, and none on which scheduler wins: at this size that is chance."""

import json
import math
import os
import subprocess
import sys

from pathlib import Path

import pytest

from bench.asha_vs_fifo import GOAL, METRIC, WITHIN, compare, epochs_to_reach

REPO = Path(__file__).resolve().parents[2]
BEST = f"best_val_{METRIC}"


def test_epochs_to_reach_counts_every_trials_epochs_in_completion_order():
    # (completion time, value) of two trials interleaved, listed out of order
    epochs = [(3.0, 0.30), (1.0, 0.10), (2.0, 0.25), (5.0, 0.41), (4.0, 0.40), (6.0, 0.20)]
    assert epochs_to_reach(epochs, 0.0) == 1
    assert epochs_to_reach(epochs, 0.26) == 3
    assert epochs_to_reach(epochs, 0.40) == 4        # reaching the target exactly counts
    assert epochs_to_reach(epochs, WITHIN * 0.41) == 5
    assert epochs_to_reach(epochs, 0.42) is None
    assert epochs_to_reach([], 0.1) is None


def test_compare_targets_the_best_of_both_searches():
    fifo_epochs = [(float(t), v) for t, v in enumerate([0.1, 0.2, 0.3, 0.5, 0.2, 0.3, 0.4, 0.45])]
    asha_epochs = [(float(t), v) for t, v in enumerate([0.1, 0.2, 0.3, 0.4])]
    trials = [{"config": {"lr": 0.1}}, {"config": {"lr": 0.2}}, {"config": {"lr": 0.2}}]
    fifo = ({BEST: 0.5, "epochs_trained": 8, "per_trial": trials}, fifo_epochs)
    asha = ({BEST: 0.4, "epochs_trained": 4, "per_trial": trials[1:] + [{"config": {"lr": 0.3}}]}, asha_epochs)
    c = compare(fifo, asha)
    assert c[BEST] == 0.5 and c["target"] == pytest.approx(0.495)
    assert c["fifo"] == {"epochs_to_target": 4, "epochs_to_own_target": 4, "epochs_trained": 8}
    assert c["asha"] == {"epochs_to_target": None, "epochs_to_own_target": 4, "epochs_trained": 4}
    assert c["ratio_asha_over_fifo"] == {"epochs_to_target": None, "epochs_to_own_target": 1.0, "epochs_trained": 0.5}
    assert c["goal_met"] is False   # ASHA never came within 1 % of the best
    assert c["configurations_in_common"] == 2   # lr 0.2 twice in both

    c = compare(fifo, ({BEST: 0.5, "epochs_trained": 4, "per_trial": []}, [(0.0, 0.1), (1.0, 0.5)]))
    assert c["ratio_asha_over_fifo"]["epochs_to_target"] == 0.5 and c["goal_met"] is (0.5 <= GOAL)


def test_tiny_run_writes_consistent_json(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}   # a local Ray of its own, never a cluster
    env |= {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "bench.asha_vs_fifo", "--tiny", "--out", str(tmp_path), "--work", str(tmp_path / "work")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ASHA / FIFO" in proc.stdout

    doc = json.loads((tmp_path / "asha_vs_fifo.json").read_text())
    assert doc["bench"] == "asha_vs_fifo" and doc["command"] == "python -m bench.asha_vs_fifo --tiny --work " + str(tmp_path / "work")
    assert {"cpu_model", "logical_cores", "torch", "loadavg_1_5_15"} <= set(doc["machine"])
    cfg = doc["config"]
    n, max_t, grace = cfg["space"]["search"]["num_samples"], cfg["max_t"], cfg["asha_rungs"][0]
    searches = doc["searches"]
    assert set(searches) == {"fifo", "asha", "asha_on_fifo_configs"}

    fifo = searches["fifo"]
    assert fifo["epochs_trained"] == n * max_t and fifo["trials"]["stopped_early"] == 0
    for s in searches.values():
        assert s["trials"]["total"] == len(s["per_trial"]) == n and s["trials"]["errored"] == 0
        assert sum(t["epochs"] for t in s["per_trial"]) == s["epochs_trained"]
        assert s[BEST] == max(t[f"best_{METRIC}"] for t in s["per_trial"])
        assert Path(s["experiment"], "results.json").exists()
    for name in ("asha", "asha_on_fifo_configs"):
        assert n * grace <= searches[name]["epochs_trained"] <= fifo["epochs_trained"]
        assert searches[name]["trials"]["stopped_early"] + searches[name]["trials"]["completed"] == n
    # the replay ran exactly FIFO's configurations
    assert doc["comparisons"]["identical_configs"]["configurations_in_common"] == n

    pairs = {"tpe_same_space_and_seed": "asha", "identical_configs": "asha_on_fifo_configs"}
    assert set(doc["comparisons"]) == set(pairs)
    for key, asha_name in pairs.items():
        c, asha = doc["comparisons"][key], searches[asha_name]
        assert c[BEST] == max(fifo[BEST], asha[BEST]) and math.isclose(c["target"], WITHIN * c[BEST])
        for side, s in (("fifo", fifo), ("asha", asha)):
            assert c[side]["epochs_trained"] == s["epochs_trained"]
            assert 1 <= c[side]["epochs_to_own_target"] <= s["epochs_trained"]
            if c[side]["epochs_to_target"] is not None:
                assert c[side]["epochs_to_own_target"] <= c[side]["epochs_to_target"] <= s["epochs_trained"]
        assert c["ratio_asha_over_fifo"]["epochs_trained"] == asha["epochs_trained"] / fifo["epochs_trained"]
        assert c["goal_met"] == (c["ratio_asha_over_fifo"]["epochs_to_target"] is not None
                                 and c["ratio_asha_over_fifo"]["epochs_to_target"] <= GOAL)
    assert doc["goal_met"] == doc["comparisons"]["tpe_same_space_and_seed"]["goal_met"]
