"""Tests for rl/train.py in-process with the HF engine: the algorithm options reach the learner."""

import json

from rl.config import load_config
from rl.train import train


def test_rloo_with_sequence_tis_and_mini_batches_runs_and_logs_its_metrics(tiny_model_dir, tmp_path):
    cfg = load_config(["+experiment=smoke", "rollout=hf", f"model.path={tiny_model_dir}", "algo=rloo",
                       "algo.importance_weights=sequence", "algo.mini_batches=2", "algo.loss_agg=seq-mean-token-mean",
                       "rollout.max_tokens_per_turn=16", "env.eval_tasks_per_difficulty=1",
                       f"train.out_dir={tmp_path}/run"])
    summary = train(cfg)
    assert summary["train/steps"] == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train/loss" in r]
    assert [r["train/optimizer_steps"] for r in steps] == [2, 4]
    # The proximal policy is the learner's own: behaviour log-probs from the HF engine with the same
    # weights make the truncated sequence weights ~1 (float noise only).
    assert all(abs(r["train/is_weight_mean"] - 1.0) < 1e-2 for r in steps)
