"""Tests for curricula/replay.py: the confidence measure against hand-computed values, the band,
what the buffer keeps, and its checkpointed state."""

from __future__ import annotations

import math

import pytest
import torch

from curricula.replay import ReplayBuffer, ReplaySettings, actor_confidence, in_band
from rollout.types import FinishReason, Trajectory


def traj(name: str, success: bool) -> Trajectory:
    return Trajectory(task_id=name, group_id="0", token_ids=[1, 2, 3], loss_mask=[0, 1, 1], logprobs=[0.0, -0.1, -0.2],
                      versions=[-1, 0, 0], prompt_length=1, turns=[], finish_reason=FinishReason.DONE,
                      success=success)


def test_actor_confidence_is_the_geometric_mean_token_probability_of_trained_tokens():
    # Row 0: tokens with probabilities 0.9 and 0.5 (position 0 is the prompt, its -5.0 is ignored).
    # Row 1: one trained token of probability 0.25, then padding.
    logprobs = torch.tensor([[-5.0, math.log(0.9), math.log(0.5)], [0.0, math.log(0.25), 0.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    expected = [math.sqrt(0.9 * 0.5), 0.25]  # 0.6708..., 0.25
    assert actor_confidence(logprobs, mask).tolist() == pytest.approx(expected)


def test_in_band_keeps_confidences_between_the_bounds_inclusive():
    settings = ReplaySettings(ratio=1.0, min_confidence=0.5, max_confidence=0.95)
    confidence = torch.tensor([0.49, 0.5, 0.7, 0.95, 0.96])
    assert in_band(confidence, settings).tolist() == [False, True, True, True, False]
    # A reflection splice's reflection is new behaviour: only the upper bound applies to it.
    spliced = torch.tensor([True, False, False, False, True])
    assert in_band(confidence, settings, spliced).tolist() == [True, True, True, True, False]


def test_buffer_keeps_only_successes_that_were_pushed_up_newest_within_capacity():
    buffer = ReplayBuffer(ReplaySettings(ratio=1.0, capacity=2), seed=0)
    added = buffer.add([traj("a", True), traj("b", False), traj("c", True), traj("d", True)],
                       [0.5, 0.5, 0.0, 1.0], step=3)
    assert added == 2  # b failed, c had no positive advantage
    assert [i.trajectory.task_id for i in buffer.items] == ["a", "d"]
    buffer.add([traj("e", True)], [2.0], step=4)
    assert [(i.trajectory.task_id, i.advantage, i.step) for i in buffer.items] == [("d", 1.0, 3), ("e", 2.0, 4)]


def test_candidates_are_capped_by_ratio_and_by_what_the_buffer_holds():
    buffer = ReplayBuffer(ReplaySettings(ratio=0.5, capacity=100), seed=0)
    buffer.add([traj(str(i), True) for i in range(10)], [1.0] * 10, step=1)
    assert len(buffer.candidates(fresh=8)) == 4
    assert len(buffer.candidates(fresh=100)) == 10
    drawn = {i.trajectory.task_id for i in buffer.candidates(fresh=8)}
    assert len(drawn) == 4  # without repeats


def test_state_dict_round_trip_continues_the_same_draws():
    settings = ReplaySettings(ratio=1.0, capacity=100)
    buffer = ReplayBuffer(settings, seed=5)
    buffer.add([traj(str(i), True) for i in range(20)], [1.0] * 20, step=1)
    buffer.candidates(fresh=3)
    restored = ReplayBuffer(settings, seed=999)
    restored.load_state_dict(buffer.state_dict())
    assert [i.trajectory.task_id for i in restored.candidates(5)] == [i.trajectory.task_id
                                                                      for i in buffer.candidates(5)]
