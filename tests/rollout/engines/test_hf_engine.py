"""HFEngine: batched concurrent decoding, exact behaviour log-probs, seeding, in-place weight updates."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from rollout.engines.base import SamplingConfig
from rollout.engines.hf import HFEngine, sampling_logprobs

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Search the knowledge base for the answer.",
             "Craft a wooden pickaxe from planks and sticks.", "Call exactly one tool per turn."]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from rl.recipes.model_init import TinyModelConfig, build_tiny_model

    cfg = TinyModelConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    return build_tiny_model(tmp_path_factory.mktemp("hf-engine") / "tiny", SENTENCES * 4, cfg)


@pytest.fixture
def engine(model_dir):
    return HFEngine(str(model_dir))


def teacher_forced(model, prompt: list[int], generated: list[int], temperature: float = 1.0,
                   top_p: float = 1.0) -> list[float]:
    """Log-prob of each generated token under softmax(logits / T) cut to the top-p nucleus, from one
    full forward pass over prompt + generated."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + generated])).logits[0].float()
    start = len(prompt) - 1
    return [sampling_logprobs(logits[start + i], temperature, top_p)[tok].item()
            for i, tok in enumerate(generated)]


PROMPTS = [[1, 40, 41, 42], [1, 50, 51, 52, 53, 54, 55, 56, 57], [1, 60], [1, 70, 71, 72, 73, 74]]


async def generate_all(engine, prompts, sampling_list):
    return await asyncio.gather(*[engine.generate(p, s) for p, s in zip(prompts, sampling_list, strict=True)])


def test_concurrent_calls_are_decoded_in_one_batch_with_their_own_budgets(engine):
    batch_sizes = []
    decode = engine._decode
    engine._decode = lambda batch: (batch_sizes.append(len(batch)), decode(batch))[1]
    budgets = [5, 12, 1, 8]
    sampling = [SamplingConfig(max_tokens=m, seed=i) for i, m in enumerate(budgets)]
    gens = asyncio.run(generate_all(engine, PROMPTS, sampling))
    assert batch_sizes == [4]
    for gen, budget in zip(gens, budgets, strict=True):
        assert len(gen.token_ids) == len(gen.logprobs) == budget
        assert gen.finish_reason == "length"
        assert gen.version == 0
        assert all(lp <= 0 for lp in gen.logprobs)


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 1.0), (1.0, 0.9)])
def test_logprobs_match_a_teacher_forced_forward(engine, temperature, top_p):
    sampling = [SamplingConfig(temperature=temperature, top_p=top_p, max_tokens=16, seed=i)
                for i in range(len(PROMPTS))]
    gens = asyncio.run(generate_all(engine, PROMPTS, sampling))
    for prompt, gen in zip(PROMPTS, gens, strict=True):
        expected = teacher_forced(engine.model, prompt, gen.token_ids, temperature, top_p)
        assert gen.logprobs == pytest.approx(expected, abs=1e-4)


def test_stop_token_is_kept_as_the_last_token(engine):
    greedy = SamplingConfig(temperature=0.0, max_tokens=10)
    first = asyncio.run(engine.generate(PROMPTS[0], greedy))
    stop = first.token_ids[3]
    cut = first.token_ids.index(stop) + 1
    gen = asyncio.run(engine.generate(PROMPTS[0], SamplingConfig(temperature=0.0, max_tokens=10,
                                                                 stop_token_ids=[stop, 2])))
    assert gen.finish_reason == "stop"
    assert gen.token_ids == first.token_ids[:cut]
    assert gen.token_ids[-1] == stop
    assert gen.logprobs == pytest.approx(first.logprobs[:cut], abs=1e-5)


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(engine):
    sampling = SamplingConfig(max_tokens=12, seed=123)
    alone = asyncio.run(engine.generate(PROMPTS[1], sampling))
    again = asyncio.run(engine.generate(PROMPTS[1], sampling))
    batched = asyncio.run(generate_all(engine, PROMPTS, [SamplingConfig(max_tokens=12, seed=s)
                                                         for s in (7, 123, 8, 9)]))[1]
    other_seed = asyncio.run(engine.generate(PROMPTS[1], SamplingConfig(max_tokens=12, seed=124)))
    assert alone.token_ids == again.token_ids == batched.token_ids
    assert other_seed.token_ids != alone.token_ids


def test_update_weights_changes_logprobs_in_place(engine, model_dir, perturbed):
    greedy = SamplingConfig(temperature=0.0, max_tokens=8)
    before = asyncio.run(engine.generate(PROMPTS[0], greedy))
    model_before = id(engine.model)
    new_weights = perturbed(engine.model, seed=1)
    asyncio.run(engine.update_weights(new_weights, version=3))
    after = asyncio.run(engine.generate(PROMPTS[0], greedy))

    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    reference.load_state_dict(new_weights)
    assert id(engine.model) == model_before
    assert after.version == 3 and engine.version == 3
    assert engine.last_sync_seconds is not None
    assert max(abs(a - b) for a, b in zip(after.logprobs, before.logprobs, strict=True)) > 0.1
    assert after.logprobs == pytest.approx(teacher_forced(reference, PROMPTS[0], after.token_ids), abs=1e-4)


def test_update_waits_for_generations_in_flight(engine, model_dir, perturbed):
    old = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    new_weights = perturbed(engine.model, seed=2)

    async def race():
        running = asyncio.create_task(engine.generate(PROMPTS[1], SamplingConfig(max_tokens=30, seed=0)))
        await asyncio.sleep(0)  # the generation is admitted before the update starts
        await engine.update_weights(new_weights, version=1)
        later = await engine.generate(PROMPTS[1], SamplingConfig(max_tokens=4, seed=0))
        return await running, later

    first, later = asyncio.run(race())
    assert first.version == 0 and later.version == 1
    assert first.logprobs == pytest.approx(teacher_forced(old, PROMPTS[1], first.token_ids), abs=1e-4)


def test_update_rejects_a_state_dict_for_another_model(engine):
    with pytest.raises(KeyError, match="unexpected"):
        asyncio.run(engine.update_weights({"not.a.weight": torch.zeros(1)}, version=1))


def test_sampling_logprobs_follow_temperature_and_top_p():
    logits = torch.log(torch.tensor([1.0, 2.0, 4.0]))  # probabilities 1/7, 2/7, 4/7
    assert sampling_logprobs(logits, 1.0, 1.0).exp().tolist() == pytest.approx([1 / 7, 2 / 7, 4 / 7])
    assert sampling_logprobs(logits, 0.5, 1.0).exp().tolist() == pytest.approx([1 / 21, 4 / 21, 16 / 21])
    assert sampling_logprobs(logits, 1.0, 0.6).exp().tolist() == pytest.approx([0, 1 / 3, 2 / 3])
    nucleus = sampling_logprobs(logits, 1.0, 0.5)
    assert nucleus[2].item() == pytest.approx(0.0) and math.isinf(nucleus[0].item())
