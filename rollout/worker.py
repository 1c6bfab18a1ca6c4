"""The rollout contract and its one in-process implementation.

`Rollout` is everything the trainer asks of rollout: run a batch of episodes, make one raw engine
call (the proxy's), take new weights, report its stats, shut down. `RolloutWorker` (one inference
engine and the episodes that run on it) is a Rollout; so is the pool of such workers as Ray
actors (`rl/cluster/rollout_pool.py`), which the trainer uses unless `ray.enabled=false`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch

from rollout.agent_loop import EpisodeLimits, run_episodes
from rollout.chat import ChatFormat
from rollout.engines.base import Engine, Generation, SamplingConfig
from rollout.env_threads import EnvThreads
from rollout.types import Task, Trajectory


@dataclass
class WorkerInfo:
    """Where a worker runs and what it has done, for logs and the run summary."""

    index: int
    pid: int
    host: str
    node_id: str  # Ray's node id ("" in-process)
    version: int
    engine_restarts: int


@dataclass
class RolloutStats:
    """Restarts and re-queued calls so far, and where the workers run."""

    engine_restarts: int = 0  # inference engines restarted inside their worker (vLLM's engine core died)
    worker_restarts: int = 0  # whole workers replaced
    requeued_calls: int = 0  # calls (groups, eval slices) run again because their worker died
    workers: list[WorkerInfo] = field(default_factory=list)


class Rollout(Protocol):
    """What the trainer generates with (a `RolloutWorker`, or a pool of them as Ray actors)."""

    async def run_episodes(self, tasks: Sequence[Task], sampling: SamplingConfig,
                           group_ids: Sequence[str] | None = None, max_turns: int | None = None
                           ) -> list[Trajectory]: ...
    async def generate(self, prompt_ids: list[int], sampling: SamplingConfig) -> Generation: ...
    async def update_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None: ...
    def stats(self) -> RolloutStats: ...
    async def shutdown(self) -> None: ...


class RolloutWorker:
    """Episodes of any number of tasks, concurrently, on one engine; their environments run in
    `tool_threads` threads (`rollout/env_threads.py`)."""

    def __init__(self, engine: Engine, chat: ChatFormat, limits: EpisodeLimits, tool_threads: int,
                 index: int = 0, node_id: str = "") -> None:
        self.engine = engine
        self.chat = chat
        self.limits = limits
        self.index = index
        self.node_id = node_id
        self._threads = EnvThreads(tool_threads)

    async def run_episodes(self, tasks: Sequence[Task], sampling: SamplingConfig,
                           group_ids: Sequence[str] | None = None, max_turns: int | None = None) -> list[Trajectory]:
        """One episode per task, in the order of `tasks` (see `rollout.agent_loop.run_episodes`);
        `max_turns` overrides the worker's turn limit (a curriculum's turn cap)."""
        limits = self.limits if max_turns is None else replace(self.limits, max_turns=max_turns)
        return await run_episodes(self.engine, self.chat, tasks, sampling, limits, group_ids, self._threads)

    async def generate(self, prompt_ids: list[int], sampling: SamplingConfig) -> Generation:
        """One raw engine call, for episodes driven from outside (the OpenAI-compatible proxy)."""
        return await self.engine.generate(prompt_ids, sampling)

    async def update_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        """Load new weights in place; episodes in flight pause, then go on under `version`."""
        await self.engine.update_weights(state_dict, version)

    def info(self) -> WorkerInfo:
        return WorkerInfo(self.index, os.getpid(), socket.gethostname(), self.node_id, self.engine.version,
                          getattr(self.engine, "restarts", 0))

    def stats(self) -> RolloutStats:
        info = self.info()
        return RolloutStats(engine_restarts=info.engine_restarts, workers=[info])

    async def shutdown(self) -> None:
        self._threads.shutdown()  # never waits for a hung tool
        await self.engine.shutdown()
