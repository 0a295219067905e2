"""`tuning.hyperband`: ASHA's rungs and HyperBand's milestones, by hand and as Ray builds them."""

import math

import pytest
from ray.tune.schedulers import ASHAScheduler

from tuning.hyperband import asha_rungs, hyperband_milestones


def test_hyperband_milestones_are_rays_brackets_by_hand():
    # max_t 40, eta 3: s_max+1 = round(log 40 / log 3) + 1 = 4 brackets; r0 = int(40 / 3^s) = 40, 13, 4, 1,
    # each multiplied by 3 (capped at 40) up to max_t: {13, 39}, {4, 12, 36}, {1, 3, 9, 27}
    assert hyperband_milestones(40, 3) == [1, 3, 4, 9, 12, 13, 27, 36, 39]
    assert hyperband_milestones(9, 3) == [1, 3]
    # max_t 100, eta 4: r0 = 100, 25, 6, 1 -> {25}, {6, 24, 96}, {1, 4, 16, 64}
    assert hyperband_milestones(100, 4) == [1, 4, 6, 16, 24, 25, 64, 96]


@pytest.mark.parametrize("grace,max_t,rf", [(2, 6, 2), (1, 200, 3), (10, 200, 2), (2, 7, 2.5), (5, 5, 2)])
def test_asha_rungs_match_rays_brackets(grace, max_t, rf):
    sched = ASHAScheduler(time_attr="epoch", metric="ndcg@100", mode="max", max_t=max_t, grace_period=grace, reduction_factor=rf)
    milestones = sorted(math.ceil(m) for m, _ in sched._brackets[0]._rungs if m < max_t)
    assert asha_rungs(grace, max_t, rf) == milestones
