"""Tests for rl/learner/update.py: replayed successes go through the actor-confidence filter under the
current policy and join the update."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2ForCausalLM

from curricula.replay import ReplayItem
from rl.build import update_settings
from rl.config import load_config
from rl.learner.learner import Learner, LearnerConfig, make_train_batch
from rl.learner.update import policy_update, score_replay
from rollout.types import FinishReason, Trajectory


def log_softmax_at(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[tokens] in float32, computed directly: the reference for the learner's."""
    return torch.log_softmax(logits.float(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def episode(tokens: list[int], success: bool = True, group: str = "0") -> Trajectory:
    prompt = 2
    mask = [0] * prompt + [1] * (len(tokens) - prompt)
    return Trajectory(task_id="t", group_id=group, token_ids=tokens, loss_mask=mask,
                      logprobs=[-3.0 if m else 0.0 for m in mask], versions=[0 if m else -1 for m in mask],
                      prompt_length=prompt, turns=[], finish_reason=FinishReason.DONE, success=success)


def hand_confidence(model_dir, traj: Trajectory) -> float:
    """exp(mean log p) of the episode's trained tokens under the model, computed directly."""
    model = Qwen2ForCausalLM.from_pretrained(model_dir)
    ids = torch.tensor([traj.token_ids])
    with torch.no_grad():
        logprobs = log_softmax_at(model(input_ids=ids).logits[:, :-1], ids[:, 1:])[0]
    trained = [lp for lp, m in zip(logprobs.tolist(), traj.loss_mask[1:], strict=True) if m]
    return float(torch.tensor(trained).mean().exp())


def config(model_dir, band: tuple[float, float]):
    return load_config([f"model.path={model_dir}", "replay.ratio=1.0", f"replay.min_confidence={band[0]}",
                        f"replay.max_confidence={band[1]}", "algo.zero_stage=0", "algo.drop_uniform_groups=true"])


def test_score_replay_keeps_exactly_the_episodes_whose_confidence_is_in_the_band(qwen2_dir):
    g = torch.Generator().manual_seed(0)
    episodes = [episode(torch.randint(0, 64, (6 + i,), generator=g).tolist()) for i in range(5)]
    confidences = [hand_confidence(qwen2_dir, t) for t in episodes]
    order = sorted(confidences)
    # A band whose edges fall between the 2nd/3rd and 4th/5th lowest: exactly those ranks stay.
    band = ((order[1] + order[2]) / 2, (order[3] + order[4]) / 2)
    cfg = config(qwen2_dir, band)
    learner = Learner(qwen2_dir, LearnerConfig(micro_batch_size=4, zero_stage=0))
    items = [ReplayItem(t, 1.0, step=1) for t in episodes]
    kept, logprobs, metrics = score_replay(learner, items, cfg.replay, pad_id=0)
    expected = [i for i, c in zip(items, confidences, strict=True) if band[0] <= c <= band[1]]
    assert [id(i) for i in kept] == [id(i) for i in expected] and len(kept) == 2
    assert metrics["replay/kept"] == 2 and metrics["replay/rejected_low"] == 2 and metrics["replay/rejected_high"] == 1
    # The kept rows' log-probs are the current policy's (their confidence), not the stored -3.0s.
    batch = make_train_batch([i.trajectory for i in kept], [1.0] * len(kept), pad_id=0)
    from_logprobs = (logprobs * batch.loss_mask).sum(1).div(batch.loss_mask.sum(1)).exp().tolist()
    assert from_logprobs == pytest.approx([hand_confidence(qwen2_dir, i.trajectory) for i in kept], rel=1e-4)


def test_confident_replay_trains_when_fresh_groups_carry_no_signal(qwen2_dir):
    fresh = [episode([1, 2, 3, 4], success=False, group="7"), episode([1, 2, 5, 6], success=False, group="7")]
    rewards = torch.zeros(2)  # a uniform group: no fresh learning signal
    replayed = episode([1, 2, 9, 10, 11])
    cfg = config(qwen2_dir, (0.0, 1.0))
    learner = Learner(qwen2_dir, LearnerConfig(lr=1e-2, micro_batch_size=4, zero_stage=0))

    no_replay = policy_update(learner, None, update_settings(cfg), fresh, ["7", "7"], rewards, 0, step=0)
    assert no_replay["train/optimizer_steps"] == 0  # nothing to learn from

    before = hand_confidence_of(learner, replayed)
    metrics = policy_update(learner, None, update_settings(cfg), fresh, ["7", "7"], rewards, 0, step=1,
                            replay=[ReplayItem(replayed, 1.0, step=0)])
    assert metrics["train/optimizer_steps"] == 1 and metrics["replay/kept"] == 1
    # The ratio starts at 1 (old log-probs are the current policy's), so nothing is clipped at first.
    assert metrics["train/pg_clipfrac"] == 0.0
    assert hand_confidence_of(learner, replayed) > before  # the replayed success became more likely


def hand_confidence_of(learner: Learner, traj: Trajectory) -> float:
    ids = torch.tensor([traj.token_ids])
    with torch.no_grad():
        logprobs = log_softmax_at(learner.model(input_ids=ids).logits[:, :-1], ids[:, 1:])[0]
    return float(logprobs[traj.prompt_length - 1:].mean().exp())


def test_a_step_whose_groups_all_have_equal_rewards_leaves_the_weights_alone(qwen2_dir):
    """Uniform groups kept in the batch (drop_uniform_groups=false), no KL term: the gradient is zero,
    so there is no optimizer step; AdamW's weight decay alone would otherwise move every weight."""
    cfg = load_config([f"model.path={qwen2_dir}", "algo.zero_stage=0", "algo.drop_uniform_groups=false",
                       "algo.weight_decay=0.1"])
    learner = Learner(qwen2_dir, LearnerConfig(lr=1e-2, weight_decay=0.1, micro_batch_size=4, zero_stage=0))
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    uniform = [episode([1, 2, 3, 4], success=False, group="0"), episode([1, 2, 5, 6], success=False, group="0")]
    metrics = policy_update(learner, None, update_settings(cfg), uniform, ["0", "0"], torch.zeros(2), 0, step=0)
    assert metrics["train/optimizer_steps"] == 0 and metrics["train/skipped_update"] == 1.0
    assert all(torch.equal(before[k], v) for k, v in learner.model.state_dict().items())
    # A group with a signal steps as before.
    varied = [episode([1, 2, 3, 4], success=True, group="1"), episode([1, 2, 5, 6], success=False, group="1")]
    metrics = policy_update(learner, None, update_settings(cfg), varied, ["1", "1"], torch.tensor([1.0, 0.0]), 0,
                            step=1)
    assert metrics["train/optimizer_steps"] == 1 and metrics["train/skipped_update"] == 0.0
    assert not all(torch.equal(before[k], v) for k, v in learner.model.state_dict().items())
