"""`multivae.beta_star`: the anneal-to-1 sweep and the retraining at beta* keep the slope of the schedule."""

import pytest

from multivae.beta_star import beta_star_retrain, beta_star_sweep
from multivae.errors import UserError
from multivae.model import kl_weight
from multivae.training import TrainConfig


def test_beta_star_keeps_the_slope_with_explicit_anneal_steps():
    cfg = TrainConfig(anneal_cap=0.2, anneal_steps=1000)
    sweep = beta_star_sweep(cfg)
    assert (sweep.anneal_cap, sweep.anneal_steps) == (1.0, 5000)
    # the same beta at every step until the old cap: cap / anneal_steps per update in both runs
    assert [kl_weight(g, sweep.anneal_cap, sweep.anneal_steps) for g in range(0, 1001, 50)] == \
        pytest.approx([kl_weight(g, 0.2, 1000) for g in range(0, 1001, 50)])
    assert kl_weight(5000, 1.0, sweep.anneal_steps) == 1.0
    retrain = beta_star_retrain(cfg, 0.12)
    assert (retrain.anneal_cap, retrain.anneal_steps) == (0.12, 600)
    assert beta_star_sweep(TrainConfig(anneal_cap=0.2)).anneal_steps is None   # reference slope, resolved later
    with pytest.raises(UserError, match="no slope"):
        beta_star_sweep(TrainConfig(anneal_steps=0))
