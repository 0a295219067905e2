"""The epochs at which ASHA and HyperBand decide: their rung and milestone arithmetic, computed as Ray does.

A trial is checkpointed at each of these epochs (`SchedulerSettings.decision_epochs`), so a trial stopped or
paused there keeps its best weights and resumes from exactly that epoch. Pure arithmetic: imports nothing of
Ray, and the ladder's length is checked before Ray starts (`tuning.resources.rung_count`).
"""

from __future__ import annotations

import math


def asha_rungs(grace_period: int, max_t: int, reduction_factor: float) -> list[int]:
    """The epochs before max_t at which ASHA may stop a trial: its milestones grace * rf^k, computed as Ray's
    `_Bracket` does, each reached at the first epoch >= it.

    A trial is checkpointed at each of them, so a trial stopped there keeps its best weights."""
    n_rungs = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    milestones = (grace_period * reduction_factor ** k for k in range(n_rungs))
    return sorted({math.ceil(m) for m in milestones if m < max_t})


def hyperband_milestones(max_t: int, reduction_factor: float) -> list[int]:
    """The epochs before max_t at which HyperBand (BOHB's scheduler) pauses or stops a trial: in each bracket
    s, r0 = int(max_t * rf^-s), then r = int(min(r * rf, max_t)) until max_t, as Ray's `HyperBandScheduler`
    and its `_Bracket.successive_halving` compute them."""
    s_max_1 = int(round(math.log(max_t) / math.log(reduction_factor))) + 1
    found: set[int] = set()
    for s in range(s_max_1):
        r = int(max_t * reduction_factor ** (-s))
        while 0 < r < max_t:
            found.add(r)
            r = int(min(r * reduction_factor, max_t))
    return sorted(found)


__all__ = ["asha_rungs", "hyperband_milestones"]
