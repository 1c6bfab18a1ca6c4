"""Tests for rl/algo/advantages.py against hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch

from rl.algo.advantages import (
    compute_advantages,
    gae_advantages,
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


def test_gae_skips_non_policy_tokens_and_bootstraps_across_turns():
    # One sequence: [prompt, a1, a2, obs, a3]; policy tokens at 1, 2, 4; outcome reward 1 on token 4.
    # Values v1=0.5, v2=0.6, v4=0.8. gamma=1, lambda=0.5:
    #   t4 (terminal next): delta = 1 - 0.8 = 0.2;               A4 = 0.2
    #   t2 (next policy t4): delta = 0 + 0.8 - 0.6 = 0.2;        A2 = 0.2 + 0.5 * 0.2 = 0.3
    #   t1: delta = 0 + 0.6 - 0.5 = 0.1;                         A1 = 0.1 + 0.5 * 0.3 = 0.25
    values = torch.tensor([[9.0, 0.5, 0.6, 9.0, 0.8]])
    rewards = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0]])
    adv, ret = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.25, 0.3, 0.0, 0.2]]))
    torch.testing.assert_close(ret, torch.tensor([[0.0, 0.75, 0.9, 0.0, 1.0]]))
    # lambda = 1 and gamma = 1: every advantage is the return (the outcome) minus the value.
    adv1, _ = gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv1, torch.tensor([[0.0, 0.5, 0.4, 0.0, 0.2]]))


def test_outcome_rewards_go_on_the_last_policy_token_and_whiten_uses_the_mask_only():
    from rl.algo.advantages import outcome_token_rewards, whiten

    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0, 0.0], [0.0] * 6])
    placed = outcome_token_rewards(torch.tensor([1.0, -2.0, 5.0]), mask)
    expected = torch.zeros(3, 6)
    expected[0, 4], expected[1, 1] = 1.0, -2.0  # the third has no policy token: its reward goes nowhere
    torch.testing.assert_close(placed, expected)
    x = torch.tensor([[9.0, 1.0, 3.0, 9.0, 5.0, 9.0]])
    w = whiten(x, mask[:1])
    torch.testing.assert_close(w, torch.tensor([[0.0, -1.0, 0.0, 0.0, 1.0, 0.0]]))
