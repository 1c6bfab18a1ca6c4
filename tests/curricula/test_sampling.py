"""Tests for curricula/sampling.py: sampler weights by hand, the mix, the turn-cap schedule."""

import pytest

from curricula.pool import PoolTask
from curricula.sampling import (
    PoolSampler,
    learning_progress_weights,
    success_band_weights,
    turn_cap,
    uniform_weights,
)
from rollout.types import Task


def pt(i: int, recent: float | None, previous: float | None = None) -> PoolTask:
    return PoolTask(Task(id=f"t{i}", env="kbsearch", instruction=str(i), params={}), 0, 0,
                    recent_success=recent, previous_success=previous)


def test_sampler_weights_against_hand_computed_values():
    tasks = [pt(0, None), pt(1, 0.0, 0.0), pt(2, 0.5, 0.2), pt(3, 1.0, 0.9)]
    assert uniform_weights(tasks) == [1.0] * 4
    assert success_band_weights(tasks, 0.1, 0.9, floor=0.05) == [1.0, 0.05, 1.0, 0.05]
    # progress |0.0-0.0|=0 -> floor, |0.5-0.2|=0.3, |1.0-0.9|=0.1; unseen gets the top (0.3)
    assert learning_progress_weights(tasks, floor=0.05) == pytest.approx([0.3, 0.05, 0.3, 0.1])


def test_pool_sampler_mixes_samplers_and_prefers_the_band():
    tasks = [pt(0, 0.0, 0.0), pt(1, 0.5, 0.5), pt(2, 1.0, 1.0)]
    sampler = PoolSampler(lambda: tasks, {"success_band": 1.0}, seed=0, band=(0.1, 0.9))
    drawn = [t.id for t in sampler.sample(2000)]
    assert drawn.count("t1") > 0.8 * len(drawn)
    mixed = PoolSampler(lambda: tasks, {"uniform": 0.5, "success_band": 0.5}, seed=0)
    assert mixed.weights(tasks) == pytest.approx([0.5 / 3 + 0.5 * 0.05 / 1.1, 0.5 / 3 + 0.5 / 1.1,
                                                  0.5 / 3 + 0.5 * 0.05 / 1.1])
    with pytest.raises(ValueError, match="sampler mix"):
        PoolSampler(lambda: tasks, {"hardest_first": 1.0}, seed=0)


def test_turn_cap_schedules():
    caps = [4, 8, 12]
    assert [turn_cap(s, caps, every=10) for s in (0, 9, 10, 25, 99)] == [4, 4, 8, 12, 12]
    assert [turn_cap(s, caps, every=10, mode="linear") for s in (0, 5, 10, 15, 20, 50)] == [4, 6, 8, 10, 12, 12]
    assert turn_cap(3, [], every=10) is None
