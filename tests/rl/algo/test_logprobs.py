"""Tests for rl/algo/logprobs.py: hand-computed values, and chunks equal to one pass (values and gradients)."""

from __future__ import annotations

import math

import pytest
import torch

from rl.algo.logprobs import sampled_logprobs


def test_logprobs_are_log_softmax_at_the_token_and_entropy_that_of_the_distribution():
    # Identity head: the hidden states are the logits.
    # logsumexp(1, 2, 3) = 3.407606 -> log p(2) = -0.407606; uniform over 3 -> log(1/3), entropy log 3.
    head = torch.nn.Identity()
    logprobs, entropy = sampled_logprobs(torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]), head,
                                         torch.tensor([2, 1]))
    torch.testing.assert_close(logprobs, torch.tensor([-0.407606, -1.098612]))
    assert entropy[1].item() == pytest.approx(math.log(3))
    # Temperature 2 halves the logits: 1.5 - logsumexp(0.5, 1, 1.5) = 1.5 - 2.180270 = -0.680270.
    hot, _ = sampled_logprobs(torch.tensor([[1.0, 2.0, 3.0]]), head, torch.tensor([2]), temperature=2.0)
    assert hot.item() == pytest.approx(-0.680270, abs=1e-6)
    peaked = sampled_logprobs(torch.tensor([[100.0, 0.0, 0.0]]).bfloat16(), head, torch.tensor([0]))
    assert peaked[0].dtype == torch.float32 and peaked[1].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("chunk_tokens", [1, 7, 16, 64])
def test_chunked_logprobs_and_their_gradients_equal_one_pass(chunk_tokens):
    torch.manual_seed(0)
    head = torch.nn.Linear(24, 301, bias=False)
    hidden = torch.randn(50, 24, requires_grad=True)
    targets = torch.randint(0, 301, (50,))
    weights = torch.randn(50)

    def run(chunk: int):
        head.zero_grad()
        hidden.grad = None
        logprobs, entropy = sampled_logprobs(hidden, head, targets, temperature=0.7, chunk_tokens=chunk)
        (logprobs * weights).sum().backward()
        return logprobs.detach(), entropy, hidden.grad.clone(), head.weight.grad.clone()

    whole, chunked = run(0), run(chunk_tokens)
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not chunked[1].requires_grad  # the entropy is a metric


def test_chunked_scoring_holds_one_chunk_of_logits_at_a_time():
    # The head records the largest output it made; with chunks of 8 no call sees more than 8 rows,
    # in the forward pass or in the backward pass's recomputation.
    head = torch.nn.Linear(16, 1000, bias=False)
    rows: list[int] = []
    head.register_forward_hook(lambda module, args, out: rows.append(out.shape[0]))
    logprobs, _ = sampled_logprobs(torch.randn(40, 16, requires_grad=True), head, torch.randint(0, 1000, (40,)),
                                   chunk_tokens=8)
    logprobs.sum().backward()
    assert max(rows) == 8 and len(rows) == 10  # 5 chunks forward, 5 recomputed backward
    with pytest.raises(ValueError, match="one row per position"):
        sampled_logprobs(torch.randn(4, 16), head, torch.zeros(3, dtype=torch.long))
