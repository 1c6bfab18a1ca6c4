"""Tests for rl/learner/checkpoint.py: exact resume (weights, optimizer, RNG), atomicity, corrupt checkpoints."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch
from transformers import Qwen2ForCausalLM

from rl.learner.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from rl.learner.learner import Learner, LearnerConfig, TrainBatch

CFG = LearnerConfig(lr=1e-2, micro_batch_size=2, seed=3)
# Types JSON would change: int dict keys, tuples.
EXTRA = {"history": [1.5, 2.5], "success_by_difficulty": {1: 0.5, 2: 0.25}, "rng": (3, (1, 2), None)}




def batch(seed: int) -> TrainBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (3, 10), generator=g)
    loss_mask = torch.zeros(3, 10)
    loss_mask[:, 4:] = 1.0
    old = -4.0 + 0.1 * torch.randn(3, 10, generator=g)  # roughly the policy's log-probs over 64 tokens
    return TrainBatch(ids, torch.ones(3, 10, dtype=torch.long), loss_mask, old * loss_mask,
                      torch.tensor([1.0, -1.0, 0.5]))


def optimizer_state(learner: Learner) -> list[torch.Tensor]:
    """AdamW's moments (over ZeRO's flat fp32 partitions) and step counts."""
    inner = learner.optimizer.optimizer  # DeepSpeed's ZeRO optimizer wraps the torch AdamW
    return [t.clone() for state in inner.state.values() for t in state.values() if torch.is_tensor(t)]


@pytest.fixture(scope="module")
def saved(qwen2_dir, tmp_path_factory):
    """A learner trained one step and checkpointed; then trained one more step (the reference run A)."""
    root = tmp_path_factory.mktemp("ckpts")
    learner = Learner(qwen2_dir, CFG)
    learner.train_step(batch(0))
    path = save_checkpoint(root, learner, learner.step, config={"algo": {"lr": 0.01}}, extra=EXTRA)
    rng_after_save = (random.random(), np.random.rand(), torch.rand(3))
    learner.train_step(batch(1))
    return root, path, rng_after_save, learner.state_dict_for_inference(), optimizer_state(learner)


def test_resume_reproduces_weights_optimizer_state_and_rng_exactly(qwen2_dir, saved):
    root, path, rng_after_save, weights_a, optim_a = saved
    assert path == root / "step_1" and latest_checkpoint(root) == path

    resumed = Learner(qwen2_dir, CFG)
    random.random(), np.random.rand(), torch.rand(5)  # disturb the RNGs: the checkpoint restores them
    step, extra = load_checkpoint(path, resumed)
    assert step == 1 and resumed.step == 1
    assert extra == EXTRA
    assert random.random() == rng_after_save[0] and np.random.rand() == rng_after_save[1]
    assert torch.equal(torch.rand(3), rng_after_save[2])

    resumed.train_step(batch(1))
    for name, tensor in resumed.state_dict_for_inference().items():
        assert torch.equal(tensor, weights_a[name]), name
    optim_b = optimizer_state(resumed)
    assert len(optim_b) == len(optim_a) > 0
    assert all(torch.equal(a, b) for a, b in zip(optim_a, optim_b, strict=True))
    assert resumed.step == 2


def test_checkpoint_holds_hf_weights_config_and_a_manifest(saved):
    _, path, *_ = saved
    meta = verify_checkpoint(path)
    assert meta["step"] == 1 and meta["world_size"] == 1 and meta["zero_stage"] == 2
    assert "hf/config.json" in meta["files"] and "rng/rank_0.pt" in meta["files"]
    assert json.loads((path / "config.json").read_text()) == {"algo": {"lr": 0.01}}
    Qwen2ForCausalLM.from_pretrained(path / "hf")  # loads as a plain HF model


def test_latest_skips_temp_dirs_and_incomplete_checkpoints(tmp_path, saved):
    _, path, *_ = saved
    shutil.copytree(path, tmp_path / "step_1")
    shutil.copytree(path, tmp_path / ".tmp-step_9")  # an interrupted save
    (tmp_path / "step_5").mkdir()  # a step dir without meta.json: not complete
    assert latest_checkpoint(tmp_path) == tmp_path / "step_1"  # no pointer: scan
    (tmp_path / "latest").write_text("step_5\n")  # the pointer names an incomplete dir: scan
    assert latest_checkpoint(tmp_path) == tmp_path / "step_1"
    assert latest_checkpoint(tmp_path / "nothing-here") is None


def test_saving_again_moves_the_latest_pointer(qwen2_dir, tmp_path):
    learner = Learner(qwen2_dir, CFG)
    save_checkpoint(tmp_path, learner, 0)
    learner.train_step(batch(0))
    save_checkpoint(tmp_path, learner, 1)
    assert (tmp_path / "latest").read_text().strip() == "step_1"
    assert latest_checkpoint(tmp_path) == tmp_path / "step_1"
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.fixture
def copy_of_checkpoint(saved, tmp_path):
    _, path, *_ = saved
    return shutil.copytree(path, tmp_path / "step_1")


def test_missing_file_is_named(copy_of_checkpoint, qwen2_dir):
    (copy_of_checkpoint / "rng" / "rank_0.pt").unlink()
    with pytest.raises(CheckpointError, match=r"step_1 is incomplete: missing rng/rank_0\.pt"):
        load_checkpoint(copy_of_checkpoint, Learner(qwen2_dir, CFG))


def test_truncated_file_is_named(copy_of_checkpoint):
    optim = next((copy_of_checkpoint / "deepspeed").rglob("*optim_states.pt"))
    optim.write_bytes(optim.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"truncated or altered deepspeed/.*optim_states\.pt \(100 b"):
        verify_checkpoint(copy_of_checkpoint)


def test_missing_meta_or_dir_is_reported(copy_of_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        verify_checkpoint(tmp_path / "step_404")
    (copy_of_checkpoint / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="meta.json is missing"):
        verify_checkpoint(copy_of_checkpoint)


def test_a_different_number_of_ranks_is_refused(copy_of_checkpoint, qwen2_dir):
    meta = json.loads((copy_of_checkpoint / "meta.json").read_text())
    meta["world_size"] = 2
    (copy_of_checkpoint / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="saved by 2 learner rank"):
        load_checkpoint(copy_of_checkpoint, Learner(qwen2_dir, CFG))


def test_a_changed_byte_of_the_right_size_is_refused(copy_of_checkpoint):
    """Random bytes over the optimizer state (same size) passed the size check and trained into NaNs."""
    optim = next((copy_of_checkpoint / "deepspeed").rglob("*optim_states.pt"))
    data = bytearray(optim.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(random.Random(0).randrange(256) for _ in range(64))
    optim.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"optim_states\.pt \(its bytes changed since it was saved"):
        verify_checkpoint(copy_of_checkpoint)


def test_resume_auto_takes_the_newest_checkpoint_that_verifies(saved, tmp_path):
    from rl.learner.checkpoint import resolve_resume

    _, path, *_ = saved
    root = tmp_path / "run" / "checkpoints"
    shutil.copytree(path, root / "step_1")
    shutil.copytree(path, root / "step_2")
    (root / "latest").write_text("step_2\n")
    assert resolve_resume("auto", tmp_path / "run") == root / "step_2"
    (root / "step_2" / "meta.json").write_text('{"step": 2, "wor')  # torn by a kill
    assert resolve_resume("auto", tmp_path / "run") == root / "step_1"
    assert resolve_resume("auto", tmp_path / "elsewhere") is None


def test_weights_with_nan_are_never_saved(qwen2_dir, tmp_path):
    learner = Learner(qwen2_dir, CFG)
    with torch.no_grad():
        next(learner.model.parameters())[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="the weights hold NaN or inf"):
        save_checkpoint(tmp_path, learner, 1)
    assert not (tmp_path / "step_1").exists()


def test_a_non_finite_loss_stops_the_step_before_the_optimizer_moves(qwen2_dir):
    from rl.learner.learner import NonFiniteError

    learner = Learner(qwen2_dir, CFG)
    bad = batch(0)
    bad.advantages = torch.tensor([float("nan"), 1.0, 0.5])
    before = {k: v.clone() for k, v in learner.state_dict_for_inference().items()}
    with pytest.raises(NonFiniteError, match="the loss is nan"):
        learner.train_step(bad)
    assert learner.step == 0
    assert all(torch.equal(before[k], v) for k, v in learner.state_dict_for_inference().items())


def test_a_full_disk_mid_save_says_so_and_leaves_the_last_checkpoint_the_latest(qwen2_dir, tmp_path, monkeypatch):
    import errno

    learner = Learner(qwen2_dir, CFG)
    save_checkpoint(tmp_path, learner, 1)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(learner, "save_pretrained", no_space)
    with pytest.raises(CheckpointError, match=r"the disk is full \(ENOSPC.*stays the one train.resume=auto takes"):
        save_checkpoint(tmp_path, learner, 2)
    assert latest_checkpoint(tmp_path) == tmp_path / "step_1" and not list(tmp_path.glob(".tmp-*"))
