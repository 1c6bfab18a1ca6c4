"""Tests for rl/algo/losses.py against hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch

from rl.algo.losses import (
    aggregate_loss,
    importance_weights,
    kl_k3,
    loss_units,
    masked_mean,
    policy_loss,
)

# Two sequences. Ratios r = exp(logprobs - old_logprobs); the last token of row 1 is masked out
# (and holds a garbage log-prob that must not leak into anything).
RATIOS = torch.tensor([[1.5, 0.5, 1.1], [0.5, 1.5, 1.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
ADV = torch.tensor([1.0, -2.0])


def _inputs():
    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.7, 0.0]])
    logprobs = (old + RATIOS.log()).clone()
    logprobs[1, 2] = -80.0  # masked position: ratio would be exp(-80)
    return logprobs.requires_grad_(True), old


def test_policy_loss_matches_hand_computed_clipped_surrogate():
    # clip_eps 0.2 -> ratios clipped to [0.8, 1.2]; per token loss = -min(r * A, clip(r) * A):
    #   row 0 (A=+1): r=1.5 -> -min(1.5, 1.2) = -1.2 (clipped); r=0.5 -> -min(0.5, 0.8) = -0.5; r=1.1 -> -1.1
    #   row 1 (A=-2): r=0.5 -> -min(-1.0, -1.6) = 1.6 (clipped); r=1.5 -> -min(-3.0, -2.4) = 3.0
    # token mean over 5 tokens: (-1.2 - 0.5 - 1.1 + 1.6 + 3.0) / 5 = 0.36
    logprobs, old = _inputs()
    loss, metrics = policy_loss(logprobs, old, ADV, MASK, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.36, abs=1e-6)
    assert metrics["clipfrac"].item() == pytest.approx(2 / 5)
    assert metrics["ratio_mean"].item() == pytest.approx((1.5 + 0.5 + 1.1 + 0.5 + 1.5) / 5, abs=1e-6)
    # approx_kl = mean((r - 1) - log r): 1.5 -> 0.094535, 0.5 -> 0.193147, 1.1 -> 0.004690
    expected_kl = (2 * (0.5 - math.log(1.5)) + 2 * (-0.5 - math.log(0.5)) + (0.1 - math.log(1.1))) / 5
    assert metrics["approx_kl"].item() == pytest.approx(expected_kl, abs=1e-6)

    # d loss / d logprob = -A * r / 5 where the unclipped term is taken, 0 where clipping binds or masked.
    loss.backward()
    expected_grad = torch.tensor([[0.0, -0.5 / 5, -1.1 / 5], [0.0, 2.0 * 1.5 / 5, 0.0]])
    torch.testing.assert_close(logprobs.grad, expected_grad)


def test_clip_eps_high_widens_only_the_upper_bound():
    # clip to [0.8, 1.6]: row 0's r=1.5 now counts unclipped (-1.5); row 1's r=0.5 is still clipped (1.6)
    # loss = (-1.5 - 0.5 - 1.1 + 1.6 + 3.0) / 5 = 0.3, one clipped token of five
    logprobs, old = _inputs()
    loss, metrics = policy_loss(logprobs, old, ADV, MASK, clip_eps=0.2, clip_eps_high=0.6)
    assert loss.item() == pytest.approx(0.3, abs=1e-6)
    assert metrics["clipfrac"].item() == pytest.approx(1 / 5)


def test_per_token_advantages_equal_broadcast_sequence_advantages():
    logprobs, old = _inputs()
    per_seq, _ = policy_loss(logprobs, old, ADV, MASK)
    per_token, _ = policy_loss(logprobs, old, ADV.unsqueeze(1).expand(2, 3), MASK)
    assert per_token.item() == pytest.approx(per_seq.item())


def test_kl_k3_matches_hand_computation():
    # d = ref - lp: log(0.25/0.5) = -log 2, log(0.5/0.25) = log 2
    # k3 = e^d - d - 1: 0.5 + 0.693147 - 1 = 0.193147 and 2 - 0.693147 - 1 = 0.306853; mean 0.25
    lp = torch.tensor([[math.log(0.5), math.log(0.25), -3.0]], requires_grad=True)
    ref = torch.tensor([[math.log(0.25), math.log(0.5), -90.0]])
    kl = kl_k3(lp, ref, torch.tensor([[1.0, 1.0, 0.0]]))
    assert kl.item() == pytest.approx(0.25, abs=1e-6)
    assert kl_k3(ref, ref, torch.ones(1, 3)).item() == 0.0
    kl.backward()
    # d k3 / d lp = (1 - e^d) / n_tokens: (1 - 0.5) / 2 = 0.25 and (1 - 2) / 2 = -0.5
    torch.testing.assert_close(lp.grad, torch.tensor([[0.25, -0.5, 0.0]]))


def test_masked_mean_ignores_masked_values_even_nan_and_handles_empty_masks():
    x = torch.tensor([1.0, float("nan"), 3.0, 4.0])
    assert masked_mean(x, torch.tensor([1, 0, 1, 0])).item() == 2.0
    assert masked_mean(x, torch.zeros(4)).item() == 0.0


# Per-token losses of two sequences of 3 and 1 policy tokens (the 9s are masked out).
TOKEN_LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
AGG_MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize("mode, total, units", [
    ("token-mean", 1 + 2 + 3 + 4, 4),  # mean 2.5: the long sequence weighs 3x
    ("seq-mean-token-mean", (6 / 3) + (4 / 1), 2),  # mean 3.0: each sequence's own mean, averaged
    ("seq-mean-token-sum-norm", (6 + 4) / 8, 2),  # norm_length 8: mean 0.625
])
def test_loss_aggregations_match_hand_computed_values(mode, total, units):
    assert aggregate_loss(TOKEN_LOSS, AGG_MASK, mode, norm_length=8).item() == pytest.approx(total)
    assert loss_units(AGG_MASK, mode).item() == units


def test_loss_aggregation_rejects_unknown_modes_and_a_missing_norm_length():
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate_loss(TOKEN_LOSS, AGG_MASK, "seq-sum")
    with pytest.raises(ValueError, match="norm_length"):
        aggregate_loss(TOKEN_LOSS, AGG_MASK, "seq-mean-token-sum-norm")


def test_importance_weights_are_truncated_ratios_per_token_or_per_sequence():
    # proximal / behaviour ratios: row 0: 0.5, 3.0, 1.5; row 1: 2.0, (masked)
    behavior = torch.log(torch.tensor([[0.4, 0.1, 0.2], [0.25, 0.5, 0.5]]))
    proximal = torch.log(torch.tensor([[0.2, 0.3, 0.3], [0.5, 0.9, 0.5]]))
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    token = importance_weights(proximal, behavior, mask, "token", cap=2.0)
    torch.testing.assert_close(token, torch.tensor([[0.5, 2.0, 1.5], [2.0, 0.0, 0.0]]))
    # sequence: row 0: 0.5 * 3 * 1.5 = 2.25 -> capped at 2; row 1: 2.0 (the masked 1.8 ignored)
    seq = importance_weights(proximal, behavior, mask, "sequence", cap=2.0)
    torch.testing.assert_close(seq, torch.tensor([[2.0, 2.0, 2.0], [2.0, 0.0, 0.0]]))
    seq_high = importance_weights(proximal, behavior, mask, "sequence", cap=5.0)
    torch.testing.assert_close(seq_high[0], torch.full((3,), 2.25))


def test_policy_loss_with_importance_weights_and_sequence_mean():
    # Same clipped per-token terms as the first test: row 0: -1.2, -0.5, -1.1; row 1: 1.6, 3.0.
    # Weights 2 on row 0, 0.5 on row 1 -> row 0: -2.4, -1.0, -2.2 (mean -5.6/3); row 1: 0.8, 1.5 (mean 1.15)
    # seq-mean-token-mean: (-5.6/3 + 1.15) / 2
    logprobs, old = _inputs()
    weights = torch.tensor([[2.0, 2.0, 2.0], [0.5, 0.5, 0.0]])
    loss, _ = policy_loss(logprobs, old, ADV, MASK, clip_eps=0.2, is_weights=weights, agg="seq-mean-token-mean")
    assert loss.item() == pytest.approx((-5.6 / 3 + 1.15) / 2, abs=1e-6)
