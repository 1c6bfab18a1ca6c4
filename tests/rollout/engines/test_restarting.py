"""RestartingEngine on the real vLLM: SIGKILL the engine-core process mid-run; the next calls
start a new engine with the last weights pushed, and generation goes on unchanged."""

from __future__ import annotations

import asyncio
import os
import signal

import psutil
import pytest
import torch
from transformers import AutoModelForCausalLM

from rollout.engines.base import SamplingConfig

pytestmark = pytest.mark.slow
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

PROMPT = [1, 40, 41, 42, 43]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from rl.recipes.model_init import TinyModelConfig, build_tiny_model

    cfg = TinyModelConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    texts = ["Search the knowledge base for the answer.", "Call exactly one tool per turn."] * 8
    return build_tiny_model(tmp_path_factory.mktemp("restart") / "tiny", texts, cfg)


def engine_core_processes() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def test_a_killed_engine_core_is_restarted_with_the_last_weights(model_dir, perturbed):
    from rollout.engines.restarting import RestartingEngine
    from rollout.engines.vllm_engine import VLLMEngine

    new_weights = perturbed(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), seed=1)
    greedy = SamplingConfig(temperature=0.0, max_tokens=8, seed=0)

    async def run():
        engine = RestartingEngine(lambda: VLLMEngine(str(model_dir), max_model_len=512, seed=0, kv_cache_gib=1),
                                  max_restarts=1)
        try:
            await engine.update_weights(new_weights, version=1)
            before = await engine.generate(PROMPT, greedy)
            cores = engine_core_processes()
            assert cores, "no vLLM EngineCore process found among this process's children"
            for core in cores:
                os.kill(core.pid, signal.SIGKILL)
            await asyncio.sleep(1.0)
            after = await engine.generate(PROMPT, greedy)  # dies, restarts, retries
            assert engine.restarts == 1 and engine.version == 1
            assert after.version == 1 and after.token_ids == before.token_ids
            assert after.logprobs == pytest.approx(before.logprobs, abs=1e-4)  # the pushed weights, not the disk's
            for core in engine_core_processes():  # a second death is one too many
                os.kill(core.pid, signal.SIGKILL)
            await asyncio.sleep(1.0)
            with pytest.raises(Exception, match="died 2 times"):
                await engine.generate(PROMPT, greedy)
        finally:
            await engine.shutdown()

    asyncio.run(run())
