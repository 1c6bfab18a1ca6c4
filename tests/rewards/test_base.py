"""Tests for rewards/base.py: the built-in terms and their weighted composition."""

import asyncio

import pytest

from rewards.base import FormatPenalty, GroupRewards, LengthPenalty, VerifierReward, WeightedSum
from rollout.types import FinishReason, Task, Trajectory, Turn

TASK = Task(id="t", env="kbsearch", difficulty=1, instruction="?", params={})


def traj(success: bool, generated: int = 4, errors: tuple[bool, ...] = (False,)) -> Trajectory:
    turns = [Turn(action_start=1, action_end=1 + generated, observation_end=1 + generated, tool_error=e)
             for e in errors]
    return Trajectory(task_id="t", group_id="g", token_ids=[0] * (1 + generated), loss_mask=[0] + [1] * generated,
                      logprobs=[0.0] * (1 + generated), versions=[-1] + [0] * generated, prompt_length=1,
                      turns=turns, finish_reason=FinishReason.DONE, success=success)


def run(reward, trajs):
    return asyncio.run(reward(TASK, trajs))


def test_verifier_reward_follows_the_verifier():
    out = run(VerifierReward(), [traj(True), traj(False)])
    assert out.outcome == [1.0, 0.0] and out.turn is None and out.metrics["success_rate"] == 0.5
    assert run(VerifierReward(failure=-1.0), [traj(False)]).outcome == [-1.0]


def test_format_penalty_lands_on_the_failed_turns():
    out = run(FormatPenalty(), [traj(True, errors=(False, True, True)), traj(False, errors=(False,))])
    assert out.turn == [[0.0, -1.0, -1.0], [0.0]] and out.totals() == [-2.0, 0.0]
    assert out.metrics["error_turn_share"] == pytest.approx(2 / 4)


def test_length_penalty_is_zero_below_the_soft_limit_then_linear_to_minus_one():
    out = run(LengthPenalty(soft_tokens=10, max_tokens=20), [traj(True, 8), traj(True, 15), traj(True, 30)])
    assert out.outcome == [0.0, -0.5, -1.0]


def test_weighted_sum_adds_outcomes_and_turn_rewards_by_weight_and_prefixes_metrics():
    reward = WeightedSum({"verifier": (VerifierReward(), 1.0), "format": (FormatPenalty(), 0.1)})
    out = run(reward, [traj(True, errors=(True, False)), traj(False, errors=(False,))])
    assert out.outcome == [1.0, 0.0]
    assert out.turn == [[-0.1, 0.0], [0.0]]
    assert out.totals() == pytest.approx([0.9, 0.0])
    assert out.metrics["verifier/mean"] == 0.5 and "format/error_turn_share" in out.metrics
    trajs = [traj(True, errors=(True, False)), traj(False, errors=(False,))]
    assert run(reward, trajs).assign(trajs) == pytest.approx([0.9, 0.0])
    assert trajs[0].reward == pytest.approx(0.9) and [t.reward for t in trajs[0].turns] == [-0.1, 0.0]


def test_weighted_sum_rejects_a_term_that_returns_the_wrong_count():
    class Broken:
        async def __call__(self, task, trajectories):
            return GroupRewards([1.0])

    with pytest.raises(ValueError, match="'broken' returned 1 outcomes for 2"):
        run(WeightedSum({"broken": (Broken(), 1.0)}), [traj(True), traj(False)])
