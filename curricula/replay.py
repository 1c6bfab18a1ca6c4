"""The replay buffer: successful episodes trained again later, if the current policy is confident
enough in them but has not learned them yet (WebRL's actor-confidence filter).

After each learner step the successes with a positive advantage go in (newest kept, `capacity` at
most). Before the next step, up to `ratio` times the fresh episodes' count are drawn and scored
under the current policy; those whose confidence lies in [min_confidence, max_confidence] join the
batch with the advantage they had when first trained. Confidence is the geometric mean of the
per-token probabilities of the policy's own tokens, exp(mean log p) = 1 / perplexity, WebRL's
measure: below the band the episode is too far from what the policy would do now (off-policy
noise), above it the policy already does this and the sample teaches nothing.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

import torch

from rollout.types import Trajectory


@dataclass
class ReplaySettings:
    # Replayed episodes per fresh episode, at most (WebRL caps replay at 2x fresh data); 0: no replay.
    ratio: float = 0.0
    min_confidence: float = 0.5
    max_confidence: float = 0.95
    capacity: int = 512  # successes kept, newest first
    # Reflection splices (curricula/reflection.py, Agent-R): each step's failed episodes spliced onto
    # a successful sibling at their first mistake (masked), the success's next turn opening with
    # reflection_text; those the environment confirms join the buffer.
    reflection_splices: bool = False
    reflection_text: str = "Wait, that step was a mistake. Let me go back and do it right."

    def check(self) -> None:
        """Raise ValueError naming the fields of settings no replay buffer can run with."""
        if self.ratio < 0 or not 0 <= self.min_confidence <= self.max_confidence <= 1 or self.capacity < 1:
            raise ValueError(f"ratio={self.ratio} must be >= 0, 0 <= min_confidence={self.min_confidence} <= "
                             f"max_confidence={self.max_confidence} <= 1 and capacity={self.capacity} >= 1")


@dataclass
class ReplayItem:
    """A successful episode and the advantage it was trained with, `step` the step that trained it."""

    trajectory: Trajectory
    advantage: float
    step: int
    # A reflection splice (curricula/reflection.py): its reflection is new behaviour by design, so
    # only the filter's upper bound applies to it.
    spliced: bool = False


def actor_confidence(logprobs: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """exp(mean log-prob) of each row's trained tokens: logprobs, loss_mask [N, T] -> [N]."""
    tokens = loss_mask.sum(dim=1).clamp(min=1)
    return torch.exp((logprobs * loss_mask).sum(dim=1) / tokens)


def in_band(confidence: torch.Tensor, settings: ReplaySettings, spliced: torch.Tensor | None = None) -> torch.Tensor:
    """[N] bool: which confidences lie within [min_confidence, max_confidence]; `spliced` rows
    ([N] bool) need only be at most max_confidence."""
    low_ok = confidence >= settings.min_confidence
    if spliced is not None:
        low_ok = low_ok | spliced
    return low_ok & (confidence <= settings.max_confidence)


class ReplayBuffer:
    def __init__(self, settings: ReplaySettings, seed: int) -> None:
        self.settings = settings
        self.items: deque[ReplayItem] = deque(maxlen=settings.capacity)
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, trajectories: list[Trajectory], advantages: list[float], step: int, spliced: bool = False) -> int:
        """Keep the successes that were pushed up (advantage > 0); returns how many went in."""
        kept = [ReplayItem(t, a, step, spliced) for t, a in zip(trajectories, advantages, strict=True)
                if t.success and a > 0]
        self.items.extend(kept)
        return len(kept)

    def candidates(self, fresh: int) -> list[ReplayItem]:
        """Up to `ratio * fresh` items drawn at random, for the confidence filter to score."""
        n = min(len(self.items), int(self.settings.ratio * fresh))
        return self.rng.sample(list(self.items), n)

    def state_dict(self) -> dict:
        return {"items": list(self.items), "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.items = deque(state["items"], maxlen=self.settings.capacity)
        self.rng.setstate(state["rng"])
