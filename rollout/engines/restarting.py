"""An engine that survives the death of the engine it wraps.

vLLM runs its engine core in a separate process; when that process dies (killed, out of memory),
every call fails with `EngineDeadError`. `RestartingEngine` then starts a new engine from its
factory, loads the last weights it was given (so the policy version is unchanged) and retries the
failed calls: episodes in flight keep their tokens and carry on, and nothing is re-sampled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import torch

from rollout.engines.base import Engine, EngineDeadError, Generation, SamplingConfig

log = logging.getLogger(__name__)


class RestartingEngine:
    """An `Engine` over `factory()`, restarted (at most `max_restarts` times) when it dies."""

    def __init__(self, factory: Callable[[], Engine], max_restarts: int = 3) -> None:
        self._factory = factory
        self._engine = factory()
        self.max_restarts = max_restarts
        self.restarts = 0
        self._weights: tuple[dict[str, torch.Tensor], int] | None = None
        self._restart_lock = asyncio.Lock()

    @property
    def version(self) -> int:
        return self._engine.version

    @property
    def last_sync_seconds(self) -> float | None:
        return getattr(self._engine, "last_sync_seconds", None)

    async def generate(self, prompt_ids: list[int], sampling: SamplingConfig) -> Generation:
        while True:
            engine = self._engine
            try:
                return await engine.generate(prompt_ids, sampling)
            except EngineDeadError as err:
                await self._restart(engine, err)

    async def update_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        self._weights = (state_dict, version)  # what a restarted engine must load
        engine = self._engine
        try:
            return await engine.update_weights(state_dict, version)
        except EngineDeadError as err:
            await self._restart(engine, err)  # a new engine loads self._weights: these
            if self._engine.version != version:  # restarted by another call, before these arrived
                await self._engine.update_weights(state_dict, version)
            return None

    async def _restart(self, dead: Engine, err: EngineDeadError) -> None:
        async with self._restart_lock:
            if self._engine is not dead:  # another call already restarted it
                return
            if self.restarts >= self.max_restarts:
                raise EngineDeadError(f"the engine died {self.restarts + 1} times (rollout.max_engine_restarts="
                                      f"{self.max_restarts}); last: {err}") from err
            self.restarts += 1
            log.warning("engine died (%s); starting a new one (restart %d of at most %d)", err, self.restarts,
                        self.max_restarts)
            try:
                await asyncio.wait_for(dead.shutdown(), 60)
            except Exception as shutdown_err:  # it is dead already; only its leftovers are at stake
                log.warning("shutting down the dead engine failed: %r", shutdown_err)
            t0 = time.perf_counter()
            engine = self._factory()
            if self._weights is not None:
                await engine.update_weights(*self._weights)
            self._engine = engine
            log.warning("engine restarted in %.1f s at policy version %d", time.perf_counter() - t0, engine.version)

    async def shutdown(self) -> None:
        await self._engine.shutdown()
