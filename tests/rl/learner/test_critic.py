"""Tests for rl/learner/critic.py: value alignment and a value step that moves towards the returns."""

import torch

from rl.learner.critic import Critic, CriticConfig
from rl.learner.learner import TrainBatch


def batch_of(lengths: list[int], prompt: int = 2) -> TrainBatch:
    g = torch.Generator().manual_seed(0)
    n, t = len(lengths), max(lengths)
    attention = (torch.arange(t) < torch.tensor(lengths).unsqueeze(1)).long()
    ids = torch.randint(1, 64, (n, t), generator=g).masked_fill(attention == 0, 0)
    loss_mask = attention.float() * (torch.arange(t) >= prompt).float()
    return TrainBatch(ids, attention, loss_mask, torch.zeros(n, t), torch.zeros(n))


def test_values_start_at_zero_are_zero_on_padding_and_learn_the_returns(qwen2_dir):
    critic = Critic(qwen2_dir, CriticConfig(lr=1e-2, micro_batch_size=2, value_clip=0.0))
    batch = batch_of([8, 5, 7])
    values = critic.values(batch)
    assert values.shape == batch.input_ids.shape
    assert torch.count_nonzero(values) == 0  # zero-initialised head
    returns = batch.loss_mask * torch.tensor([[1.0], [0.0], [1.0]])  # success, failure, success
    losses = [critic.train_step(batch, returns, critic.values(batch))["value_loss"] for _ in range(30)]
    assert losses[-1] < 0.25 * losses[0]
    values = critic.values(batch)
    assert values[0, 3] > 0.5 > values[1, 3]
    assert values[1, 5:].abs().sum() == 0  # padding stays 0


def test_value_clipping_limits_how_far_one_step_moves_the_values(qwen2_dir):
    batch = batch_of([6, 6])
    returns = batch.loss_mask * 10.0
    moved = {}
    for clip in (0.0, 0.01):
        critic = Critic(qwen2_dir, CriticConfig(lr=1e-2, micro_batch_size=2, value_clip=clip))
        old = critic.values(batch)
        for _ in range(5):
            critic.train_step(batch, returns, old)
        moved[clip] = (critic.values(batch) - old)[batch.loss_mask.bool()].abs().mean().item()
    # Once every value is more than clip away from the old ones the clipped loss has no gradient.
    assert moved[0.01] < 0.5 * moved[0.0]
