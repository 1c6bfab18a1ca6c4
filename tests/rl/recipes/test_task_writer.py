"""Tests for rl/recipes/task_writer.py: the task writer's training pairs, its training, and the
trained model serving as the curriculum's proposer through a local engine."""

from __future__ import annotations

import asyncio
import json

from transformers import AutoTokenizer

from curricula.proposer import LLMProposer, ProposerSettings
from rl.recipes.task_writer import encode, eval_proposer, train_writer, writer_pairs
from rollout.completion import EngineCompletion
from rollout.engines.hf import HFEngine


def test_pairs_are_feasible_same_world_variants_written_relative_to_their_parent(tiny_model_dir):
    from curricula.generate import feasible

    pairs = writer_pairs("kbsearch", 40, [1, 2, 3], seed_limit=10_000, seed=0)
    assert len(pairs) == 40
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    proposer = LLMProposer(None, ProposerSettings())
    for parent, variant in pairs:
        assert variant.params["seed"] == parent.params["seed"] and feasible(variant)
        example = encode(tokenizer, proposer, parent, variant)
        answer = tokenizer.decode(example.answer_ids[:-1])
        assert json.loads(answer) == {"question": variant.instruction}  # the world is inherited
        assert example.answer_ids[-1] == tokenizer.eos_token_id
        assert json.dumps(parent.params["seed"]) in tokenizer.decode(example.prompt_ids)


def test_a_trained_writer_lowers_its_loss_and_serves_as_the_proposer(tiny_model_dir, tmp_path):
    settings = ProposerSettings(writer_pairs=64, writer_epochs=2, writer_batch_size=16, samples=2, max_tokens=48)
    out = tmp_path / "writer"
    metrics = train_writer(str(tiny_model_dir), str(out), "kbsearch", [1, 2, 3], 10_000, settings, seed=0)
    assert metrics["steps"] == 8 and (out / "config.json").exists()
    first = train_writer(str(tiny_model_dir), str(tmp_path / "short"), "kbsearch", [1, 2, 3], 10_000,
                         ProposerSettings(writer_pairs=16, writer_epochs=1, writer_batch_size=16), seed=0)
    assert metrics["final_loss"] < first["final_loss"]
    proposer = LLMProposer(EngineCompletion(HFEngine(str(out)), AutoTokenizer.from_pretrained(out)), settings)
    report = asyncio.run(eval_proposer(proposer, "kbsearch", [1, 2, 3], num_parents=3, seed_limit=10_000, seed=1))
    # Every answer is accounted for: a task or a reason it was skipped.
    assert report["answers"] == 6
    skipped = sum(v for k, v in report.items() if k.startswith("skipped_"))
    assert abs(report["task_share"] + skipped - 1.0) < 1e-9
