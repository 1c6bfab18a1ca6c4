"""Tests for rl/recipes/pretrain.py: the synthetic pretraining data and the stage in `turnrl model init`."""

import json
import random
import shutil

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from curricula.tasks import heldout_tasks
from rl.algo.packing import pad_rows
from rl.cli import main
from rl.config import PretrainConfig
from rl.recipes.pretrain import episode_trajectory, pretrain, synthetic_episode, synthetic_episodes
from rl.recipes.sft import sft_loss
from rollout.chat import ChatFormat, parse_action


def test_episodes_are_the_same_for_a_seed_and_differ_across_seeds():
    assert synthetic_episodes(40, seed=3) == synthetic_episodes(40, seed=3)
    assert synthetic_episodes(40, seed=3) != synthetic_episodes(40, seed=4)


def test_the_expert_follows_links_and_copies_its_answer_from_the_context():
    for episode in synthetic_episodes(300, seed=0):
        names = {t.name for t in episode.tools}
        assert all(call.name in names for call in episode.calls)
        lookups, answer = episode.calls[:-1], episode.calls[-1]
        assert len(lookups) == len(episode.observations) and 1 <= len(lookups) <= 3
        for earlier, later in zip(episode.observations, lookups[1:], strict=False):
            assert next(iter(later.arguments.values())) in earlier  # the linked name, read a turn before
        assert next(iter(answer.arguments.values())) == episode.answer
        assert episode.answer in episode.observations[-1]


def test_rendered_episodes_parse_back_to_the_expert_calls(tiny_tokenizer):
    for episode in synthetic_episodes(20, seed=1):
        traj = episode_trajectory(tiny_tokenizer, episode)
        chat = ChatFormat(tiny_tokenizer, episode.tools)
        parsed = [parse_action(chat.decode(traj.token_ids[t.action_start:t.action_end])).call for t in traj.turns]
        assert parsed == episode.calls
        assert sum(traj.loss_mask) == sum(t.action_end - t.action_start for t in traj.turns)
        assert traj.token_ids[:traj.prompt_length] == chat.prompt_ids(episode.question)


def test_no_episode_asks_a_held_out_question():
    exclude = frozenset(t.instruction for t in heldout_tasks("kbsearch", [1, 2, 3], 30, 10_000_000))
    assert all(e.question not in exclude for e in synthetic_episodes(3000, seed=0, exclude=exclude))
    # The exclusion bites: a question the generator does produce is never produced once excluded.
    rng_names = [f"N{i}" for i in range(10)]
    produced = synthetic_episode(random.Random(7), rng_names).question
    again = synthetic_episode(random.Random(7), rng_names, exclude=frozenset({produced}))
    assert again.question != produced


def test_pretraining_lowers_the_loss_on_unseen_synthetic_episodes(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    unseen = [episode_trajectory(tokenizer, e) for e in synthetic_episodes(16, seed=99)]
    batch = pad_rows([t.token_ids for t in unseen], tokenizer.pad_token_id, [t.loss_mask for t in unseen])

    def loss() -> float:
        with torch.no_grad():
            return sft_loss(model.eval(), *batch).item()

    before = loss()
    torch.manual_seed(0)
    pretrain(model, tokenizer, PretrainConfig(episodes=320, epochs=1, lr=3e-3, batch_size=16), seed=0)
    assert loss() < 0.8 * before


def test_model_init_runs_the_pretraining_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("TURNRL_CACHE", str(tmp_path / "cache"))
    base = tmp_path / "base"
    common = [f"model.base_path={base}", "model.hidden_size=64", "model.num_layers=1", "model.vocab_size=1024"]
    main(["model", "init", *common])
    untrained = AutoModelForCausalLM.from_pretrained(base).state_dict()
    shutil.rmtree(base)
    main(["model", "init", *common, "model.pretrain.episodes=32"])
    pretrained = AutoModelForCausalLM.from_pretrained(base).state_dict()
    assert any(not torch.equal(untrained[k], pretrained[k]) for k in untrained)
    assert json.loads((base / "config.json").read_text())["hidden_size"] == 64
