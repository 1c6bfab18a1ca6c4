"""Tests for rl/learner/learner.py: batching, one GRPO step on DeepSpeed (CPU), accumulation, 2 ranks."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import Qwen2ForCausalLM

from rl.cluster.ray_env import free_port
from rl.learner.learner import Learner, LearnerConfig, TrainBatch, make_train_batch, split_mini_batches
from rollout.types import FinishReason, Trajectory


def log_softmax_at(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[tokens] in float32, computed directly: the reference for the learner's."""
    return torch.log_softmax(logits.float(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

WORKER = Path(__file__).with_name("ds_two_rank_worker.py")




def on_policy_batch(model_dir: Path, advantages: list[float], lengths: list[int], prompt: int = 3,
                    seed: int = 0, temperature: float = 1.0) -> TrainBatch:
    """Random sequences of the given lengths, policy tokens after `prompt`, behaviour log-probs from
    the model itself at `temperature` (what an engine with the same weights would report)."""
    g = torch.Generator().manual_seed(seed)
    n, t = len(lengths), max(lengths)
    input_ids = torch.randint(0, 64, (n, t), generator=g)
    attention_mask = (torch.arange(t) < torch.tensor(lengths).unsqueeze(1)).long()
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    loss_mask = attention_mask.float() * (torch.arange(t) >= prompt).float()
    model = Qwen2ForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits / temperature
    old = torch.zeros(n, t)
    old[:, 1:] = log_softmax_at(logits[:, :-1], input_ids[:, 1:]) * loss_mask[:, 1:]
    return TrainBatch(input_ids, attention_mask, loss_mask, old, torch.tensor(advantages))


def policy_logprobs(learner: Learner, batch: TrainBatch) -> torch.Tensor:
    """The learner's log-probs of the batch's tokens, on the CPU (the learner may be on a GPU)."""
    input_ids = batch.input_ids.to(learner.device)
    with torch.no_grad():
        logits = learner.model(input_ids=input_ids, attention_mask=batch.attention_mask.to(learner.device)).logits
    return log_softmax_at(logits[:, :-1].float(), input_ids[:, 1:]).cpu()


def weights(learner: Learner) -> dict[str, torch.Tensor]:
    return learner.state_dict_for_inference()


def test_make_train_batch_right_pads_and_keeps_engine_logprobs():
    def traj(ids, mask, lps):
        return Trajectory(task_id="t", group_id="g", token_ids=ids, loss_mask=mask, logprobs=lps,
                          versions=[0 if m else -1 for m in mask], prompt_length=2, turns=[],
                          finish_reason=FinishReason.DONE)

    batch = make_train_batch([traj([5, 6, 7, 8], [0, 0, 1, 1], [0.0, 0.0, -0.5, -1.5]),
                              traj([5, 6, 9], [0, 0, 1], [0.0, 0.0, -2.0])],
                             torch.tensor([1.0, -1.0]), pad_id=3)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8], [5, 6, 9, 3]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch.loss_mask.tolist() == [[0, 0, 1, 1], [0, 0, 1, 0]]
    assert batch.old_logprobs.tolist() == [[0.0, 0.0, -0.5, -1.5], [0.0, 0.0, -2.0, 0.0]]
    assert batch.advantages.tolist() == [1.0, -1.0]


def test_train_batch_rejects_mismatched_shapes():
    ids = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="loss_mask"):
        TrainBatch(ids, torch.ones(2, 4), torch.ones(2, 3), torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(ValueError, match="advantages"):
        TrainBatch(ids, torch.ones(2, 4), torch.ones(2, 4), torch.zeros(2, 4), torch.zeros(3))


def test_train_steps_raise_logprob_of_positive_advantage_tokens_and_lower_the_loss(qwen2_dir):
    learner = Learner(qwen2_dir, LearnerConfig(lr=1e-2, micro_batch_size=2, clip_eps=0.2))
    assert learner.ref_model is None  # kl_coef=0: no reference copy
    batch = on_policy_batch(qwen2_dir, [1.0, -1.0, 1.0, -1.0], [12, 10, 12, 9])
    before = weights(learner)
    lp0 = policy_logprobs(learner, batch)

    first = learner.train_step(batch)
    assert first["ratio_mean"] == pytest.approx(1.0, abs=1e-5)  # on-policy: old log-probs are the policy's
    assert first["pg_clipfrac"] == 0.0
    assert first["tokens"] == float(batch.loss_mask[:, 1:].sum())
    assert first["grad_norm"] > 0 and first["lr"] == 1e-2 and learner.step == 1
    assert any(not torch.equal(before[k], v) for k, v in weights(learner).items())
    losses = [first["loss"]] + [learner.train_step(batch)["loss"] for _ in range(3)]
    assert losses[-1] < losses[0]

    gain = (policy_logprobs(learner, batch) - lp0) * batch.loss_mask[:, 1:]
    pos, neg = gain[batch.advantages > 0].sum(), gain[batch.advantages < 0].sum()
    assert pos > 0 > neg


def test_learner_scores_tokens_at_the_rollout_temperature(qwen2_dir):
    batch = on_policy_batch(qwen2_dir, [1.0, -1.0], [12, 10], temperature=0.5)
    matched = Learner(qwen2_dir, LearnerConfig(lr=1e-2, micro_batch_size=2, temperature=0.5)).train_step(batch)
    assert matched["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert matched["approx_kl"] == pytest.approx(0.0, abs=1e-6)
    mismatched = Learner(qwen2_dir, LearnerConfig(lr=1e-2, micro_batch_size=2)).train_step(batch)
    assert mismatched["approx_kl"] > 1e-3


def test_split_mini_batches_covers_every_row_once_in_near_equal_parts():
    batch = TrainBatch(torch.arange(7).unsqueeze(1).repeat(1, 3), torch.ones(7, 3, dtype=torch.long),
                       torch.ones(7, 3), torch.zeros(7, 3), torch.arange(7.0))
    parts = split_mini_batches(batch, 3, torch.Generator().manual_seed(0))
    assert sorted(len(p) for p in parts) == [2, 2, 3]
    rows = sorted(int(r) for p in parts for r in p.input_ids[:, 0])
    assert rows == list(range(7))
    for p in parts:  # rows stay whole: the advantage travels with its sequence
        assert p.advantages.tolist() == p.input_ids[:, 0].float().tolist()
    with pytest.raises(ValueError, match="mini-batches"):
        split_mini_batches(batch, 8)


def test_decoupled_ppo_clips_against_the_proximal_policy_and_weights_by_the_behaviour_ratio(qwen2_dir):
    # Behaviour log-probs from a stale policy (here: shifted by a known amount), as after a weight
    # update during the episode. The first update's ratio to the proximal policy is exactly 1.
    batch = on_policy_batch(qwen2_dir, [1.0, -1.0, 0.5], [12, 10, 9])
    batch.old_logprobs = batch.old_logprobs - 0.1 * batch.loss_mask  # behaviour: prox / behav = e^0.1
    learner = Learner(qwen2_dir, LearnerConfig(lr=1e-2, micro_batch_size=2, importance_weights="token",
                                               is_cap=1.05))
    with pytest.raises(ValueError, match="proximal_logprobs"):
        learner.train_step(batch)
    batch.proximal_logprobs = learner.proximal_logprobs(batch)
    first = learner.train_step(batch)
    assert first["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert first["approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert first["is_weight_mean"] == pytest.approx(1.05, abs=1e-5)  # e^0.1 = 1.105, truncated at the cap
    second = learner.train_step(batch)  # the same proximal anchor: now off by one update
    assert second["approx_kl"] > 0 and second["ratio_mean"] != pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean"])
def test_micro_batching_chunking_and_checkpointing_give_the_same_update_as_one_big_batch(qwen2_dir, loss_agg):
    # adam_eps=1 makes Adam's first steps nearly linear in the gradient, so a wrongly scaled
    # micro-batch would show in the weights (with eps=1e-8 Adam's first step is ~ lr * sign(grad)).
    cfg = LearnerConfig(lr=0.5, adam_eps=1.0, grad_clip=0.0, loss_agg=loss_agg)
    # Unequal lengths: a per-micro-batch token-mean would weight these rows differently.
    batch = on_policy_batch(qwen2_dir, [1.0, -0.5, 2.0, -1.0, 0.3], [16, 6, 11, 4, 9])
    results = []
    # Row-count micro-batches, token-budget ones (padded and packed: rl/algo/packing.py), one packed
    # row; log-probs in chunks of 4 or 8 positions (a thousandth of a MiB over 64 tokens) or all at
    # once (rl/algo/logprobs.py); layers recomputed in the backward pass.
    for cut in ({"micro_batch_size": 1}, {"micro_batch_size": 2}, {"micro_batch_size": 5},
                {"micro_batch_tokens": 20}, {"micro_batch_tokens": 20, "pack_sequences": True},
                {"micro_batch_size": 5, "pack_sequences": True},
                {"micro_batch_size": 5, "logits_chunk_mb": 0}, {"micro_batch_size": 2, "logits_chunk_mb": 0.001},
                {"micro_batch_tokens": 20, "pack_sequences": True, "activation_checkpointing": True,
                 "logits_chunk_mb": 0.002}):
        learner = Learner(qwen2_dir, dataclasses.replace(cfg, **cut))
        metrics = [learner.train_step(batch) for _ in range(2)]
        results.append((weights(learner), metrics))
    (w_ref, m_ref), *others = results
    for w, m in others:
        for name in w_ref:
            torch.testing.assert_close(w[name], w_ref[name], rtol=1e-5, atol=1e-6)
        for key in ("loss", "grad_norm", "approx_kl", "tokens"):
            assert m[1][key] == pytest.approx(m_ref[1][key], rel=1e-4, abs=1e-7), key


def test_kl_coef_loads_a_frozen_reference_and_reports_kl(qwen2_dir):
    learner = Learner(qwen2_dir, LearnerConfig(lr=1e-2, kl_coef=0.5, micro_batch_size=4))
    assert learner.ref_model is not None
    assert not any(p.requires_grad for p in learner.ref_model.parameters())
    batch = on_policy_batch(qwen2_dir, [1.0, -1.0], [10, 10])
    assert learner.train_step(batch)["kl_ref"] == pytest.approx(0.0, abs=1e-6)  # policy == reference
    assert learner.train_step(batch)["kl_ref"] > 0


def test_state_dict_for_inference_is_hf_named_and_save_pretrained_round_trips(qwen2_dir, tmp_path):
    learner = Learner(qwen2_dir, LearnerConfig(lr=1e-2))
    learner.train_step(on_policy_batch(qwen2_dir, [1.0, -1.0], [8, 8]))
    state = learner.state_dict_for_inference()
    assert all(t.device.type == "cpu" for t in state.values())
    reference_names = set(Qwen2ForCausalLM.from_pretrained(qwen2_dir).state_dict())
    assert set(state) == reference_names
    learner.save_pretrained(tmp_path / "hf")
    reloaded = Qwen2ForCausalLM.from_pretrained(tmp_path / "hf").state_dict()
    for name, tensor in state.items():
        assert torch.equal(reloaded[name], tensor), name


@pytest.mark.slow
@pytest.mark.parametrize("cut", [{"micro_batch_size": 2}, {"micro_batch_tokens": 20, "pack_sequences": True}])
def test_two_rank_zero2_matches_one_rank_and_resumes(qwen2_dir, tmp_path, cut):
    cfg = LearnerConfig(lr=0.5, adam_eps=1.0, grad_clip=1.0, zero_stage=2, **cut)
    # 5 sequences, 3 on rank 0 and 2 on rank 1: both ranks must still run the same number of
    # backwards (rank 1 adds a dummy micro-batch; with the token budget rank 0 has 2, rank 1 one).
    batch = on_policy_batch(qwen2_dir, [1.0, -0.5, 2.0, -1.0, 0.3], [16, 6, 11, 4, 9])
    torch.save(dataclasses.asdict(batch), tmp_path / "batch.pt")

    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           f"--master_port={free_port('127.0.0.1')}", str(WORKER), str(qwen2_dir), str(tmp_path / "batch.pt"),
           str(tmp_path), "--config", json.dumps(dataclasses.asdict(cfg))]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    single = Learner(qwen2_dir, cfg)
    m1 = single.train_step(batch)
    w1 = single.state_dict_for_inference()
    two = torch.load(tmp_path / "step1.pt")
    for name, tensor in w1.items():
        torch.testing.assert_close(two["weights"][name], tensor, rtol=1e-5, atol=1e-6)
    for key in ("loss", "grad_norm", "tokens", "approx_kl"):
        assert two["metrics"][key] == pytest.approx(m1[key], rel=1e-4, abs=1e-7), key

    resume = torch.load(tmp_path / "resume.pt")
    assert resume["step"] == 1 and resume["extra"] == {"note": "two ranks"}
    for name, tensor in resume["a"].items():
        torch.testing.assert_close(resume["b"][name], tensor, rtol=0, atol=1e-7)


def test_the_logits_budget_sets_the_positions_per_chunk(qwen2_dir):
    # float32 logits over 64 tokens are 256 bytes a position: 1 MiB holds 4,096, a thousandth of one 4.
    assert Learner(qwen2_dir, LearnerConfig(logits_chunk_mb=1)).chunk_tokens == 4096
    assert Learner(qwen2_dir, LearnerConfig(logits_chunk_mb=0.001)).chunk_tokens == 4
    assert Learner(qwen2_dir, LearnerConfig(logits_chunk_mb=0)).chunk_tokens == 0


def test_one_rank_stage_0_skips_deepspeeds_gradient_copy_and_updates_as_stage_2(qwen2_dir, monkeypatch):
    # Stage 0's reduction flattens every gradient into a buffer as large as all of them, then
    # reduces over a group of one: skipped on one rank, with the same update as ZeRO-2's.
    cfg = LearnerConfig(lr=0.5, adam_eps=1.0, grad_clip=0.0)
    batch = on_policy_batch(qwen2_dir, [1.0, -0.5, 2.0], [12, 6, 9])
    plain = Learner(qwen2_dir, dataclasses.replace(cfg, zero_stage=0))
    monkeypatch.setattr(plain.engine, "allreduce_gradients",
                        lambda *a, **k: pytest.fail("one rank reduced its gradients"))
    plain.train_step(batch)
    zero2 = Learner(qwen2_dir, dataclasses.replace(cfg, zero_stage=2))
    zero2.train_step(batch)
    reference = weights(zero2)
    for name, tensor in weights(plain).items():
        torch.testing.assert_close(tensor, reference[name], rtol=1e-5, atol=1e-6)
