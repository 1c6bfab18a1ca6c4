"""Tests for rl/advantages.py against hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch

from rl.advantages import (
    compute_advantages,
    grpo_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
    varied_groups,
)


def test_grpo_subtracts_group_mean_and_divides_by_unbiased_group_std():
    # Group "a": rewards 1, 0, 0, 1 -> mean 0.5, deviations +-0.5,
    #   unbiased var = 4 * 0.25 / 3 = 1/3, std = 0.57735 -> advantages +-0.5 / 0.57735 = +-0.866025.
    # Group "b": rewards 2, 0 -> mean 1, deviations +-1, var = 2 / 1 = 2, std = 1.41421 -> +-0.707107.
    rewards = torch.tensor([1.0, 0.0, 2.0, 0.0, 1.0, 0.0])
    groups = ["a", "a", "b", "b", "a", "a"]
    adv = grpo_advantages(rewards, groups, eps=0.0)
    a, b = 0.5 / math.sqrt(1 / 3), 1.0 / math.sqrt(2)
    torch.testing.assert_close(adv, torch.tensor([a, -a, b, -b, a, -a]))


def test_dr_grpo_only_subtracts_the_mean():
    # Group 0: rewards 3, 1 -> mean 2 -> +1, -1. Group 1: 0, 0, 3 -> mean 1 -> -1, -1, +2.
    rewards = torch.tensor([3.0, 1.0, 0.0, 0.0, 3.0])
    adv = grpo_advantages(rewards, torch.tensor([0, 0, 1, 1, 1]), normalize_std=False)
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, -1.0, -1.0, 2.0]))


@pytest.mark.parametrize("normalize_std", [True, False])
def test_groups_of_identical_rewards_and_singletons_get_exactly_zero(normalize_std):
    # 0.1 * 3 / 3 is not exactly 0.1 in floating point; the advantage must still be exactly 0.
    rewards = torch.tensor([0.1, 0.1, 0.1, 5.0, 1.0, 0.0])
    adv = grpo_advantages(rewards, ["x", "x", "x", "solo", "y", "y"], normalize_std=normalize_std)
    assert adv[:4].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert adv[4] > 0 > adv[5]


def test_eps_keeps_tiny_std_finite():
    # Rewards 0, 1e-6: deviations +-5e-7, std = sqrt(2 * (5e-7)^2 / 1) = 7.071e-7;
    # with eps 1e-6 the advantage is 5e-7 / 1.7071e-6 = 0.29289 (not 5e-7 / 7.071e-7 = 0.7071).
    adv = grpo_advantages(torch.tensor([0.0, 1e-6]), [0, 0], eps=1e-6)
    assert adv[1].item() == pytest.approx(0.29289, rel=1e-3)
    assert adv[0].item() == pytest.approx(-0.29289, rel=1e-3)


def test_group_ids_must_match_rewards():
    with pytest.raises(ValueError, match="group_ids"):
        grpo_advantages(torch.tensor([1.0, 0.0]), ["a"])


def test_varied_groups_marks_episodes_of_groups_whose_rewards_differ():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 2.0])
    groups = ["a", "a", "b", "b", "c", "c", "solo"]
    assert varied_groups(rewards, groups).tolist() == [False, False, True, True, False, False, False]


def test_rloo_subtracts_the_mean_of_the_other_rewards_of_the_group():
    # Group a: 1, 0, 0, 1 -> 1 - (0+0+1)/3 = 2/3 and 0 - (1+0+1)/3 = -2/3. Group b: 3, 1 -> +2, -2.
    # Group c: 2, 2, 2 (uniform) and the singleton d -> 0.
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 1.0, 2.0, 2.0, 2.0, 7.0])
    groups = ["a", "a", "a", "a", "b", "b", "c", "c", "c", "d"]
    adv = rloo_advantages(rewards, groups)
    expected = torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 2.0, -2.0, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(adv, expected)


def test_reinforce_pp_centres_per_group_and_normalises_by_the_batch_std():
    # Centred: group a (1, 0) -> 0.5, -0.5; group b (4, 0) -> 2, -2; group c (1, 1) -> 0, 0.
    # Batch std (unbiased) of [0.5, -0.5, 2, -2, 0, 0]: sum of squares 8.5 / 5 = 1.7 -> std 1.30384
    rewards = torch.tensor([1.0, 0.0, 4.0, 0.0, 1.0, 1.0])
    adv = reinforce_pp_advantages(rewards, ["a", "a", "b", "b", "c", "c"], eps=0.0)
    std = math.sqrt(1.7)
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, 2.0, -2.0, 0.0, 0.0]) / std)
    assert reinforce_pp_advantages(torch.ones(4), [0, 0, 1, 1]).tolist() == [0.0] * 4


def test_compute_advantages_dispatches_by_name():
    rewards, groups = torch.tensor([3.0, 1.0, 0.0, 0.0, 3.0]), [0, 0, 1, 1, 1]
    torch.testing.assert_close(compute_advantages("dr_grpo", rewards, groups),
                               grpo_advantages(rewards, groups, normalize_std=False))
    torch.testing.assert_close(compute_advantages("rloo", rewards, groups), rloo_advantages(rewards, groups))
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'"):
        compute_advantages("ppo", rewards, groups)
