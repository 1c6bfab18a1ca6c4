"""Tests for rl/learner/flops.py and the learner's perf/ metrics: FLOPs against a hand count."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config

from rl.learner.flops import ModelShape, peak_flops, train_flops
from rl.learner.learner import Learner, LearnerConfig, TrainBatch
from rl.learner.update import perf_metrics

# hidden 8, 2 layers, 2 query heads and 1 key/value head of 4, MLP 16, vocabulary 10.
SHAPE = ModelShape(hidden=8, layers=2, heads=2, kv_heads=1, head_dim=4, intermediate=16, vocab=10)


def test_train_flops_of_a_small_config_by_hand():
    # One layer's matmul weights: q 8x8 = 64, k and v 8x4 = 32 each, o 64, MLP 3 x 8 x 16 = 384 -> 576.
    assert SHAPE.layer_matmul_weights == 576
    # Sequences of 3 and 5 tokens, the head on 4 scored positions:
    #   layers: 6 x 2 x 576 x 8 tokens = 55,296; head: 6 x 8 x 10 x 4 = 1,920;
    #   attention: 12 x 2 layers x 2 heads x 4 x (3^2 + 5^2) = 6,528. Total 63,744.
    assert train_flops(SHAPE, [3, 5], scored_tokens=4) == 63_744
    # Packing does not change the count (each sequence attends to itself); one sequence of 8 does.
    assert train_flops(SHAPE, [8], 4) - train_flops(SHAPE, [3, 5], 4) == 12 * 2 * 2 * 4 * (64 - 34)


def test_model_shape_reads_a_hugging_face_config():
    cfg = Qwen2Config(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1)
    assert ModelShape.of(cfg) == SHAPE


def test_peak_is_the_users_when_set_else_measured_on_cpu():
    assert peak_flops(torch.device("cpu"), torch.float32, peak_tflops=2.5) == 2.5e12
    assert peak_flops(torch.device("cpu"), torch.float32) > 1e8  # a measured matmul rate


def test_a_learner_step_reports_its_model_flops_and_the_update_its_mfu(qwen2_dir):
    learner = Learner(qwen2_dir, LearnerConfig(lr=1e-3, peak_tflops=1.0))
    lengths, prompt = [7, 4], 2
    mask = (torch.arange(7) < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(1, 64, (2, 7)) * mask
    loss_mask = mask.float() * (torch.arange(7) >= prompt).float()
    metrics = learner.train_step(TrainBatch(ids, mask, loss_mask, -4.0 * loss_mask, torch.tensor([1.0, -1.0])))
    scored = int(loss_mask[:, 1:].sum())  # 5 + 2 policy tokens after the first position
    assert metrics["model_flops"] == train_flops(learner.shape, lengths, scored)
    assert metrics["all_tokens"] == 11
    assert metrics["step_s"] >= metrics["forward_s"] + metrics["backward_s"] + metrics["optimizer_s"] > 0
    perf = perf_metrics({k: metrics[k] for k in ("model_flops", "all_tokens", "step_s", "forward_s", "backward_s",
                                                 "optimizer_s")}, 0.0, learner.peak_flops)
    assert perf["perf/mfu"] == pytest.approx(metrics["model_flops"] / metrics["step_s"] / 1e12)
    assert perf["perf/learner_tokens_per_s"] == pytest.approx(11 / metrics["step_s"])

