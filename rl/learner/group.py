"""The learner ranks as one object: rank 0 runs the actor-learner loop, the others follow it.

Ranks beyond the first are torchrun processes (`torchrun --nproc_per_node=N -m rl.cli train`) or
Ray actors started by rank 0 (`train.learner_ranks=N`). Every learner call that takes part in
collectives (the ZeRO optimizer step, the ZeRO-3 weight gather, the checkpoint) must run on all
ranks with the same data. So each such method of `LearnerGroup` first announces itself (rank 0
broadcasts a `LearnerCall` over the learner's own process group) and then makes the call; the
other ranks sit in `follow`, which makes the same method calls in the same order until `stop`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from rl.cluster.ray_env import actor_runtime_env, free_port, rendezvous_host, setup_actor_logging
from rl.learner.checkpoint import load_checkpoint, save_checkpoint
from rl.learner.critic import Critic, CriticConfig
from rl.learner.learner import Learner, LearnerConfig
from rl.learner.update import UpdateSettings, policy_update

log = logging.getLogger(__name__)


@dataclass
class LearnerCall:
    """One collective learner call: a `LearnerGroup` method's name and its arguments."""

    kind: str
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class LearnerSpec:
    """What every learner rank builds from (the same on every rank; picklable for Ray actors)."""

    model_path: str
    learner: LearnerConfig
    critic: CriticConfig | None  # PPO's critic; None for the group-advantage estimators
    update: UpdateSettings
    out_dir: Path  # checkpoints/ and final_model/ go here
    resume_from: Path | None = None  # a checkpoint to resume from (None: a fresh start)


class LearnerGroup:
    """This rank's learner (and critic); on rank 0, the handle through which all ranks are driven."""

    def __init__(self, spec: LearnerSpec, config_record: dict | None = None) -> None:
        """Builds the learner, joining its process group, and resumes from `spec.resume_from`.
        `config_record` (rank 0): the resolved config, written into every checkpoint."""
        self.spec, self.config_record = spec, config_record
        torch.manual_seed(spec.learner.seed)
        self.learner = Learner(spec.model_path, spec.learner)
        self.critic = Critic(spec.model_path, spec.critic) if spec.critic is not None else None
        self.start_step, self.extra = 0, {}  # extra: the checkpoint's state of the rest of the run
        if spec.resume_from is not None:
            self.start_step, self.extra = load_checkpoint(spec.resume_from, self.learner)
            log.info("rank %d resumed from %s at step %d", self.learner.rank, spec.resume_from, self.start_step)

    @property
    def world_size(self) -> int:
        return self.learner.world_size

    def _announce(self, kind: str, *args, **kwargs) -> None:
        """Rank 0: tell the other ranks which call comes next (nothing to do alone, or on a follower)."""
        if self.learner.rank == 0 and self.world_size > 1:
            dist.broadcast_object_list([LearnerCall(kind, args, kwargs)], src=0)

    def update(self, *args) -> dict[str, float]:
        """`policy_update` on this step's batch (rl/learner/update.py), on every rank."""
        self._announce("update", *args)
        return policy_update(self.learner, self.critic, self.spec.update, *args)

    def weights(self) -> dict[str, torch.Tensor]:
        """The full weights for the rollout engines (ZeRO-3 gathers the shards: every rank takes part)."""
        if self.spec.learner.zero_stage == 3:
            self._announce("weights")
        return self.learner.state_dict_for_inference()

    def save(self, step: int, extra: dict, write_files=None) -> Path:
        """A checkpoint of every rank at `step`; `extra` and `write_files` (rank 0) hold the rest of the run."""
        self._announce("save", step, extra)
        return save_checkpoint(self.spec.out_dir / "checkpoints", self.learner, step, config=self.config_record,
                               extra=extra, write_files=write_files)

    def save_final(self) -> None:
        self._announce("save_final")
        self.learner.save_pretrained(self.spec.out_dir / "final_model")

    def stop(self) -> None:
        """Rank 0 at the end of the run (or on its failure): the followers return."""
        self._announce("stop")

    def follow(self) -> int:
        """Ranks > 0: make every call rank 0 announces, until `stop`; returns the number of calls made."""
        calls = 0
        while True:
            box: list[Any] = [None]
            dist.broadcast_object_list(box, src=0)
            call: LearnerCall = box[0]
            if call.kind == "stop":
                log.info("rank %d: rank 0 finished after %d learner calls", self.learner.rank, calls)
                return calls
            if call.kind not in ("update", "weights", "save", "save_final"):
                raise RuntimeError(f"rank {self.learner.rank}: rank 0 announced an unknown learner call {call.kind!r}")
            getattr(self, call.kind)(*call.args, **call.kwargs)
            calls += 1


def run_learner_rank(spec: LearnerSpec) -> None:
    """A learner rank other than 0 (a torchrun process or a Ray actor): follow rank 0 until it stops."""
    LearnerGroup(spec).follow()


class LearnerRankActor:
    """A Ray actor that is one learner rank (> 0) for the length of a run."""

    def run(self, spec: LearnerSpec) -> None:
        setup_actor_logging(f"learner-{os.environ['RANK']}")
        run_learner_rank(spec)


@dataclass
class LearnerRank:
    actor: Any  # ray.actor.ActorHandle
    run: Any  # the ObjectRef of its `run`, resolved when the rank has followed rank 0 to the end


def start_learner_ranks(spec: LearnerSpec, world: int, cpus: float, gpus: float, ray_address: str
                        ) -> list[LearnerRank]:
    """Ranks 1..world-1 as Ray actors; this process becomes rank 0 of their group.

    Each actor gets the rendezvous in its environment (as torchrun would set it) and joins the
    group when it builds its learner; so does this process when it builds its own.
    """
    import ray

    if "WORLD_SIZE" in os.environ:
        raise RuntimeError(f"train.learner_ranks={world} starts learner ranks as Ray actors, but this process is "
                           f"already one of {os.environ['WORLD_SIZE']} launched ranks (torchrun); use one or the other")
    host = rendezvous_host(ray_address)
    port = free_port(host)
    rendezvous = {"MASTER_ADDR": host, "MASTER_PORT": str(port), "WORLD_SIZE": str(world), "LOCAL_RANK": "0"}
    ranks = []
    for rank in range(1, world):
        actor = ray.remote(LearnerRankActor).options(
            num_cpus=cpus, num_gpus=gpus, runtime_env=actor_runtime_env(**rendezvous, RANK=str(rank))).remote()
        ranks.append(LearnerRank(actor, actor.run.remote(spec)))
    os.environ.update(rendezvous, RANK="0")
    log.info("learner ranks 1..%d started as Ray actors; rendezvous at %s:%d", world - 1, host, port)
    return ranks


async def finish_learner_ranks(ranks: list[LearnerRank], timeout_s: float = 300.0) -> None:
    """Wait for the actor ranks to return after rank 0's `stop`, raising what failed in them."""
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
