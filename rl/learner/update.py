"""One learner step on one batch of episodes: advantages, replayed episodes, optimizer steps.

Every learner rank runs `policy_update` with the same arguments (rank 0 announces them,
rl/learner/group.py), so everything here is deterministic given its inputs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from curricula.replay import ReplayItem, ReplaySettings, actor_confidence, in_band
from rl.algo.advantages import compute_advantages, gae_advantages, outcome_token_rewards, varied_groups, whiten
from rl.learner.critic import Critic
from rl.learner.learner import Learner, make_train_batch, split_mini_batches
from rollout.types import Trajectory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpdateSettings:
    """How a batch becomes optimizer steps (the `algo.*` keys of the same names; `estimator` is algo.name)."""

    estimator: str = "grpo"
    drop_uniform_groups: bool = False
    importance_weights: str = "none"
    mini_batches: int = 1
    gamma: float = 1.0  # PPO's GAE
    lam: float = 0.95
    seed: int = 0  # with the step, seeds the mini-batch shuffle
    replay: ReplaySettings = field(default_factory=ReplaySettings)


def score_replay(learner: Learner, items: list[ReplayItem], replay: ReplaySettings,
                 pad_id: int | None) -> tuple[list[ReplayItem], torch.Tensor, dict[str, float]]:
    """The replay candidates the current policy is confident in (curricula/replay.py), their
    log-probs [K, T] under the current policy, and replay/ metrics."""
    batch = make_train_batch([i.trajectory for i in items], [i.advantage for i in items], pad_id)
    current = learner.proximal_logprobs(batch)  # a forward on every rank (ZeRO-3 gathers)
    confidence = actor_confidence(current, batch.loss_mask)
    spliced = torch.tensor([i.spliced for i in items], dtype=torch.bool)
    keep = in_band(confidence, replay, spliced)
    metrics = {"replay/candidates": float(len(items)), "replay/kept": float(keep.sum()),
               "replay/kept_splices": float((keep & spliced).sum()),
               "replay/confidence_mean": confidence.mean().item(),
               "replay/rejected_low": float(((confidence < replay.min_confidence) & ~spliced).sum()),
               "replay/rejected_high": float((confidence > replay.max_confidence).sum())}
    kept = [i for i, k in zip(items, keep.tolist(), strict=True) if k]
    width = max((len(i.trajectory.token_ids) for i in kept), default=0)  # rejected rows may be longer
    return kept, current[keep, :width], metrics


def policy_update(learner: Learner, critic: Critic | None, settings: UpdateSettings, trajs: list[Trajectory],
                  group_ids: list[str], rewards: torch.Tensor, pad_id: int | None, step: int,
                  replay: list[ReplayItem] | None = None) -> dict[str, float]:
    """Advantages, then `settings.mini_batches` optimizer steps on the batch (and, for PPO, one critic
    step on it); returns train/ (and replay/) metrics.

    `replay`: earlier successes (GRPO-family estimators only). Those that pass the confidence filter
    join the batch with their stored advantage; their old log-probs are the current policy's, so
    the clip ratio starts at 1 for them, as for fresh on-policy tokens.
    """
    varied = varied_groups(rewards, group_ids)
    keep = varied
    metrics = {"train/informative_group_share": varied.float().mean().item(), "train/skipped_update": 0.0}
    if critic is not None:  # PPO: per-token GAE advantages over the critic's values
        batch = make_train_batch(trajs, torch.zeros(len(trajs)), pad_id)
        values = critic.values(batch)
        turn_sums = torch.tensor([sum(tu.reward for tu in t.turns) for t in trajs])
        token_rewards = outcome_token_rewards(rewards - turn_sums, batch.loss_mask)
        for i, traj in enumerate(trajs):  # per-turn rewards on each turn's last generated token
            for turn in traj.turns:
                if turn.reward and turn.action_end > turn.action_start:
                    token_rewards[i, turn.action_end - 1] += turn.reward
        advantages, returns = gae_advantages(token_rewards, values, batch.loss_mask, settings.gamma, settings.lam)
        batch.advantages = whiten(advantages, batch.loss_mask)
        metrics |= {f"train/{k}": v for k, v in critic.train_step(batch, returns, values).items()}
    else:
        advantages = compute_advantages(settings.estimator, rewards, group_ids)
        if not settings.drop_uniform_groups:
            keep = torch.ones_like(keep)
        replayed, replay_logprobs = [], None
        if replay:
            replayed, replay_logprobs, replay_metrics = score_replay(learner, replay, settings.replay, pad_id)
            metrics |= replay_metrics
        # Equal rewards in every group give every token advantage 0: unless replay or the KL term
        # pulls, the gradient is exactly zero, and an optimizer step would still move the weights
        # (Adam's momentum, weight decay). So there is none.
        if not varied.any() and not replayed and (settings.drop_uniform_groups or learner.cfg.kl_coef == 0):
            log.info("step %d: every group's rewards are equal and nothing else pulls the policy; no optimizer step",
                     step + 1)
            return metrics | {"train/optimizer_steps": learner.step, "train/skipped_update": 1.0}
        fresh = [t for t, k in zip(trajs, keep, strict=True) if k]
        batch = make_train_batch(fresh + [i.trajectory for i in replayed],
                                 torch.cat([advantages[keep], torch.tensor([i.advantage for i in replayed])]), pad_id)
        if replayed:
            batch.old_logprobs[len(fresh):, :replay_logprobs.shape[1]] = replay_logprobs
    proximal_s = 0.0
    if settings.importance_weights != "none":
        started = time.perf_counter()
        batch.proximal_logprobs = learner.proximal_logprobs(batch)
        proximal_s = time.perf_counter() - started
    shuffle = torch.Generator().manual_seed(settings.seed * 7919 + step)
    per_update = [learner.train_step(mini_batch) for mini_batch in
                  split_mini_batches(batch, min(settings.mini_batches, len(batch)), shuffle)]
    perf = {key: sum(m.pop(key) for m in per_update) for key in PERF_KEYS}
    for key in per_update[0]:
        metrics[f"train/{key}"] = sum(m[key] for m in per_update) / len(per_update)
    return metrics | perf_metrics(perf, proximal_s, learner.peak_flops * learner.world_size) | {
        "train/optimizer_steps": learner.step}


PERF_KEYS = ("model_flops", "all_tokens", "step_s", "forward_s", "backward_s", "optimizer_s")


def perf_metrics(sums: dict[str, float], proximal_s: float, peak_flops: float) -> dict[str, float]:
    """The learner's speed over one update's optimizer steps (`sums` of their PERF_KEYS): tokens
    trained per second (prompts included), model FLOPs utilisation against `peak_flops` (all ranks
    together), and where the seconds went."""
    seconds = max(sums["step_s"], 1e-9)
    return {"perf/learner_tokens_per_s": sums["all_tokens"] / seconds,
            "perf/mfu": sums["model_flops"] / seconds / peak_flops,
            "perf/learner_forward_s": sums["forward_s"], "perf/learner_backward_s": sums["backward_s"],
            "perf/learner_optimizer_s": sums["optimizer_s"], "perf/learner_proximal_s": proximal_s}
