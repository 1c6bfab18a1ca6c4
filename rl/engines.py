"""Build the configured inference engine for a model directory."""

from __future__ import annotations

from rl.config import TurnRLConfig
from rollout.engines.base import Engine


def make_engine(cfg: TurnRLConfig, model_path: str, kind: str | None = None) -> Engine:
    """The engine named by `rollout.engine` (or `kind`), serving `model_path`."""
    kind = kind or cfg.rollout.engine
    if kind == "hf":
        from rollout.engines.hf import HFEngine

        return HFEngine(model_path, dtype=cfg.model.dtype)
    from rollout.engines.restarting import RestartingEngine
    from rollout.engines.vllm_engine import VLLMEngine

    v = cfg.rollout.vllm

    def start() -> VLLMEngine:
        return VLLMEngine(model_path, dtype=cfg.model.dtype, max_model_len=v.max_model_len, seed=cfg.train.seed,
                          kv_cache_gib=v.kv_cache_gib, gpu_memory_utilization=v.gpu_memory_utilization,
                          enforce_eager=v.enforce_eager, tensor_parallel_size=v.tensor_parallel_size)

    # vLLM's engine core is a separate process: if it dies, start a new one and carry on.
    return RestartingEngine(start, max_restarts=cfg.rollout.max_engine_restarts)
