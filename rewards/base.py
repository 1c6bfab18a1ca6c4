"""The reward protocol, its weighted composition, and the small built-in terms.

A reward is an async callable that scores one group of trajectories of one task (a GRPO group):
`await reward(task, trajectories) -> GroupRewards`. It may batch across concurrent calls (the
ORM worker does) and it never blocks the event loop, so generation goes on while it runs.

- outcome: one number per trajectory;
- turn: optionally one number per turn of each trajectory, placed on the turn's last generated
  token (PPO's GAE sees them there; group-relative estimators use the episode's total);
- metrics: named numbers for the logs (the composition prefixes them with the term's name);
- flagged: optionally, per trajectory, the turns a term judged erroneous (the LLM judge with
  `judge.flag_turns`). They stay in context with loss mask 0, as the environment's flagged turns do;
- failure: why a term could score none of the group (`StopOnFailedRewards` stops a run on a streak).

Terms: `verifier` (the environment's verifier), `format` (a penalty per malformed or failed tool
call, on its turn), `length` (DAPO's soft over-length penalty); `rewards/orm.py` and
`rewards/judge.py` add the learned and the LLM-judged ones. `WeightedSum` composes any of them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Protocol

from rollout.types import Task, Trajectory

log = logging.getLogger(__name__)


@dataclass
class GroupRewards:
    outcome: list[float]  # one per trajectory
    turn: list[list[float]] | None = None  # per trajectory, one per turn (None: no per-turn rewards)
    metrics: dict[str, float] = field(default_factory=dict)
    flagged: list[set[int]] | None = None  # per trajectory, indices of turns to mask
    # Set by a term that could score none of the group's trajectories (every call to its model or
    # service failed): why, for the trainer's log and its stop after reward.max_failed_groups.
    failure: str | None = None

    def totals(self) -> list[float]:
        """Each trajectory's return: its outcome plus its per-turn rewards."""
        if self.turn is None:
            return list(self.outcome)
        return [o + sum(t) for o, t in zip(self.outcome, self.turn, strict=True)]

    def assign(self, trajectories: list[Trajectory]) -> list[float]:
        """Write the rewards onto `trajectories` (`reward`: the total; each turn's own) and mask the
        flagged turns; returns the totals."""
        totals = self.totals()
        for i, traj in enumerate(trajectories):
            traj.reward = totals[i]
            for turn, value in zip(traj.turns, self.turn[i] if self.turn else [], strict=False):
                turn.reward = value
            for index in self.flagged[i] if self.flagged else ():
                traj.mask_turn(index)
        return totals


class Reward(Protocol):
    async def __call__(self, task: Task, trajectories: list[Trajectory]) -> GroupRewards: ...


class VerifierReward:
    """1 for a trajectory the environment's verifier accepts, else 0 (values configurable)."""

    def __init__(self, success: float = 1.0, failure: float = 0.0) -> None:
        self.success, self.failure = success, failure

    async def __call__(self, task: Task, trajectories: list[Trajectory]) -> GroupRewards:
        outcome = [self.success if t.success else self.failure for t in trajectories]
        return GroupRewards(outcome, metrics={"success_rate": sum(t.success for t in trajectories) / len(trajectories)})


class FormatPenalty:
    """-1 on every turn whose tool call was malformed, unknown or failed (scaled by the term's weight)."""

    async def __call__(self, task: Task, trajectories: list[Trajectory]) -> GroupRewards:
        turn = [[-1.0 if tu.tool_error else 0.0 for tu in t.turns] for t in trajectories]
        errors = sum(-sum(t) for t in turn)
        turns = max(sum(len(t.turns) for t in trajectories), 1)
        return GroupRewards([0.0] * len(trajectories), turn, {"error_turn_share": errors / turns})


class LengthPenalty:
    """DAPO's soft over-length penalty: 0 up to `soft_tokens` generated tokens, falling linearly to -1
    at `max_tokens` and beyond."""

    def __init__(self, soft_tokens: int, max_tokens: int) -> None:
        if not 0 < soft_tokens < max_tokens:
            raise ValueError(f"LengthPenalty needs 0 < soft_tokens ({soft_tokens}) < max_tokens ({max_tokens})")
        self.soft_tokens, self.max_tokens = soft_tokens, max_tokens

    async def __call__(self, task: Task, trajectories: list[Trajectory]) -> GroupRewards:
        span = self.max_tokens - self.soft_tokens
        outcome = [-min(max(t.num_generated_tokens - self.soft_tokens, 0) / span, 1.0) for t in trajectories]
        return GroupRewards(outcome, metrics={"penalised_share": sum(o < 0 for o in outcome) / len(outcome)})


class WeightedSum:
    """sum_i weight_i * term_i, outcome and per-turn rewards alike; the terms run concurrently."""

    def __init__(self, terms: dict[str, tuple[Reward, float]]) -> None:
        if not terms:
            raise ValueError("WeightedSum needs at least one reward term")
        self.terms = terms

    async def __call__(self, task: Task, trajectories: list[Trajectory]) -> GroupRewards:
        names = list(self.terms)
        parts = await asyncio.gather(*(self.terms[name][0](task, trajectories) for name in names))
        n = len(trajectories)
        outcome = [0.0] * n
        turn = None
        flagged = None
        metrics: dict[str, float] = {}
        for name, part in zip(names, parts, strict=True):
            weight = self.terms[name][1]
            if len(part.outcome) != n:
                raise ValueError(f"reward term {name!r} returned {len(part.outcome)} outcomes for {n} trajectories")
            outcome = [o + weight * p for o, p in zip(outcome, part.outcome, strict=True)]
            if part.turn is not None:
                turn = turn or [[0.0] * len(t.turns) for t in trajectories]
                turn = [[a + weight * b for a, b in zip(ta, tb, strict=True)] for ta, tb in zip(turn, part.turn,
                                                                                                 strict=True)]
            if part.flagged is not None:  # a turn any term flags is masked
                flagged = [a | b for a, b in zip(flagged or [set() for _ in range(n)], part.flagged, strict=True)]
            metrics[f"{name}/mean"] = sum(part.totals()) / n
            metrics.update({f"{name}/{k}": v for k, v in part.metrics.items()})
        failures = [f"reward term {name!r}: {part.failure}" for name, part in zip(names, parts, strict=True)
                    if part.failure]
        return GroupRewards(outcome, turn, metrics, flagged, "; ".join(failures) or None)


class FailedRewardError(RuntimeError):
    """A reward term failed on every episode of too many groups in a row."""


class StopOnFailedRewards:
    """`reward`, stopping the run once `max_groups` groups in a row came back with a failure (a term
    that could score none of their episodes: a judge endpoint that is down trains on zeros
    otherwise); each such group is logged. `max_groups` 0: never stop."""

    def __init__(self, reward: Reward, max_groups: int) -> None:
        self.reward, self.max_groups = reward, max_groups
        self.in_a_row = 0

    async def __call__(self, task: Task, trajectories: list[Trajectory]) -> GroupRewards:
        scored = await self.reward(task, trajectories)
        if scored.failure is None:
            self.in_a_row = 0
            return scored
        self.in_a_row += 1
        log.warning("no reward for any episode of a group of task %s (%d in a row): %s", task.id, self.in_a_row,
                    scored.failure)
        if self.max_groups and self.in_a_row >= self.max_groups:
            raise FailedRewardError(f"{self.in_a_row} groups in a row got no reward ({scored.failure}); stopping "
                                    "rather than train on nothing (reward.max_failed_groups="
                                    f"{self.max_groups}; 0 never stops)")
        return scored
