"""The numbers handed to Ray and Optuna: Ray's resource resolution, one-node placement, counts and rung ladders."""

import pytest
import ray

from tuning.hyperband import asha_rungs
from tuning.resources import RESOURCE_UNIT, amount_problem, count_problem, node_capacity, placement_problem, rung_count


@pytest.mark.parametrize("amount", [0.00001, 0.00005])
def test_what_ray_itself_refuses_as_too_fine_is_refused_here_too(amount):
    with pytest.raises(ValueError, match=r"cannot go beyond 0\.0001"):
        ray.remote(num_cpus=amount)(lambda: None)            # Ray's own check (no cluster needed)
    assert "multiple of 0.0001" in amount_problem(amount)


@pytest.mark.parametrize("amount", [RESOURCE_UNIT, 0.25, 0.5, 1, 2, 16])
def test_amounts_ray_represents_exactly_pass(amount):
    ray.remote(num_cpus=amount)(lambda: None)
    assert amount_problem(amount) is None


def test_an_amount_between_two_ray_units_is_refused_though_ray_would_silently_truncate_it():
    ray.remote(num_cpus=0.00015)(lambda: None)               # accepted by Ray, placed as 0.0001
    assert "multiple of 0.0001" in amount_problem(0.00015)
    assert "fraction <= 1 or a whole number" in amount_problem(1.5)
    assert amount_problem(-1) == "must be >= 0, got -1"


def test_counts_have_a_floor_and_a_ceiling():
    assert count_problem(1, 1) is None and count_problem(2**31 - 1, 1) is None
    assert count_problem(0, 1) == "must be >= 1, got 0"
    assert count_problem(2**31, 1) == "must be at most 2147483647, got 2147483648"


@pytest.mark.parametrize("grace,max_t,rf,rungs", [(1, 200, 3, [1, 3, 9, 27, 81]), (2, 10, 2, [2, 4, 8]), (1, 40, 4, [1, 4, 16])])
def test_rung_count_is_the_ladder_length_without_building_it(grace, max_t, rf, rungs):
    assert rung_count(grace, max_t, rf) == len(rungs)         # hand-counted ladders grace * rf^k < max_t
    assert asha_rungs(grace, max_t, rf) == rungs
    assert rung_count(1, 200, 1 + 1e-9) > 200                 # the ladder Ray would try to build: refused in the space


def test_a_trial_must_fit_one_node_not_the_clusters_sum():
    two_small = [{"Alive": True, "Resources": {"CPU": 1.0}}, {"Alive": True, "Resources": {"CPU": 1.0, "GPU": 1.0}},
                 {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]
    capacity = node_capacity(two_small)
    assert capacity == [(1.0, 0.0), (1.0, 1.0)]              # the dead node does not count
    assert placement_problem(1, 1, capacity) is None
    assert placement_problem(2, 0, capacity) == ("a trial needs 2 CPU + 0 GPU on one node, but no node of the Ray cluster "
                                                 "has that (nodes: 1 CPU + 0 GPU, 1 CPU + 1 GPU)")
    assert placement_problem(1, 2, capacity) is not None


def test_node_capacity_reads_a_real_ray_nodes_listing(ray_session):
    capacity = node_capacity(ray.nodes())
    assert len(capacity) == 1 and capacity[0][0] == ray.cluster_resources()["CPU"]
