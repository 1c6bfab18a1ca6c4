"""Reflection splices (Agent-R, STeP): a failed episode's mistake, then a reflection, then the way a
successful sibling went on, as one training episode whose wrong turn is masked.

For each GRPO group (episodes of one task) with failures and successes, each failed episode is
paired with a success. Its first turn that differs from the success's is the mistake (they agree
before it). The splice is the common turns, the mistake (kept in context, loss mask 0), its
observation, then the success's turns from that point, the first of them opening with a
reflection (`replay.reflection_text`). The model learns to say the reflection and to recover,
trained on its own tokens; it never learns the mistake.

The splice is replayed in a fresh environment, so every observation is the environment's. A
mistake that ends the episode (a wrong answer) leaves nothing to recover: no splice. One that
changes the world (a wrong move in a game) can leave the success's later turns wrong: the splice
is kept only if the verifier passes. Kept splices go into the replay buffer with the success's
advantage; like any replayed episode they train when the actor-confidence filter admits them,
with log-probs under the current policy. The trajectory store keeps them (source "splice").
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from rollout.agent_loop import EpisodeLimits, run_episode
from rollout.chat import ChatFormat
from rollout.demos import ScriptedEngine
from rollout.engines.base import SamplingConfig
from rollout.types import FinishReason, Task, Trajectory


def turn_texts(trajectory: Trajectory, chat: ChatFormat) -> list[str]:
    """Each assistant turn's text as generated, without its end-of-turn token."""
    texts = []
    for turn in trajectory.turns:
        ids = trajectory.token_ids[turn.action_start:turn.action_end]
        texts.append(chat.decode(ids[:-1] if ids and ids[-1] == chat.eos_id else ids))
    return texts


def first_mistake(failed: list[str], success: list[str]) -> int | None:
    """The index of the failed episode's first turn that differs from the success's, or None when
    every turn of it is also the success's (it stopped short: no mistake to splice)."""
    for i, (bad, good) in enumerate(zip(failed, success, strict=False)):
        if bad != good:
            return i
    return None


async def splice(task: Task, failed: Trajectory, success: Trajectory, chat: ChatFormat, limits: EpisodeLimits,
                 reflection: str) -> Trajectory | None:
    """The reflection splice of `failed` onto `success` (module doc), replayed in `task`'s
    environment; None when there is no mistake to recover from or the replay does not succeed."""
    bad, good = turn_texts(failed, chat), turn_texts(success, chat)
    k = first_mistake(bad, good)
    if k is None or k == len(bad) - 1 and failed.finish_reason == FinishReason.DONE:
        return None  # no mistake, or the mistake ended the episode
    turns = [*bad[:k + 1], f"{reflection}\n{good[k]}", *good[k + 1:]]
    engine = ScriptedEngine(chat, turns)
    trajectory = await run_episode(engine, chat, task, SamplingConfig(), replace(limits, max_turns=len(turns)),
                                   group_id=success.group_id)
    if not trajectory.success or len(trajectory.turns) != len(turns):
        return None
    trajectory.mask_turn(k)
    trajectory.info["reflection_splice"] = {"failed_turns": len(bad), "mistake_turn": k}
    return trajectory


@dataclass
class Splices:
    """One step's splices, each with its task and the advantage it trains with."""

    trajectories: list[Trajectory] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)
    advantages: list[float] = field(default_factory=list)


async def reflection_splices(trajectories: list[Trajectory], group_ids: list[str], tasks: list[Task],
                             advantages: list[float], chat: ChatFormat, limits: EpisodeLimits,
                             reflection: str) -> Splices:
    """The splices of one step's episodes: in each group, every failed episode is paired with the
    group's successes (positive advantage) in turn, and takes its success's advantage."""
    groups: dict[str, list[int]] = {}
    for i, group in enumerate(group_ids):
        groups.setdefault(group, []).append(i)
    out = Splices()
    for members in groups.values():
        successes = [i for i in members if trajectories[i].success and advantages[i] > 0]
        failures = [i for i in members if not trajectories[i].success]
        for n, failed in enumerate(failures if successes else []):
            success = successes[n % len(successes)]
            trajectory = await splice(tasks[failed], trajectories[failed], trajectories[success], chat, limits,
                                      reflection)
            if trajectory is not None:
                out.trajectories.append(trajectory)
                out.tasks.append(tasks[failed])
                out.advantages.append(advantages[success])
    return out
