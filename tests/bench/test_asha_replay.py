"""bench.asha_replay: its ASHA replay gives the same epochs per trial as Ray's own ASHAScheduler, run for real
over hand-made validation curves (a trainable that reports them; one trial at a time, so the order is fixed),
and its summary by hand."""

import json

import pytest
import ray
from ray import tune

from bench.asha_replay import main, replay, summarize

CURVES = [  # 7 trials x 9 epochs: early leaders that fade, a slow starter that wins, ties at a rung
    [0.30, 0.35, 0.40, 0.41, 0.42, 0.42, 0.43, 0.43, 0.43],
    [0.10, 0.20, 0.30, 0.40, 0.45, 0.50, 0.52, 0.53, 0.55],
    [0.35, 0.36, 0.37, 0.37, 0.37, 0.37, 0.37, 0.37, 0.37],
    [0.05, 0.06, 0.07, 0.08, 0.09, 0.10, 0.11, 0.12, 0.13],
    [0.30, 0.38, 0.45, 0.48, 0.50, 0.51, 0.51, 0.52, 0.52],
    [0.30, 0.30, 0.30, 0.30, 0.30, 0.30, 0.30, 0.30, 0.30],
    [0.20, 0.41, 0.46, 0.49, 0.53, 0.56, 0.57, 0.58, 0.60],
]


def curve_trainable(config):
    for epoch, value in enumerate(CURVES[config["i"]], start=1):
        tune.report({"epoch": epoch, "ndcg@100": value})


@pytest.fixture(scope="module")
def one_cpu_ray():
    mine = not ray.is_initialized()
    if mine:
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    if mine:
        ray.shutdown()


@pytest.mark.parametrize("grace, rf", [(1, 2), (2, 3)])
def test_the_replay_stops_each_trial_where_rays_asha_does(one_cpu_ray, tmp_path, grace, rf):
    asha = tune.schedulers.ASHAScheduler(time_attr="epoch", metric="ndcg@100", mode="max", max_t=9,
                                         grace_period=grace, reduction_factor=rf)
    tuner = tune.Tuner(curve_trainable, param_space={"i": tune.grid_search(list(range(len(CURVES))))},
                       tune_config=tune.TuneConfig(scheduler=asha, max_concurrent_trials=1),
                       run_config=tune.RunConfig(storage_path=str(tmp_path), name="curves", verbose=0))
    by_ray = {r.config["i"]: int(r.metrics["epoch"]) for r in tuner.fit()}
    curves = [{"trial_id": str(i), "values": v, "seconds": [1.0] * len(v)} for i, v in enumerate(CURVES)]
    replayed = replay(curves, grace, rf, 9, concurrent=1)["epochs"]
    assert replayed == [by_ray[i] for i in range(len(CURVES))]
    assert len(set(replayed)) > 1   # some trials were stopped early: the comparison says something


def test_replay_and_summary_by_hand(tmp_path):
    curves = [{"trial_id": str(i), "values": v, "seconds": [1.0] * len(v)} for i, v in enumerate(CURVES)]
    # grace 1, rf 2, max_t 9: rungs 1 2 4 8. One at a time: trial 0 is first at every rung and runs to 9; trial 1
    # (0.10 < 0.30 at epoch 1, the median of [0.30]) stops at 1; trial 2: 0.35 >= median(0.30, 0.10) = 0.20, then
    # 0.36 >= median of [0.35] alone = 0.35, then 0.37 < median(0.41) at rung 4: stops at 4; ...
    epochs = replay(curves, 1, 2, 9, concurrent=1)["epochs"]
    assert epochs[:3] == [9, 1, 4]
    s = summarize(curves, epochs)
    assert s["epochs_trained"] == sum(epochs) and s["share_of_fifo"] == pytest.approx(sum(epochs) / 63)
    assert s["fifo_best_val"] == 0.60
    assert s["pick_val"] == max(max(v[:e]) for v, e in zip(CURVES, epochs))
    # from a saved JSON: the same table again
    path = tmp_path / "curves.json"
    path.write_text(json.dumps({"results": {"curves": {"0": curves}}}))
    out = main(["--curves", str(path), "--grace", "1", "--rf", "2", "--out", str(tmp_path)])
    (row,) = out["results"]["settings"]
    assert row["per_seed"][0]["epochs_trained"] == sum(epochs)
