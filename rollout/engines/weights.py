"""Engine-side weight receiving: the gate that swaps policy versions between calls, and the vLLM
worker extension that loads new tensors into the running model in place.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import safetensors.torch
import torch

log = logging.getLogger(__name__)


class WeightSyncTimeout(TimeoutError):
    """In-flight generations did not finish in time for a weight update."""


class VersionGate:
    """Lets many `generate` calls run together, and a weight update run alone.

    An update waits for the calls in flight to finish and holds back new ones until the new
    weights are in, so every token of one call comes from a single policy version (the one
    the call reports). Turns are short (tens of tokens), so the drain is brief.
    """

    def __init__(self, drain_timeout_s: float = 600.0) -> None:
        self.drain_timeout_s = drain_timeout_s
        self._cond = asyncio.Condition()
        self._in_flight = 0
        self._updating = False

    @asynccontextmanager
    async def generation(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._updating)
            self._in_flight += 1
        try:
            yield
        finally:
            async with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()

    @asynccontextmanager
    async def update(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._updating)
            self._updating = True
            try:
                drained = self._cond.wait_for(lambda: self._in_flight == 0)
                await asyncio.wait_for(drained, self.drain_timeout_s)
            except TimeoutError:
                self._updating = False
                self._cond.notify_all()
                raise WeightSyncTimeout(
                    f"{self._in_flight} generate call(s) still running after {self.drain_timeout_s:.0f} s "
                    "while waiting to load new weights; raise drain_timeout_s or lower max_tokens"
                ) from None
        try:
            yield
        finally:
            async with self._cond:
                self._updating = False
                self._cond.notify_all()


def pack_state_dict(state_dict: dict[str, torch.Tensor]) -> bytes:
    """`state_dict` as one safetensors blob, to cross process boundaries (vLLM's RPC messages carry
    bytes unchanged but not tensors). Tensors sharing memory (tied embeddings) are copied apart."""
    seen: set[int] = set()
    tensors = {}
    for name, t in state_dict.items():
        t = t.detach().to("cpu").contiguous()
        if t.data_ptr() in seen:
            t = t.clone()
        seen.add(t.data_ptr())
        tensors[name] = t
    return safetensors.torch.save(tensors)


def unpack_state_dict(blob: bytes) -> dict[str, torch.Tensor]:
    return safetensors.torch.load(blob)


class VLLMWeightReceiver:
    """Mixed into vLLM's worker class (`worker_extension_cls`); reached through `collective_rpc`.

    Loads Hugging Face-named tensors into the running model in place, through vLLM's own
    layerwise reload (`reload_weights`, the same path on GPU and CPU): each layer is rebuilt in
    checkpoint layout from metadata recorded at start-up, loaded with the model's `load_weights`
    (which fuses q/k/v and gate/up), processed again by `process_weights_after_loading` and
    copied back into the original tensors (which keeps CUDA-graph pointers valid).

    Why not `model.load_weights` directly: on CPU, loading replaced every linear weight by an
    empty Parameter without a `weight_loader` and multiplies with a packed copy made by
    `dispatch_cpu_unquantized_gemm` (layers/utils.py). The reload rebuilds the layer, so the
    loader works, and re-running `process_weights_after_loading` re-packs from the new values.
    """

    def turnrl_load_weights(self, blob: bytes) -> float:
        """Load the HF-named tensors in `blob` (`pack_state_dict`) into the model; returns seconds taken."""
        t0 = time.perf_counter()
        model = self.model_runner.get_model()
        weights = unpack_state_dict(blob)
        # The worker's method (not the runner's) sets vLLM's current config around the reload.
        self.reload_weights(weights_iterator=iter(weights.items()), is_checkpoint_format=True)
        _refresh_cpu_tied_heads(model)
        return time.perf_counter() - t0


def _refresh_cpu_tied_heads(model: torch.nn.Module) -> None:
    """CPU only: re-pack the LM head of tied-embedding models.

    With tied embeddings the head shares the embedding's Parameter, so the reload writes the new
    values into it through the embedding layer and never processes the head again. On CPU the
    head multiplies through `layer.cpu_linear`, made at load by `dispatch_cpu_unquantized_gemm`:
    the float32 oneDNN handle reads the shared storage (and sees the new values), but the SGL/AMX
    (bf16) and zentorch paths multiply with a packed copy that would keep the old weights.
    Re-packing costs one [vocab, hidden] copy.
    """
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    for module in model.modules():
        if isinstance(module, ParallelLMHead) and hasattr(module, "cpu_linear") and module.weight.numel() > 0:
            module.quant_method.process_weights_after_loading(module)
