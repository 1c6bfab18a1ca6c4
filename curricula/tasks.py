"""Where tasks come from: a uniform sampler over an environment's generator and the fixed,
seeded held-out set that every evaluation uses."""

from __future__ import annotations

import random

from rollout.envs import get_env
from rollout.types import Task


class UniformTaskSampler:
    """Fresh tasks from the environment's generator, difficulties drawn uniformly.

    Seeds are drawn below `seed_limit` so they never collide with held-out tasks.
    """

    def __init__(self, env_name: str, difficulties: list[int], seed: int, seed_limit: int) -> None:
        self.env_cls = get_env(env_name)
        self.difficulties = list(difficulties)
        self.seed_limit = seed_limit
        self.rng = random.Random(seed)

    def sample(self, n: int) -> list[Task]:
        return [
            self.env_cls.generate_task(self.rng.randrange(self.seed_limit), self.rng.choice(self.difficulties))
            for _ in range(n)
        ]

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))


def heldout_tasks(env_name: str, difficulties: list[int], per_difficulty: int, seed_offset: int) -> list[Task]:
    """The fixed held-out set: the same tasks for the same arguments, on every machine."""
    env_cls = get_env(env_name)
    return [
        env_cls.generate_task(seed_offset + d * 100_000 + i, d)
        for d in difficulties
        for i in range(per_difficulty)
    ]
