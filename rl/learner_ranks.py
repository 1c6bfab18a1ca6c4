"""Learner ranks beyond the first: torchrun processes (`torchrun --nproc_per_node=N -m rl.cli
train`) or Ray actors started by rank 0 (`train.learner_ranks=N`).

Rank 0 runs the whole actor-learner loop (Ray rollout workers, buffer, logging). Every learner
call that takes part in collectives (the ZeRO optimizer step, the ZeRO-3 weight gather, the
checkpoint) must run on all ranks with the same data, so rank 0 broadcasts each such call as a
`LearnerCall` over the learner's own process group before making it, and the other ranks run
`follow_rank0`, which makes the same calls in the same order until told to stop.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass
class LearnerCall:
    """One collective learner call, named by `kind`: update | weights | save | save_final | stop."""

    kind: str
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def announce(world_size: int, kind: str, *args, **kwargs) -> None:
    """Rank 0: tell the other ranks which call comes next (nothing to do with a single rank)."""
    if world_size > 1:
        dist.broadcast_object_list([LearnerCall(kind, args, kwargs)], src=0)


def follow_rank0(handlers: dict[str, Callable[..., Any]]) -> int:
    """Ranks > 0: run `handlers[call.kind]` for every call rank 0 announces, until `stop`; returns the
    number of calls made."""
    calls = 0
    while True:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0)
        call: LearnerCall = box[0]
        if call.kind == "stop":
            log.info("rank %d: rank 0 finished after %d learner calls", dist.get_rank(), calls)
            return calls
        if call.kind not in handlers:
            raise RuntimeError(f"rank {dist.get_rank()}: rank 0 announced an unknown learner call {call.kind!r}")
        handlers[call.kind](*call.args, **call.kwargs)
        calls += 1


class LearnerRankActor:
    """A Ray actor that is one learner rank (> 0) for the length of a run."""

    def run(self, cfg) -> None:
        from rl.train import run_learner_rank

        logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s learner-{os.environ['RANK']} "
                                                       "%(name)s: %(message)s")
        run_learner_rank(cfg)


@dataclass
class LearnerRank:
    actor: Any  # ray.actor.ActorHandle
    run: Any  # the ObjectRef of its `run`, resolved when the rank has followed rank 0 to the end


def start_learner_ranks(cfg) -> list[LearnerRank]:
    """Ranks 1..train.learner_ranks-1 as Ray actors; this process becomes rank 0 of their group.

    Each actor gets the rendezvous in its environment (as torchrun would set it) and joins the
    group when it builds its learner; so does this process when it builds its own.
    """
    import ray

    from rl.rollout_pool import actor_runtime_env, rendezvous_host
    from rl.weight_sync import free_port

    if "WORLD_SIZE" in os.environ:
        raise RuntimeError(f"train.learner_ranks={cfg.train.learner_ranks} starts learner ranks as Ray actors, but "
                           f"this process is already one of {os.environ['WORLD_SIZE']} launched ranks (torchrun); "
                           "use one or the other")
    host = rendezvous_host(cfg)
    port = free_port(host)
    world = cfg.train.learner_ranks
    rendezvous = {"MASTER_ADDR": host, "MASTER_PORT": str(port), "WORLD_SIZE": str(world), "LOCAL_RANK": "0"}
    ranks = []
    for rank in range(1, world):
        actor = ray.remote(LearnerRankActor).options(
            num_cpus=cfg.train.cpus_per_learner_rank, num_gpus=cfg.train.gpus_per_learner_rank,
            runtime_env=actor_runtime_env(**rendezvous, RANK=str(rank))).remote()
        ranks.append(LearnerRank(actor, actor.run.remote(cfg)))
    os.environ.update(rendezvous, RANK="0")
    log.info("learner ranks 1..%d started as Ray actors; rendezvous at %s:%d", world - 1, host, port)
    return ranks


async def finish_learner_ranks(ranks: list[LearnerRank], timeout_s: float = 300.0) -> None:
    """Wait for the actor ranks to return after rank 0's `stop`, raising what failed in them."""
    import asyncio

    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*(r.run for r in ranks))
    except TimeoutError:
        raise TimeoutError(f"learner ranks did not finish within {timeout_s:.0f} s of rank 0's stop") from None


def stop_learner_ranks(ranks: list[LearnerRank]) -> None:
    """Remove the actor ranks (finished, or stuck in a collective after rank 0 failed)."""
    import ray

    for r in ranks:
        ray.kill(r.actor, no_restart=True)
