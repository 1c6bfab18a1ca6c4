"""Weights from the learner to the rollout workers over torch.distributed, in buckets.

`rollout.weight_sync` picks the backend (`rl/cluster/rollout_pool.py`):
- `object_store`: the learner puts the state dict into Ray's object store once and every worker
  reads it from there (shared memory on the learner's node, transferred once to other nodes).
- `broadcast`: a gloo process group of its own, the learner as rank 0 and the workers as ranks
  1..N. It is built outside the default group (DeepSpeed's learner ranks own that) from a
  `TCPStore`, as verl and OpenRLHF do for their weight groups. The tensors are flattened into
  buckets of at most `bucket_bytes` and broadcast one bucket at a time, so memory stays bounded
  and every step of the transfer has a deadline.

Both sides derive the same buckets from the same layout (names, shapes, dtypes), which the
learner sends beside the broadcast; no tensor metadata travels through the group.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from rl.cluster.ray_env import tcp_store

log = logging.getLogger(__name__)


class WeightBroadcastError(RuntimeError):
    """A broadcast of weights failed or timed out; the message names the bucket and the group."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype name without the prefix, e.g. "float32"

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.torch_dtype).element_size()


def layout_of(state_dict: dict[str, torch.Tensor]) -> list[TensorSpec]:
    return [TensorSpec(name, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in state_dict.items()]


def buckets(layout: list[TensorSpec], bucket_bytes: int) -> list[list[TensorSpec]]:
    """Consecutive tensors of one dtype, at most `bucket_bytes` together (a larger tensor goes alone)."""
    out: list[list[TensorSpec]] = []
    size = 0
    for spec in layout:
        if out and out[-1][0].dtype == spec.dtype and size + spec.nbytes <= bucket_bytes:
            out[-1].append(spec)
            size += spec.nbytes
        else:
            out.append([spec])
            size = spec.nbytes
    return out


class BroadcastGroup:
    """One rank of the weight broadcast group (rank 0 sends, the others receive).

    Construction is a rendezvous: it returns once all `world_size` ranks have joined, or raises
    `WeightBroadcastError` after `timeout_s`.
    """

    def __init__(self, host: str, port: int, rank: int, world_size: int, timeout_s: float) -> None:
        self.rank = rank
        self.world_size = world_size
        self.timeout_s = timeout_s
        self.address = f"{host}:{port}"
        timeout = timedelta(seconds=timeout_s)
        try:
            store = tcp_store(host, port, world_size, is_master=rank == 0, timeout=timeout)
            self._group = dist.ProcessGroupGloo(dist.PrefixStore("turnrl-weights", store), rank, world_size, timeout)
        except RuntimeError as err:
            raise WeightBroadcastError(f"rank {rank} of {world_size} could not join the weight broadcast group at "
                                       f"{self.address} within {timeout_s:.0f} s (rollout.weight_sync_timeout_s): "
                                       f"{err}") from err
        self._store = store  # kept alive: rank 0 serves the rendezvous from it

    def send(self, state_dict: dict[str, torch.Tensor], bucket_bytes: int) -> None:
        """Rank 0: broadcast `state_dict` (laid out as `layout_of(state_dict)`) bucket by bucket."""
        plan = buckets(layout_of(state_dict), bucket_bytes)
        for i, bucket in enumerate(plan):
            flat = torch.cat([state_dict[s.name].detach().reshape(-1).to("cpu", s.torch_dtype) for s in bucket])
            self._broadcast(flat, i, len(plan))

    def receive(self, layout: list[TensorSpec], bucket_bytes: int) -> dict[str, torch.Tensor]:
        """Ranks > 0: the state dict rank 0 is sending, as separate tensors."""
        state: dict[str, torch.Tensor] = {}
        plan = buckets(layout, bucket_bytes)
        for i, bucket in enumerate(plan):
            flat = torch.empty(sum(s.numel for s in bucket), dtype=bucket[0].torch_dtype)
            self._broadcast(flat, i, len(plan))
            for spec, part in zip(bucket, flat.split([s.numel for s in bucket]), strict=True):
                state[spec.name] = part.view(spec.shape)
        return state

    def _broadcast(self, flat: torch.Tensor, index: int, count: int) -> None:
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        try:
            self._group.broadcast([flat], opts).wait()
        except RuntimeError as err:
            mb = flat.numel() * flat.element_size() / 2**20
            raise WeightBroadcastError(
                f"rank {self.rank}: broadcast of weight bucket {index + 1}/{count} ({mb:.1f} MB) in the group at "
                f"{self.address} ({self.world_size} ranks) failed or ran past {self.timeout_s:.0f} s waiting for "
                f"the other ranks: {err}") from err

    def close(self) -> None:
        self._group = None
        self._store = None
