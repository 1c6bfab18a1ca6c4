"""Rollout workers as Ray actors: placement, dispatch, weight sync, and replacement of dead workers.

`start_rollout(cfg)` gives the trainer what it generates with: a `RolloutPool` of
`rollout.num_workers` Ray actors (the default), or, with `ray.enabled=false`, one `RolloutWorker`
in the trainer's own process (for debugging). Both answer the same calls: `run_episodes`,
`generate` (one raw engine call, for the OpenAI-compatible proxy), `update_weights`, `stats`, `shutdown`.

- Dispatch: each call (one GRPO group, or a slice of the held-out set) goes to the worker with
  the fewest episodes in flight.
- Weight sync: `rollout.weight_sync` = `object_store` (one `ray.put`, every worker reads it) or
  `broadcast` (a gloo group from the learner to the workers, in buckets: `rl/weight_sync.py`).
  Each worker pauses its episodes in flight, loads the weights in place and lets them go on
  under the new version.
- Faults: a worker whose process dies (`RayActorError`) is replaced by a new actor that loads the
  last weights; the call it was running is re-queued on the pool, and its episodes start again
  (their tokens so far died with the worker). At most `rollout.max_worker_restarts` per run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from rl.config import TurnRLConfig
from rl.engines import make_rollout_worker
from rl.weight_sync import BroadcastGroup, WeightBroadcastError, free_port, layout_of
from rollout.engines.base import Generation, SamplingConfig
from rollout.engines.weights import WeightSyncTimeout
from rollout.types import Task, Trajectory
from rollout.worker import RolloutWorker, WorkerInfo

log = logging.getLogger(__name__)

# Passed to every actor (rollout, reward and learner workers), whose processes Ray may start from
# another shell (`ray start`) than the trainer's. Not CUDA_VISIBLE_DEVICES: Ray sets that per actor
# from the GPUs it assigns.
_PASSED_ENV = ("VLLM_CPU_KVCACHE_SPACE", "TOKENIZERS_PARALLELISM", "TURNRL_CACHE", "HF_HOME")


def actor_runtime_env(**env_vars: str) -> dict:
    """The runtime environment of a turnrl actor: this process's settings that workers need, plus `env_vars`."""
    return {"env_vars": {**{k: os.environ[k] for k in _PASSED_ENV if k in os.environ}, **env_vars}}


_LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
                  "MASTER_PORT", "TORCHELASTIC_RUN_ID")


class RolloutWorkerDied(RuntimeError):
    """Rollout workers died more often than `rollout.max_worker_restarts` allows."""


class RolloutStartError(RuntimeError):
    """A rollout worker could not be placed or started in time."""


@dataclass
class RolloutStats:
    """Restarts and re-queued calls so far, and where the workers run."""

    engine_restarts: int = 0  # inference engines restarted inside their worker (vLLM's engine core died)
    worker_restarts: int = 0  # whole workers replaced
    requeued_calls: int = 0  # calls (groups, eval slices) run again because their worker died
    workers: list[WorkerInfo] = field(default_factory=list)


class LocalRollout:
    """One rollout worker in the trainer's process (`ray.enabled=false`)."""

    def __init__(self, worker: RolloutWorker) -> None:
        self.worker = worker

    async def run_episodes(self, tasks: Sequence[Task], sampling: SamplingConfig,
                           group_ids: Sequence[str] | None = None, max_turns: int | None = None) -> list[Trajectory]:
        return await self.worker.run_episodes(tasks, sampling, group_ids, max_turns)

    async def generate(self, prompt_ids: list[int], sampling: SamplingConfig) -> Generation:
        return await self.worker.generate(prompt_ids, sampling)

    async def update_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        await self.worker.update_weights(state_dict, version)

    def stats(self) -> RolloutStats:
        info = self.worker.info()
        return RolloutStats(engine_restarts=info.engine_restarts, workers=[info])

    async def shutdown(self) -> None:
        await self.worker.shutdown()


class RolloutActor:
    """The Ray actor around one `RolloutWorker`; its engine is built in the actor's event loop."""

    def __init__(self, cfg: TurnRLConfig, index: int) -> None:
        self._cfg = cfg
        self._index = index
        self._worker: RolloutWorker | None = None
        self._group: BroadcastGroup | None = None

    async def start(self) -> WorkerInfo:
        import ray

        logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s rollout-{self._index} "
                                                       "%(name)s: %(message)s")
        self._worker = make_rollout_worker(self._cfg, self._index, ray.get_runtime_context().get_node_id())
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


def start_ray(cfg: TurnRLConfig) -> bool:
    """Start Ray on this machine bound to localhost, or join `ray.address`; False if already running."""
    import ray

    if ray.is_initialized():
        return False
    common = dict(include_dashboard=False, log_to_driver=True, configure_logging=False)
    # A local Ray's processes (and so every worker) inherit this environment: under torchrun, its
    # rank variables would tell libraries in the workers (vLLM) that they are rank N of a job.
    launcher = {k: os.environ.pop(k) for k in _LAUNCHER_VARS if k in os.environ}
    try:
        if cfg.ray.address:
            ray.init(address=cfg.ray.address, **common)
        else:
            ray.init(address="local", num_cpus=cfg.ray.num_cpus or None, _node_ip_address="127.0.0.1", **common)
    finally:
        os.environ.update(launcher)
    log.info("Ray %s: %s", "joined" if cfg.ray.address else "started locally", ray.cluster_resources())
    return True


def rendezvous_host(cfg: TurnRLConfig) -> str:
    """Where this process's process groups (weight broadcast, learner ranks) meet their Ray actors:
    localhost for a local Ray, this node's address on a cluster."""
    import ray

    return ray.util.get_node_ip_address() if cfg.ray.address else "127.0.0.1"


class RolloutPool:
    """`rollout.num_workers` rollout workers as Ray actors (see the module doc)."""

    def __init__(self, cfg: TurnRLConfig) -> None:
        r = cfg.rollout
        self.cfg = cfg
        self.backend = r.weight_sync
        self.bucket_bytes = r.weight_sync_bucket_mb * 2**20
        self.timeout_s = r.weight_sync_timeout_s
        self.max_restarts = r.max_worker_restarts
        self._slots: list[_Slot] = []
        self._weights: tuple[object, int] | None = None  # the last weights (an ObjectRef or a state dict), version
        self._group: BroadcastGroup | None = None
        self._restart_lock = asyncio.Lock()
        self._worker_restarts = 0
        self._requeued = 0

    @classmethod
    async def start(cls, cfg: TurnRLConfig) -> RolloutPool:
        pool = cls(cfg)
        actors = [pool._new_actor(i) for i in range(cfg.rollout.num_workers)]
        infos = await pool._await_start(actors)
        pool._slots = [_Slot(i, actor, info) for i, (actor, info) in enumerate(zip(actors, infos, strict=True))]
        for info in infos:
            log.info("rollout worker %d: pid %d on %s (node %s)", info.index, info.pid, info.host, info.node_id[:8])
        return pool

    def _new_actor(self, index: int):
        import ray

        r = self.cfg.rollout
        return ray.remote(RolloutActor).options(
            name=f"turnrl-rollout-{index}-{time.monotonic_ns()}", num_cpus=r.cpus_per_worker,
            num_gpus=r.gpus_per_worker, resources=dict(r.worker_resources) or None,
            scheduling_strategy="SPREAD", runtime_env=actor_runtime_env(),
        ).remote(self.cfg, index)

    async def _await_start(self, actors: list) -> list[WorkerInfo]:
        import ray

        r = self.cfg.rollout
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
        host = rendezvous_host(self.cfg)
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

        async with self._restart_lock:
            if slot.actor is not dead:
                return
            if self._worker_restarts >= self.max_restarts:
                raise RolloutWorkerDied(f"rollout workers died {self._worker_restarts + 1} times (rollout."
                                        f"max_worker_restarts={self.max_restarts}); last: {err}") from err
            self._worker_restarts += 1
            log.warning("rollout worker %d (pid %d) died: %s; starting a new one (restart %d of at most %d)",
                        slot.index, slot.info.pid, type(err).__name__, self._worker_restarts, self.max_restarts)
            ray.kill(dead, no_restart=True)
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

    def stats(self) -> RolloutStats:
        infos = [s.info for s in self._slots]
        return RolloutStats(engine_restarts=sum(i.engine_restarts for i in infos),
                            worker_restarts=self._worker_restarts, requeued_calls=self._requeued, workers=infos)

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


async def start_rollout(cfg: TurnRLConfig) -> RolloutPool | LocalRollout:
    """The configured rollout: Ray actors (Ray must be running: `start_ray`) or one in-process worker."""
    if not cfg.ray.enabled:
        return LocalRollout(make_rollout_worker(cfg))
    return await RolloutPool.start(cfg)
