"""tuning.progress: the search's clock (wall, CPU, trials per hour, ETA) and the live line's numbers."""

import itertools

import pytest

from tuning.experiment import cpu_seconds
from tuning.progress import SearchClock, per_hour_text


def test_remaining_epochs_eta_cpu_and_rate_by_hand():
    c = SearchClock(num_samples=4)
    c.started("a", 0.0)
    for e in range(1, 5):
        c.report("a", {"epoch": e, "cpu_time_s": 1.5 * e}, float(e))
    assert c.remaining_epochs() is None and c.eta_now() is None   # no trial ended: no mean to go by
    c.ended("a", 4.0)
    c.report("b", {"epoch": 1, "cpu_time_s": 2.0}, 5.0)
    c.report("b", {"epoch": 2, "cpu_time_s": 3.0}, 6.0)
    # b: 4 - 2 = 2 epochs to go; c and d not started: 4 each -> 10 epochs; 6 epochs in 6 s -> 10 s
    assert c.remaining_epochs() == 10
    assert c.eta_now() == pytest.approx(10.0)
    assert c.cpu_s == pytest.approx(6.0 + 3.0)
    assert c.trials_per_hour(6.0) == pytest.approx(1 / 6 * 3600)
    assert c.text(6.0) == "  0:06 elapsed, CPU 0:09, 600 trials/h, ETA 0:10"
    c.report("b", {"epoch": 9, "cpu_time_s": 9.0}, 7.0)   # past the mean: still at least one epoch to go
    assert c.remaining_epochs() == 1 + 8


def test_a_restarted_trial_adds_its_new_count_to_the_cpu_total():
    rows = [{"epoch": 1, "cpu_time_s": 1.0, "iterations_since_restore": 1},
            {"epoch": 2, "cpu_time_s": 2.5, "iterations_since_restore": 2},
            {"epoch": 2, "cpu_time_s": 4.0, "iterations_since_restore": 1},    # restored at epoch 1: epoch 2 again
            {"epoch": 3, "cpu_time_s": 5.0, "iterations_since_restore": 2},
            {"epoch": 4, "cpu_time_s": 0.5},                                     # the count went down: a new run
            {"epoch": 5, "cpu_time_s": float("nan")}]                            # not a number: not counted
    assert cpu_seconds(rows) == pytest.approx(2.5 + 5.0 + 0.5)
    c = SearchClock(num_samples=1)
    for t, r in enumerate(rows):
        c.report("a", r, float(t))
    assert c.cpu_s == pytest.approx(8.0)


def asha_like_events(n=20, concurrent=2, lengths=(40, 5, 5, 15, 5, 5, 5, 40, 5, 15, 5, 5, 5, 5, 15, 5, 40, 5, 5, 5)):
    """(time, trial, epoch, done) of a search that runs `concurrent` trials at a time, one epoch a second:
    most trials stopped at the first rung, some at the second, a few to the end."""
    events, free = [], [0.0] * concurrent
    for i in range(n):
        slot = min(range(concurrent), key=free.__getitem__)
        t = free[slot]
        for e in range(1, lengths[i] + 1):
            events.append((t + e, f"t{i}", e, e == lengths[i]))
        free[slot] = t + lengths[i]
    return sorted(events), max(free)


def ended_eta_ratios(etas):
    return [b / a for a, b in itertools.pairwise(etas) if a and b]


def test_the_eta_moves_by_at_most_a_factor_two_between_updates_once_five_trials_ended():
    events, end = asha_like_events()
    c = SearchClock(num_samples=20)
    shown, old, errors = [], [], []
    for t, trial, epoch, done in events:
        c.report(trial, {"epoch": epoch}, t)
        if done:
            c.ended(trial, t)
        eta = c.eta_now()   # once per update, as the live line shows it
        if len(c.ended_trials) >= 5 and eta:
            shown.append(eta)
            left = 20 - len(c.ended_trials)
            old.append(t / len(c.ended_trials) * left)   # the former estimate: mean wall per ended trial x trials left
            errors.append(eta / max(end - t, 1e-9))
    ratios = ended_eta_ratios(shown)
    assert ratios and 0.5 <= min(ratios) and max(ratios) <= 2.0
    assert not all(0.5 <= r <= 2.0 for r in ended_eta_ratios(old))   # the check can fail: the old ETA did
    mid = errors[len(errors) // 2]
    assert 0.5 <= mid <= 2.0   # halfway through, the ETA is within a factor of two of the time that was left


def test_per_hour_text_never_uses_an_exponent():
    assert [per_hour_text(x) for x in (0.41234, 12.34, 581.2, 1083.7, 25000.0)] == ["0.412", "12.3", "581", "1084", "25000"]
