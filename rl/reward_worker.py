"""Reward terms that hold a model (the ORM) run in their own Ray actor, one per term.

The trainer's event loop only awaits the actor, so scoring overlaps generation and a slow term
backs up only its own calls (`reward/<term>/calls_in_flight`). A worker whose process dies is
replaced and the call retried, at most `reward.max_worker_restarts` times per run; every call has
a deadline (`reward.timeout_s`).
"""

from __future__ import annotations

import asyncio
import logging

from rewards.base import GroupRewards
from rl.config import TurnRLConfig
from rollout.types import Task, Trajectory

log = logging.getLogger(__name__)


class RewardWorkerDied(RuntimeError):
    """A reward worker died more often than `reward.max_worker_restarts` allows."""


class RewardActor:
    """The Ray actor: builds the term named `name` from the config and scores groups with it."""

    def __init__(self, cfg: TurnRLConfig, name: str) -> None:
        from rl.engines import make_reward_term

        logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s reward-{name} %(name)s: %(message)s")
        self._term = make_reward_term(name, cfg)

    async def score(self, task: Task, trajectories: list[Trajectory]) -> GroupRewards:
        return await self._term(task, trajectories)


class RemoteReward:
    """A `Reward` whose term runs in a `RewardActor` (see the module doc)."""

    def __init__(self, cfg: TurnRLConfig, name: str) -> None:
        self.cfg, self.name = cfg, name
        self.restarts = 0
        self.in_flight = 0
        self._actor = self._start()
        self._lock = asyncio.Lock()

    def _start(self):
        import ray

        from rl.rollout_pool import actor_runtime_env

        return ray.remote(RewardActor).options(num_cpus=self.cfg.reward.cpus_per_worker,
                                               runtime_env=actor_runtime_env()).remote(self.cfg, self.name)

    async def __call__(self, task: Task, trajectories: list[Trajectory]) -> GroupRewards:
        from ray.exceptions import RayActorError

        self.in_flight += 1
        try:
            while True:
                actor = self._actor
                try:
                    async with asyncio.timeout(self.cfg.reward.timeout_s):
                        result = await actor.score.remote(task, trajectories)
                    result.metrics["calls_in_flight"] = float(self.in_flight)
                    result.metrics["worker_restarts"] = float(self.restarts)
                    return result
                except TimeoutError:
                    raise TimeoutError(f"reward term {self.name!r} did not score a group of {len(trajectories)} "
                                       f"within {self.cfg.reward.timeout_s:.0f} s (reward.timeout_s)") from None
                except RayActorError as err:
                    await self._replace(actor, err)
        finally:
            self.in_flight -= 1

    async def _replace(self, dead, err: Exception) -> None:
        import ray

        async with self._lock:
            if self._actor is not dead:
                return
            if self.restarts >= self.cfg.reward.max_worker_restarts:
                raise RewardWorkerDied(f"the {self.name!r} reward worker died {self.restarts + 1} times "
                                       f"(reward.max_worker_restarts={self.cfg.reward.max_worker_restarts}): {err}")
            self.restarts += 1
            log.warning("reward worker %r died (%s); starting a new one (restart %d)", self.name, type(err).__name__,
                        self.restarts)
            ray.kill(dead, no_restart=True)
            self._actor = self._start()
