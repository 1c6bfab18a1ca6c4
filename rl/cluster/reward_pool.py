"""Reward terms that hold a model (the ORM, a local judge) run in their own Ray actor, one per term.

The trainer's event loop only awaits the actor, so scoring overlaps generation and a slow term
backs up only its own calls (`reward/<term>/calls_in_flight`). The actor builds its term from the
builder it is given (`rl/build.py`). A worker whose process dies is replaced and the call retried,
at most `reward.max_worker_restarts` times per run; every call has a deadline (`reward.timeout_s`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from rewards.base import GroupRewards, Reward
from rl.cluster.ray_env import ActorReplacements, actor_runtime_env, setup_actor_logging
from rollout.types import Task, Trajectory


class RewardWorkerDied(RuntimeError):
    """A reward worker died more often than `reward.max_worker_restarts` allows."""


class RewardActor:
    """The Ray actor: builds one reward term and scores groups with it."""

    def __init__(self, name: str, build_term: Callable[[], Reward]) -> None:
        setup_actor_logging(f"reward-{name}")
        self._term = build_term()

    async def score(self, task: Task, trajectories: list[Trajectory]) -> GroupRewards:
        return await self._term(task, trajectories)


class RemoteReward:
    """A `Reward` whose term runs in a `RewardActor` (see the module doc)."""

    def __init__(self, name: str, build_term: Callable[[], Reward], cpus: float, timeout_s: float,
                 max_restarts: int) -> None:
        self.name, self.build_term, self.cpus, self.timeout_s = name, build_term, cpus, timeout_s
        self.in_flight = 0
        self._replacements = ActorReplacements(f"the {name!r} reward worker", max_restarts,
                                               "reward.max_worker_restarts", RewardWorkerDied)
        self._actor = self._start()

    @property
    def restarts(self) -> int:
        return self._replacements.count

    def _start(self):
        import ray

        return ray.remote(RewardActor).options(num_cpus=self.cpus, runtime_env=actor_runtime_env()).remote(
            self.name, self.build_term)

    async def __call__(self, task: Task, trajectories: list[Trajectory]) -> GroupRewards:
        from ray.exceptions import RayActorError

        self.in_flight += 1
        try:
            while True:
                actor = self._actor
                try:
                    async with asyncio.timeout(self.timeout_s):
                        result = await actor.score.remote(task, trajectories)
                    result.metrics["calls_in_flight"] = float(self.in_flight)
                    result.metrics["worker_restarts"] = float(self.restarts)
                    return result
                except TimeoutError:
                    raise TimeoutError(f"reward term {self.name!r} did not score a group of {len(trajectories)} "
                                       f"within {self.timeout_s:.0f} s (reward.timeout_s)") from None
                except RayActorError as err:
                    await self._replace(actor, err)
        finally:
            self.in_flight -= 1

    async def _replace(self, dead, err: Exception) -> None:
        async def start_new() -> None:
            self._actor = self._start()

        await self._replacements.replace(f"reward worker {self.name!r}", lambda: self._actor is dead, dead, err,
                                         start_new)
