"""Tests for rl/losses.py against hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch

from rl.losses import kl_k3, masked_mean, policy_loss, token_entropy, token_logprobs

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


def test_token_logprobs_is_log_softmax_at_the_token():
    # logsumexp(1, 2, 3) = 3 + log(1 + e^-1 + e^-2) = 3.407606 -> log p(token 2) = 3 - 3.407606 = -0.407606
    # uniform logits over 3 -> log(1/3) = -1.098612
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]])
    lp = token_logprobs(logits, torch.tensor([[2, 1]]))
    torch.testing.assert_close(lp, torch.tensor([[-0.407606, -1.098612]]))
    bf16 = token_logprobs(logits.bfloat16(), torch.tensor([[2, 1]]))
    assert bf16.dtype == torch.float32


def test_token_entropy_of_uniform_and_peaked_distributions():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]]])
    torch.testing.assert_close(token_entropy(logits), torch.tensor([[math.log(4), 0.0]]))
