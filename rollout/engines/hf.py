"""A small, exact engine on Hugging Face `transformers`, for tests and machines without vLLM.

Concurrent `generate` calls are gathered into one left-padded batch and decoded together with a
KV cache; each request keeps its own sampling settings, seed, token budget and stop tokens. The
forward passes run in a worker thread so the event loop stays free for the episodes.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field

import torch
from transformers import AutoModelForCausalLM, DynamicCache, PreTrainedModel

from rollout.engines.base import Generation, SamplingConfig
from rollout.engines.weights import VersionGate

log = logging.getLogger(__name__)


@dataclass
class _Request:
    prompt_ids: list[int]
    sampling: SamplingConfig
    seed: int
    future: asyncio.Future
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None


def sampling_logprobs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Log-probs of the distribution a token is drawn from: softmax(logits / T), cut to the top-p
    nucleus and renormalized (as vLLM's processed log-probs). Greedy (T = 0) uses T = 1.

    logits: [V] -> [V] (float32; -inf outside the nucleus)
    """
    logits = logits.float()
    if temperature > 0:
        logits = logits / temperature
    if 0 < top_p < 1:
        # Same rule as vLLM: drop the least likely tokens whose total mass is at most 1 - top_p.
        sorted_logits, order = logits.sort()
        drop = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[-1] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits.log_softmax(-1)


class HFEngine:
    """An `Engine` over a causal LM from `transformers` (float32 on CPU by default)."""

    def __init__(
        self,
        model: str | PreTrainedModel,
        dtype: str = "float32",
        device: str = "cpu",
        max_batch_size: int = 64,
        seed: int = 0,
        version: int = 0,
    ) -> None:
        if isinstance(model, str | bytes) or hasattr(model, "__fspath__"):
            model = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype))
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.max_batch_size = max_batch_size
        self.pad_id = self.model.config.pad_token_id or 0
        self.version = version
        self.last_sync_seconds: float | None = None
        self._seeds = random.Random(seed)  # seeds for requests that bring none
        self._gate = VersionGate()
        self._pending: list[_Request] = []
        self._worker: asyncio.Task | None = None
        self._closed = False

    async def generate(self, prompt_ids: list[int], sampling: SamplingConfig) -> Generation:
        """Sample one continuation of `prompt_ids`; see `Generation` for the fields."""
        if self._closed:
            raise RuntimeError("HFEngine.generate called after shutdown()")
        if not prompt_ids:
            raise ValueError("generate needs at least one prompt token")
        async with self._gate.generation():
            version = self.version
            seed = sampling.seed if sampling.seed is not None else self._seeds.getrandbits(63)
            request = _Request(list(prompt_ids), sampling, seed, asyncio.get_running_loop().create_future())
            self._pending.append(request)
            if self._worker is None:
                self._worker = asyncio.create_task(self._serve())
            await request.future
        return Generation(token_ids=request.token_ids, logprobs=request.logprobs,
                          finish_reason=request.finish_reason, version=version)

    async def _serve(self) -> None:
        """Decode whatever is pending, one batch at a time, until nothing is left."""
        try:
            while self._pending:
                await asyncio.sleep(0)  # calls started in the same tick join this batch
                batch = self._pending[: self.max_batch_size]
                del self._pending[: len(batch)]
                try:
                    await asyncio.to_thread(self._decode, batch)
                except asyncio.CancelledError:  # shutdown: nobody will finish these
                    for r in batch:
                        r.future.cancel()
                    raise
                except Exception as err:  # handed to the callers, who see it raised
                    for r in batch:
                        if not r.future.done():
                            r.future.set_exception(err)
                else:
                    for r in batch:
                        if not r.future.done():  # a caller cancelled while its row was decoding
                            r.future.set_result(None)
        finally:
            self._worker = None

    @torch.inference_mode()
    def _decode(self, batch: list[_Request]) -> None:
        """Generate for every request of `batch` at once, filling in its tokens, log-probs and finish."""
        n = len(batch)
        width = max(len(r.prompt_ids) for r in batch)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, r in enumerate(batch):  # left padding: every row's next token is at the same column
            input_ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        generators = [torch.Generator().manual_seed(r.seed) for r in batch]
        cache = DynamicCache(config=self.model.config)
        active = [r.sampling.max_tokens > 0 for r in batch]
        for r, a in zip(batch, active, strict=True):
            if not a:
                r.finish_reason = "length"

        step_ids, step_pos = input_ids, positions
        while any(active):
            out = self.model(input_ids=step_ids.to(self.device), attention_mask=mask.to(self.device),
                             position_ids=step_pos.to(self.device), past_key_values=cache, use_cache=True,
                             logits_to_keep=1)
            logits = out.logits[:, -1].cpu()
            next_ids = torch.full((n,), self.pad_id, dtype=torch.long)
            for i, r in enumerate(batch):
                if not active[i]:
                    continue
                s = r.sampling
                logprobs = sampling_logprobs(logits[i], s.temperature, s.top_p)
                if s.temperature > 0:
                    token = int(torch.multinomial(logprobs.exp(), 1, generator=generators[i]))
                else:
                    token = int(logprobs.argmax())
                next_ids[i] = token
                r.token_ids.append(token)
                r.logprobs.append(float(logprobs[token]))
                if token in s.stop_token_ids:
                    r.finish_reason, active[i] = "stop", False
                elif len(r.token_ids) >= s.max_tokens:
                    r.finish_reason, active[i] = "length", False
            step_ids = next_ids[:, None]
            step_pos = positions[:, -1:] + 1
            positions = torch.cat([positions, step_pos], dim=1)
            mask = torch.cat([mask, torch.ones((n, 1), dtype=torch.long)], dim=1)

    async def update_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> float:
        """Copy `state_dict` (HF names) into the model in place between batches; returns seconds taken."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async with self._gate.update():
            await asyncio.to_thread(self._load, state_dict)
            self.version = version
        self.last_sync_seconds = loop.time() - t0
        log.info("weights v%d loaded into the HF engine in %.3f s", version, self.last_sync_seconds)
        return self.last_sync_seconds

    @torch.no_grad()
    def _load(self, state_dict: dict[str, torch.Tensor]) -> None:
        result = self.model.load_state_dict(state_dict, strict=False)
        own = self.model.state_dict()
        loaded = {own[k].data_ptr() for k in state_dict if k in own}
        missing = [k for k in result.missing_keys if own[k].data_ptr() not in loaded]  # tied copies are fine
        if result.unexpected_keys or missing:
            raise KeyError(f"state_dict does not match the model: unexpected {result.unexpected_keys[:5]}, "
                           f"missing {missing[:5]}")

    async def shutdown(self) -> None:
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            for r in self._pending:
                r.future.cancel()
            self._pending.clear()
