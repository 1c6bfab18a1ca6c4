"""Rollout workers as Ray actors: placement, dispatch, weight sync, and replacement of dead workers.

A `RolloutPool` of `rollout.num_workers` Ray actors is the trainer's `Rollout` (rollout/worker.py)
unless `ray.enabled=false`; each actor builds its own `RolloutWorker` from the builder it is given
(`rl/build.py`), never from the whole config.

- Dispatch: each call (one GRPO group, or a slice of the held-out set) goes to the worker with
  the fewest episodes in flight.
- Weight sync: `rollout.weight_sync` = `object_store` (one `ray.put`, every worker reads it) or
  `broadcast` (a gloo group from the learner to the workers, in buckets: `rl/cluster/weight_sync.py`).
  Each worker pauses its episodes in flight, loads the weights in place and lets them go on
  under the new version.
- Faults: a worker whose process dies (`RayActorError`) is replaced by a new actor that loads the
  last weights; the call it was running is re-queued on the pool, and its episodes start again
  (their tokens so far died with the worker). At most `rollout.max_worker_restarts` per run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from rl.cluster.ray_env import ActorReplacements, actor_runtime_env, free_port, rendezvous_host, setup_actor_logging
from rl.cluster.weight_sync import BroadcastGroup, WeightBroadcastError, layout_of
from rl.config import RolloutConfig
from rollout.engines.base import Generation, SamplingConfig
from rollout.engines.weights import WeightSyncTimeout
from rollout.types import Task, Trajectory
from rollout.worker import RolloutStats, RolloutWorker, WorkerInfo

log = logging.getLogger(__name__)

# Builds the worker of slot `index` on Ray node `node_id` (picklable: it travels to the actor).
WorkerBuilder = Callable[[int, str], RolloutWorker]


class RolloutWorkerDied(RuntimeError):
    """Rollout workers died more often than `rollout.max_worker_restarts` allows."""


class RolloutStartError(RuntimeError):
    """A rollout worker could not be placed or started in time."""


class RolloutActor:
    """The Ray actor around one `RolloutWorker`; its engine is built in the actor's event loop."""

    def __init__(self, build_worker: WorkerBuilder, index: int) -> None:
        self._build_worker = build_worker
        self._index = index
        self._worker: RolloutWorker | None = None
        self._group: BroadcastGroup | None = None

    async def start(self) -> WorkerInfo:
        import ray

        setup_actor_logging(f"rollout-{self._index}")
        self._worker = self._build_worker(self._index, ray.get_runtime_context().get_node_id())
        return self._worker.info()

    async def run_episodes(self, tasks: list[Task], sampling: SamplingConfig, group_ids: list[str] | None,
                           max_turns: int | None) -> list[Trajectory]:
        return await self._worker.run_episodes(tasks, sampling, group_ids, max_turns)

    async def generate(self, prompt_ids: list[int], sampling: SamplingConfig) -> Generation:
        return await self._worker.generate(prompt_ids, sampling)

    async def update_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> WorkerInfo:
        await self._worker.update_weights(state_dict, version)
        return self._worker.info()

    async def join_broadcast(self, host: str, port: int, rank: int, world_size: int, timeout_s: float) -> None:
        self._group = await asyncio.to_thread(BroadcastGroup, host, port, rank, world_size, timeout_s)

    async def receive_weights(self, layout, bucket_bytes: int, version: int) -> WorkerInfo:
        state = await asyncio.to_thread(self._group.receive, layout, bucket_bytes)
        return await self.update_weights(state, version)

    def info(self) -> WorkerInfo:
        return self._worker.info()

    async def shutdown(self) -> None:
        if self._worker is not None:
            await self._worker.shutdown()


@dataclass
class _Slot:
    """One place in the pool; its actor changes when the worker is replaced."""

    index: int
    actor: object  # ray.actor.ActorHandle
    info: WorkerInfo
    episodes_in_flight: int = 0


class RolloutPool:
    """`rollout.num_workers` rollout workers as Ray actors (see the module doc)."""

    def __init__(self, build_worker: WorkerBuilder, settings: RolloutConfig, ray_address: str = "") -> None:
        self.build_worker = build_worker
        self.settings = settings
        self.ray_address = ray_address  # "" for a local Ray: process groups meet on localhost
        self.backend = settings.weight_sync
        self.bucket_bytes = settings.weight_sync_bucket_mb * 2**20
        self.timeout_s = settings.weight_sync_timeout_s
        self._slots: list[_Slot] = []
        self._weights: tuple[object, int] | None = None  # the last weights (an ObjectRef or a state dict), version
        self._group: BroadcastGroup | None = None
        self._replacements = ActorReplacements("rollout workers", settings.max_worker_restarts,
                                               "rollout.max_worker_restarts", RolloutWorkerDied)
        self._requeued = 0

    @classmethod
    async def start(cls, build_worker: WorkerBuilder, settings: RolloutConfig, ray_address: str = "") -> RolloutPool:
        pool = cls(build_worker, settings, ray_address)
        actors = [pool._new_actor(i) for i in range(settings.num_workers)]
        infos = await pool._await_start(actors)
        pool._slots = [_Slot(i, actor, info) for i, (actor, info) in enumerate(zip(actors, infos, strict=True))]
        for info in infos:
            log.info("rollout worker %d: pid %d on %s (node %s)", info.index, info.pid, info.host, info.node_id[:8])
        return pool

    def _new_actor(self, index: int):
        import ray

        r = self.settings
        return ray.remote(RolloutActor).options(
            name=f"turnrl-rollout-{index}-{time.monotonic_ns()}", num_cpus=r.cpus_per_worker,
            num_gpus=r.gpus_per_worker, resources=dict(r.worker_resources) or None,
            scheduling_strategy="SPREAD", runtime_env=actor_runtime_env(),
        ).remote(self.build_worker, index)

    async def _await_start(self, actors: list) -> list[WorkerInfo]:
        import ray

        r = self.settings
        try:
            async with asyncio.timeout(r.worker_start_timeout_s):
                return list(await asyncio.gather(*(a.start.remote() for a in actors)))
        except TimeoutError:
            raise RolloutStartError(
                f"{len(actors)} rollout worker(s) did not start within {r.worker_start_timeout_s:.0f} s "
                f"(rollout.worker_start_timeout_s). Each needs {r.cpus_per_worker} CPU, {r.gpus_per_worker} GPU"
                f"{' and ' + str(dict(r.worker_resources)) if r.worker_resources else ''}; the cluster has "
                f"{ray.available_resources()} free. Lower rollout.num_workers or rollout.cpus_per_worker, or "
                "add nodes.") from None

    async def run_episodes(self, tasks: Sequence[Task], sampling: SamplingConfig,
                           group_ids: Sequence[str] | None = None, max_turns: int | None = None) -> list[Trajectory]:
        """Run the episodes on the least busy worker; if it dies meanwhile, again on its replacement."""
        group_ids = None if group_ids is None else list(group_ids)
        return await self._dispatch(len(tasks), lambda actor: actor.run_episodes.remote(list(tasks), sampling,
                                                                                         group_ids, max_turns))

    async def generate(self, prompt_ids: list[int], sampling: SamplingConfig) -> Generation:
        """One raw engine call (the proxy's) on the least busy worker; again on its replacement if it dies."""
        return await self._dispatch(1, lambda actor: actor.generate.remote(prompt_ids, sampling))

    async def _dispatch(self, episodes: int, call):
        """`call(actor)` on the worker with the fewest episodes in flight, re-queued if that worker dies."""
        from ray.exceptions import RayActorError

        while True:
            slot = min(self._slots, key=lambda s: (s.episodes_in_flight, s.index))
            actor = slot.actor
            slot.episodes_in_flight += episodes
            try:
                return await call(actor)
            except RayActorError as err:
                self._requeued += 1
                log.warning("rollout worker %d died with %d episodes in flight; they are re-queued", slot.index,
                            slot.episodes_in_flight)
                await self._replace(slot, actor, err)
            finally:
                slot.episodes_in_flight -= episodes

    async def update_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        """Every worker loads `state_dict` as policy `version` before this returns."""
        import ray

        t0 = time.perf_counter()
        if self.backend == "broadcast":
            self._weights = (state_dict, version)
            try:
                await self._broadcast(state_dict, version)
            except (WeightBroadcastError, TimeoutError) as err:
                # The group lost a rank (a worker died or hung mid-transfer): replace the dead, send
                # this version through the object store, and form a new group at the next sync.
                log.warning("weight broadcast of v%d failed (%s); falling back to the object store", version, err)
                self._close_group()
                await self._load_everywhere(ray.put(state_dict), version)
        else:
            ref = await asyncio.to_thread(ray.put, state_dict)
            self._weights = (ref, version)
            await self._load_everywhere(ref, version)
        mb = sum(t.numel() * t.element_size() for t in state_dict.values()) / 2**20
        log.info("weights v%d (%.1f MB) synced to %d rollout worker(s) by %s in %.3f s", version, mb,
                 len(self._slots), self.backend, time.perf_counter() - t0)

    async def _load_everywhere(self, ref, version: int) -> None:
        from ray.exceptions import RayActorError

        async def one(slot: _Slot) -> None:
            actor = slot.actor
            try:
                slot.info = await actor.update_weights.remote(ref, version)
            except RayActorError as err:
                await self._replace(slot, actor, err)  # the replacement loads self._weights

        await self._bounded(asyncio.gather(*(one(s) for s in self._slots)),
                            f"rollout workers to load weights v{version}")

    async def _broadcast(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        from ray.exceptions import RayActorError

        if self._group is None:
            await self._form_group()
        layout = layout_of(state_dict)
        receipts = [s.actor.receive_weights.remote(layout, self.bucket_bytes, version) for s in self._slots]
        try:
            _, *infos = await self._bounded(
                asyncio.gather(asyncio.to_thread(self._group.send, state_dict, self.bucket_bytes), *receipts),
                f"the weight broadcast of v{version}")
        except RayActorError as err:
            raise WeightBroadcastError(f"a rollout worker died during the broadcast of v{version}: {err}") from err
        for slot, info in zip(self._slots, infos, strict=True):
            slot.info = info

    async def _form_group(self) -> None:
        host = rendezvous_host(self.ray_address)
        port = free_port(host)
        world = len(self._slots) + 1
        joins = [s.actor.join_broadcast.remote(host, port, i + 1, world, self.timeout_s)
                 for i, s in enumerate(self._slots)]
        t0 = time.perf_counter()
        group, *_ = await self._bounded(
            asyncio.gather(asyncio.to_thread(BroadcastGroup, host, port, 0, world, self.timeout_s), *joins),
            "rollout workers to join the weight broadcast group")
        self._group = group
        log.info("weight broadcast group of %d ranks formed at %s:%d in %.2f s", world, host, port,
                 time.perf_counter() - t0)

    def _close_group(self) -> None:
        if self._group is not None:
            self._group.close()
            self._group = None

    async def _bounded(self, awaitable, what: str):
        try:
            async with asyncio.timeout(self.timeout_s):
                return await awaitable
        except TimeoutError:
            raise WeightSyncTimeout(f"waited {self.timeout_s:.0f} s for {what} (rollout.weight_sync_timeout_s); "
                                    f"workers: {[s.info.pid for s in self._slots]}") from None

    async def _replace(self, slot: _Slot, dead, err: Exception) -> None:
        """Start a new actor in `slot` with the last weights, unless another call already did."""
        import ray

        async def start_new() -> None:
            self._close_group()  # the group lost a rank: a new one is formed at the next broadcast
            t0 = time.perf_counter()
            actor = self._new_actor(slot.index)
            (info,) = await self._await_start([actor])
            if self._weights is not None:
                weights, version = self._weights
                ref = weights if isinstance(weights, ray.ObjectRef) else ray.put(weights)
                info = await actor.update_weights.remote(ref, version)
            slot.actor, slot.info = actor, info
            log.warning("rollout worker %d replaced in %.1f s (pid %d, policy version %d)", slot.index,
                        time.perf_counter() - t0, info.pid, info.version)

        await self._replacements.replace(f"rollout worker {slot.index} (pid {slot.info.pid})",
                                         lambda: slot.actor is dead, dead, err, start_new)

    def stats(self) -> RolloutStats:
        infos = [s.info for s in self._slots]
        return RolloutStats(engine_restarts=sum(i.engine_restarts for i in infos),
                            worker_restarts=self._replacements.count, requeued_calls=self._requeued, workers=infos)

    async def shutdown(self) -> None:
        import ray

        self._close_group()
        for slot in self._slots:
            try:
                async with asyncio.timeout(60):
                    await slot.actor.shutdown.remote()
            except Exception as err:  # a dead or hung worker: killed below either way
                log.warning("rollout worker %d did not shut down cleanly: %r", slot.index, err)
            ray.kill(slot.actor, no_restart=True)
