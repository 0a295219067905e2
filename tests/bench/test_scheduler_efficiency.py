"""bench.scheduler_efficiency: the compute-to-target arithmetic and the per-seed aggregation on hand-made
searches, and the kept summaries a rerun skips. The searches themselves are the product's (tested in
tests/tuning); the bench's end-to-end run takes minutes even at --tiny (PBT without reused actors), so it is
run by hand: `python -m bench.scheduler_efficiency --tiny`."""

import json

import pytest

from bench import scheduler_efficiency as se
from bench.asha_vs_fifo import METRIC, WITHIN

BEST = f"best_val_{METRIC}"


def test_compute_to_reach_adds_epochs_and_seconds_in_arrival_order():
    # (arrival time, value, seconds inside the epoch), listed out of order
    log = [(3.0, 0.30, 1.5), (1.0, 0.10, 1.0), (2.0, 0.25, 2.0), (4.0, 0.40, 0.5)]
    assert se.compute_to_reach(log, 0.05) == (1, 1.0)
    assert se.compute_to_reach(log, 0.26) == (3, 4.5)
    assert se.compute_to_reach(log, 0.40) == (4, 5.0)        # reaching the target exactly counts
    assert se.compute_to_reach(log, 0.41) == (None, None)
    assert se.compute_to_reach([], 0.1) == (None, None)


def run(best, log, test=0.3, se_=0.01, epochs=None, wall=10.0):
    return {BEST: best, "log": log, "epochs_trained": epochs or len(log), "best_trial": {f"test_{METRIC}": test},
            "test_se": se_, "wall_s": {"total": wall}}


def test_pairwise_share_targets_the_better_of_the_two():
    fifo = {BEST: 0.40, "log": [(1.0, 0.2, 1.0), (2.0, 0.40, 1.0), (3.0, 0.1, 1.0), (4.0, 0.3, 1.0)]}
    asha = {BEST: 0.398, "log": [(1.0, 0.398, 1.0)]}
    assert se.pairwise_share(asha, fifo) == 0.5              # target 0.396: asha at its 1st epoch, fifo at its 2nd
    assert se.pairwise_share({BEST: 0.3, "log": [(1.0, 0.3, 1.0)]}, fifo) is None    # never within 1 % of 0.40


def test_aggregate_targets_each_seeds_best_and_takes_median_and_range_over_seeds():
    ramp = lambda values: [(float(t), v, 2.0) for t, v in enumerate(values)]   # noqa: E731
    runs = {
        "fifo": {0: run(0.50, ramp([0.1, 0.3, 0.5, 0.2])), 1: run(0.40, ramp([0.2, 0.4])), 2: run(0.30, ramp([0.3]))},
        "asha": {0: run(0.499, ramp([0.2, 0.499])), 1: run(0.41, ramp([0.41])), 2: run(0.10, ramp([0.1, 0.1]))},
    }
    summary, per_seed, table = se.aggregate(runs, [0, 1, 2], ["fifo", "asha"])
    assert per_seed[0] == {"best_val": 0.50, "target": pytest.approx(WITHIN * 0.50)}
    assert per_seed[1]["best_val"] == 0.41 and per_seed[2]["best_val"] == 0.30
    # seed 0: fifo reaches 0.495 at its 3rd epoch, asha (0.499) at its 2nd; seed 1: target 0.4059, fifo never
    # (0.40), asha at its 1st; seed 2: fifo at its 1st, asha never
    assert [runs["fifo"][k]["epochs_to_target"] for k in (0, 1, 2)] == [3, None, 1]
    assert [runs["asha"][k]["epochs_to_target"] for k in (0, 1, 2)] == [2, 1, None]
    assert runs["fifo"][0]["seconds_to_target"] == 6.0
    assert summary["fifo"]["epochs_to_target"] == {"median": 2, "min": 1, "max": 3, "n": 3, "reached": 2}
    # a share needs both to reach the target on that seed: only seed 0 (2 / 3)
    assert summary["asha"]["share_of_fifo_epochs"] == {"median": pytest.approx(2 / 3), "min": pytest.approx(2 / 3),
                                                       "max": pytest.approx(2 / 3), "n": 3, "reached": 1}
    assert table[0][0] == "fifo" and table[0][1] == "2 [1, 3] (2/3)" and table[1][3] == "0.67 [0.67, 0.67] (1/3)"
    assert table[1][6] == "0.4100 [0.1000, 0.4990]"
    # pairwise, each seed's target is the better of asha and fifo alone: seed 0 as above (2/3); seed 1 target
    # 0.99 x 0.41, fifo never; seed 2 target 0.99 x 0.30: fifo at 1, asha never
    assert summary["asha"]["share_of_fifo_epochs_pairwise"]["reached"] == 1
    assert summary["fifo"]["share_of_fifo_epochs_pairwise"]["median"] == 1.0
    assert se.mr({"median": None}) == "never"


def test_a_kept_summary_is_reused_only_for_the_same_space(tmp_path, monkeypatch):
    space = {"fixed": {"epochs": 6}, "search": {"seed": 0}}
    kept = {BEST: 0.5, "log": [[1.0, 0.5, 2.0]], "space": space}
    (tmp_path / "fifo-seed0.summary.json").write_text(json.dumps(kept))
    calls = []
    monkeypatch.setattr(se, "run_search", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(RuntimeError("ran")))
    assert se.one_search("fifo-seed0", space, tmp_path, None)[BEST] == 0.5 and not calls
    with pytest.raises(RuntimeError, match="ran"):    # another budget: searched again, not mixed in
        se.one_search("fifo-seed0", {**space, "fixed": {"epochs": 7}}, tmp_path, None)
    assert len(calls) == 1
