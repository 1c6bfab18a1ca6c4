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


def _grouped(rewards: torch.Tensor, group_ids: Sequence[Hashable] | torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(rewards as flat float32 [B], dense group index [B], number of groups)."""
    rewards = torch.as_tensor(rewards, dtype=torch.float32).flatten()
    idx = _group_index(group_ids, rewards.numel()).to(rewards.device)
    return rewards, idx, int(idx.max().item()) + 1 if rewards.numel() else 0


def _group_sum(values: torch.Tensor, idx: torch.Tensor, num_groups: int) -> torch.Tensor:
    """[G] sum of `values` [B] over each group."""
    return torch.zeros(num_groups, device=values.device).index_add_(0, idx, values)


def varied_groups(rewards: torch.Tensor, group_ids: Sequence[Hashable] | torch.Tensor) -> torch.Tensor:
    """[B] bool: True where the episode's group has rewards that differ (a group-relative signal).

    A group whose rewards are all equal (singletons included) gets zero advantage under any
    group-baseline estimator, so it only dilutes a token-mean loss.
    """
    rewards, idx, num_groups = _grouped(rewards, group_ids)
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
    rewards, idx, num_groups = _grouped(rewards, group_ids)
    counts = _group_sum(torch.ones_like(rewards), idx, num_groups)
    centered = rewards - (_group_sum(rewards, idx, num_groups) / counts)[idx]
    constant = ~varied_groups(rewards, idx)

    if normalize_std:
        sq = _group_sum(centered**2, idx, num_groups)
        std = (sq / (counts - 1).clamp(min=1)).sqrt()
        centered = centered / (std[idx] + eps)
    # Exact zeros: a float mean of equal values can be off by an ulp, which eps would not hide.
    return torch.where(constant, torch.zeros_like(centered), centered)


def rloo_advantages(rewards: torch.Tensor, group_ids: Sequence[Hashable] | torch.Tensor) -> torch.Tensor:
    """RLOO: each reward minus the mean of the *other* rewards of its group (leave-one-out baseline).

    Equals n / (n - 1) times the reward minus the group mean; singletons get 0.
    rewards: [B]; group_ids: [B] labels. Returns [B] float32.
    """
    rewards, idx, num_groups = _grouped(rewards, group_ids)
    n = _group_sum(torch.ones_like(rewards), idx, num_groups)[idx]
    sums = _group_sum(rewards, idx, num_groups)
    others_mean = (sums[idx] - rewards) / (n - 1).clamp(min=1)
    adv = torch.where(n > 1, rewards - others_mean, torch.zeros_like(rewards))
    return torch.where(varied_groups(rewards, idx), adv, torch.zeros_like(adv))


def reinforce_pp_advantages(rewards: torch.Tensor, group_ids: Sequence[Hashable] | torch.Tensor,
                            eps: float = 1e-6) -> torch.Tensor:
    """REINFORCE++ (its "-baseline" form for grouped rollouts): subtract the group mean, then divide
    by the std of those centred rewards over the whole batch (global, not per-group, normalisation,
    which keeps near-uniform groups from being blown up as GRPO's per-group std does).

    rewards: [B]; group_ids: [B] labels. Returns [B] float32 (all 0 when every group is uniform).
    """
    centered = grpo_advantages(rewards, group_ids, normalize_std=False)
    if centered.numel() < 2:
        return torch.zeros_like(centered)
    return centered / (centered.std() + eps)


def gae_advantages(token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                   lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over the policy tokens of each sequence (PPO with a critic).

    token_rewards, values, mask: [B, T]. Only positions with mask 1 are steps of the MDP; prompt and
    observation tokens between turns are skipped (the environment's part of a transition), so a
    turn's last token bootstraps from the value of the next turn's first token. The step after a
    sequence's last policy token is terminal (value 0). Outcome rewards sit on the last policy token.
    Returns (advantages [B, T], returns [B, T] = advantages + values), 0 off the mask.
    """
    m = mask.to(torch.bool)
    advantages = torch.zeros_like(values, dtype=torch.float32)
    next_value = torch.zeros(values.shape[0], dtype=torch.float32, device=values.device)
    next_gae = torch.zeros_like(next_value)
    for t in reversed(range(values.shape[1])):
        here = m[:, t]
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        gae = delta + gamma * lam * next_gae
        advantages[:, t] = torch.where(here, gae, torch.zeros_like(gae))
        next_gae = torch.where(here, gae, next_gae)
        next_value = torch.where(here, values[:, t].float(), next_value)
    returns = torch.where(m, advantages + values, torch.zeros_like(advantages))
    return advantages, returns


def outcome_token_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] outcome rewards placed on each sequence's last policy token -> [B, T] (0 elsewhere)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask.to(torch.bool), positions, torch.full_like(positions, -1)).max(-1).values
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    has_tokens = last >= 0
    out[has_tokens.nonzero().squeeze(-1), last[has_tokens]] = torch.as_tensor(rewards, dtype=torch.float32)[has_tokens]
    return out


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit variance over the masked positions (PPO's advantage normalisation); 0 elsewhere."""
    m = mask.to(torch.bool)
    picked = values[m]
    if picked.numel() < 2:
        return torch.zeros_like(values)
    return torch.where(m, (values - picked.mean()) / (picked.std() + eps), torch.zeros_like(values))


# Estimators from outcome rewards and groups alone; "ppo" (GAE over a critic's values) is the other choice.
ADVANTAGE_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp")


def compute_advantages(name: str, rewards: torch.Tensor, group_ids: Sequence[Hashable] | torch.Tensor) -> torch.Tensor:
    """The advantages [B] of the estimator called `name` (one of ADVANTAGE_ESTIMATORS)."""
    if name == "grpo":
        return grpo_advantages(rewards, group_ids)
    if name == "dr_grpo":
        return grpo_advantages(rewards, group_ids, normalize_std=False)
    if name == "rloo":
        return rloo_advantages(rewards, group_ids)
    if name == "reinforce_pp":
        return reinforce_pp_advantages(rewards, group_ids)
    raise ValueError(f"unknown advantage estimator {name!r}; choose one of {ADVANTAGE_ESTIMATORS}")
