"""Advantage estimators: small pure functions on tensors."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch


def _group_index(group_ids: Sequence[Hashable] | torch.Tensor, n: int) -> torch.Tensor:
    """Dense group index [B] (0..G-1) for arbitrary group labels (strings, ints, a LongTensor)."""
    if isinstance(group_ids, torch.Tensor):
        labels = group_ids.tolist()
    else:
        labels = list(group_ids)
    if len(labels) != n:
        raise ValueError(f"group_ids has {len(labels)} entries but rewards has {n}")
    index: dict[Hashable, int] = {}
    return torch.tensor([index.setdefault(g, len(index)) for g in labels], dtype=torch.long)


def varied_groups(rewards: torch.Tensor, group_ids: Sequence[Hashable] | torch.Tensor) -> torch.Tensor:
    """[B] bool: True where the episode's group has rewards that differ (a group-relative signal).

    A group whose rewards are all equal (singletons included) gets zero advantage under any
    group-baseline estimator, so it only dilutes a token-mean loss.
    """
    rewards = torch.as_tensor(rewards, dtype=torch.float32).flatten()
    idx = _group_index(group_ids, rewards.numel()).to(rewards.device)
    num_groups = int(idx.max().item()) + 1 if rewards.numel() else 0
    inf = torch.full((num_groups,), torch.inf, device=rewards.device)
    gmax = (-inf).scatter_reduce(0, idx, rewards, "amax")
    gmin = inf.scatter_reduce(0, idx, rewards, "amin")
    return (gmax != gmin)[idx]


def grpo_advantages(
    rewards: torch.Tensor,
    group_ids: Sequence[Hashable] | torch.Tensor,
    normalize_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO outcome advantages: each reward minus its group's mean, over the group's std.

    rewards: [B] float; group_ids: [B] labels (any hashable, or a LongTensor), episodes of one task
    share a label. normalize_std=False is Dr.GRPO (no division by the std, which over-weights
    near-uniform groups). The std is the unbiased one (n-1), as in GRPO. Groups whose rewards are all
    equal (including singletons) get exactly 0: they carry no learning signal.
    Returns: [B] float32.
    """
    rewards = torch.as_tensor(rewards, dtype=torch.float32).flatten()
    n = rewards.numel()
    idx = _group_index(group_ids, n).to(rewards.device)
    num_groups = int(idx.max().item()) + 1 if n else 0

    counts = torch.zeros(num_groups, device=rewards.device).index_add_(0, idx, torch.ones_like(rewards))
    mean = torch.zeros(num_groups, device=rewards.device).index_add_(0, idx, rewards) / counts
    centered = rewards - mean[idx]
    constant = ~varied_groups(rewards, idx)

    if normalize_std:
        sq = torch.zeros(num_groups, device=rewards.device).index_add_(0, idx, centered**2)
        std = (sq / (counts - 1).clamp(min=1)).sqrt()
        centered = centered / (std[idx] + eps)
    # Exact zeros: a float mean of equal values can be off by an ulp, which eps would not hide.
    return torch.where(constant, torch.zeros_like(centered), centered)
