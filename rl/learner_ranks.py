"""Learner ranks beyond the first (`torchrun --nproc_per_node=N -m rl.cli train`).

Rank 0 runs the whole actor-learner loop (Ray rollout workers, buffer, logging). Every learner
call that takes part in collectives (the ZeRO optimizer step, the ZeRO-3 weight gather, the
checkpoint) must run on all ranks with the same data, so rank 0 broadcasts each such call as a
`LearnerCall` over the learner's own process group before making it, and the other ranks run
`follow_rank0`, which makes the same calls in the same order until told to stop.
"""

from __future__ import annotations

import logging
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
