import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rl.recipes.sft import pad_batch, run_sft, sft_loss
from rollout.chat import ChatFormat
from rollout.demos import expert_trajectory
from rollout.envs import get_env


def _demos(tokenizer, n=3):
    env_cls = get_env("kbsearch")
    chat = ChatFormat(tokenizer, env_cls.tools)
    return [expert_trajectory(chat, env_cls.generate_task(seed, 3)) for seed in range(n)]


def test_loss_mask_is_the_assistant_turns_and_the_curriculum_keeps_only_the_first(tiny_tokenizer):
    demos = _demos(tiny_tokenizer)
    ids, attn, mask = pad_batch(demos, tiny_tokenizer.pad_token_id)
    first_ids, _, first = pad_batch(demos, tiny_tokenizer.pad_token_id, max_turns=1)
    assert torch.equal(ids, first_ids)
    for row, traj in enumerate(demos):
        n = len(traj.token_ids)
        assert mask[row, :n].tolist() == [float(m) for m in traj.loss_mask]
        assert attn[row, n:].sum() == 0 and mask[row, n:].sum() == 0
        turn = traj.turns[0]
        assert first[row].nonzero().flatten().tolist() == list(range(turn.action_start, turn.action_end))
        assert len(traj.turns) > 1 and mask[row].sum() > first[row].sum()


def test_run_sft_writes_a_loadable_policy_that_fits_the_demos_better(tiny_model_dir, tmp_path):
    out = tmp_path / "sft"
    result = run_sft(str(tiny_model_dir), str(out), "kbsearch", num_demos=16, difficulty_weights={1: 1.0},
                     epochs=2, lr=3e-3, batch_size=8, seed=0, first_turn_epochs=1)
    assert result.num_demos == 16 and (out / "config.json").exists()
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    after = AutoModelForCausalLM.from_pretrained(out)
    batch = pad_batch(_demos(AutoTokenizer.from_pretrained(out), 4), 0)
    with torch.no_grad():
        assert sft_loss(after, *batch) < sft_loss(before, *batch)


@pytest.mark.slow
def test_sft_under_torchrun_with_two_ranks_writes_one_trained_model(tiny_model_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE",
                                                           "LOCAL_RANK"}}
    out = tmp_path / "sft"
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2", "-m", "rl.cli", "sft",
         "+experiment=smoke", f"model.base_path={tiny_model_dir}", f"model.path={out}"],
        env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    trained = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    name = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(trained.state_dict()[name], base.state_dict()[name])
    assert proc.stderr.count("SFT policy written to") == 2  # both ranks finished; rank 0 wrote it


def test_a_stopped_sft_run_goes_on_from_its_last_epoch_and_ends_where_an_unstopped_one_does(
        tiny_model_dir, tmp_path, monkeypatch, caplog):
    import logging

    from rl.recipes import sft

    args = dict(env_name="kbsearch", num_demos=16, difficulty_weights={1: 1.0}, epochs=2, lr=3e-3, batch_size=8,
                seed=0, first_turn_epochs=1)
    whole = run_sft(str(tiny_model_dir), str(tmp_path / "whole"), **args)

    saves = []
    original, original_step = sft.SFTCheckpoint.save, sft.sft_step

    def save_then_die(self, state):
        original(self, state)
        saves.append(state["epoch"])
        if len(saves) == 2:  # the first-turn epoch and the first full epoch are on disk
            raise KeyboardInterrupt

    monkeypatch.setattr(sft.SFTCheckpoint, "save", save_then_die)
    out = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        run_sft(str(tiny_model_dir), str(out), **args)
    assert not out.exists() and (tmp_path / "stopped.partial" / "state.pt").exists()
    monkeypatch.setattr(sft.SFTCheckpoint, "save", original)
    steps = []
    monkeypatch.setattr(sft, "sft_step", lambda *a: steps.append(1) or original_step(*a))
    with caplog.at_level(logging.INFO, logger="rl.recipes.sft"):
        resumed = run_sft(str(tiny_model_dir), str(out), **args)
    assert "SFT resumed from" in caplog.text and "sft, after epoch 1 of 2" in caplog.text
    assert len(steps) == 2  # only the last epoch ran again: 16 demos in batches of 8
    assert not (tmp_path / "stopped.partial").exists()
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "whole").state_dict()
    b = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.final_loss == whole.final_loss
    # Other settings do not resume a checkpoint made with these.
    checkpoint = sft.SFTCheckpoint(tmp_path / "other.partial", {"lr": 1.0})
    checkpoint.save({"stage": 1, "epoch": 1})
    assert sft.SFTCheckpoint(tmp_path / "other.partial", {"lr": 2.0}).load() is None
