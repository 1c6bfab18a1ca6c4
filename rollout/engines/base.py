"""The inference-engine interface the agent loop talks to.

An engine takes token ids and returns token ids (never text), with the behaviour log-prob of
each sampled token and the policy version that produced it. Many `generate` calls run
concurrently, one per episode coroutine; the engine batches them internally.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 64  # per call (one assistant turn)
    stop_token_ids: list[int] = field(default_factory=list)  # generation ends after emitting one
    seed: int | None = None


@dataclass
class Generation:
    token_ids: list[int]
    logprobs: list[float]  # log-prob of each sampled token under the policy that sampled it
    finish_reason: str  # "stop": emitted a stop token (kept as the last token); "length": ran out
    version: int  # the policy version that produced every token of this call


class EngineDeadError(RuntimeError):
    """The engine is gone (its process died); a new one must be started. Raised by engines that
    run out of process, so that `RestartingEngine` can tell death from a bad request."""


class Engine(Protocol):
    version: int

    async def generate(self, prompt_ids: list[int], sampling: SamplingConfig) -> Generation: ...

    async def update_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        """Load new policy weights in place (no reload from disk); later tokens carry `version`."""
        ...

    async def shutdown(self) -> None: ...
