"""Text in, text out from any model: an OpenAI-compatible endpoint or one of our local engines.

The LLM judge (rewards/judge.py) and the LLM task proposer (curricula/proposer.py) talk to their
model through this one small protocol, so either can be `vllm serve`, a hosted API or a local
vLLM/HF engine.
"""

from __future__ import annotations

import asyncio
import os
from typing import Protocol

from rollout.engines.base import SamplingConfig


class CompletionClient(Protocol):
    async def complete(self, prompt: str, n: int, temperature: float, max_tokens: int) -> list[str]: ...


class HTTPCompletion:
    """An OpenAI-compatible chat-completions endpoint, e.g. `vllm serve` at http://host:8000/v1."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.model = model
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=None)

    async def complete(self, prompt: str, n: int, temperature: float, max_tokens: int) -> list[str]:
        response = await self._client.post("/chat/completions", json={
            "model": self.model, "messages": [{"role": "user", "content": prompt}], "n": n,
            "temperature": temperature, "max_tokens": max_tokens})
        response.raise_for_status()
        return [choice["message"]["content"] or "" for choice in response.json()["choices"]]


class EngineCompletion:
    """A local inference engine (rollout/engines) with the model's chat template."""

    def __init__(self, engine, tokenizer) -> None:
        self.engine, self.tokenizer = engine, tokenizer

    async def complete(self, prompt: str, n: int, temperature: float, max_tokens: int) -> list[str]:
        ids = chat_prompt_ids(self.tokenizer, prompt)
        sampling = SamplingConfig(temperature=temperature, max_tokens=max_tokens,
                                  stop_token_ids=[self.tokenizer.eos_token_id])
        outs = await asyncio.gather(*(self.engine.generate(ids, sampling) for _ in range(n)))
        return [self.tokenizer.decode(o.token_ids, skip_special_tokens=True) for o in outs]


def chat_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """`prompt` as a user message in the model's chat template, ready for the assistant's answer."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def api_key(env_var: str) -> str | None:
    """The key held in the environment variable `env_var`, if any."""
    return os.environ.get(env_var) if env_var else None
