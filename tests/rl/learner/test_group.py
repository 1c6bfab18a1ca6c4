"""Two learner ranks (DeepSpeed ZeRO-3, gloo on CPU) with rollouts on Ray: launched by torchrun, or
started by rank 0 as Ray actors (`train.learner_ranks=2`). Subprocesses: a process joins one
torch.distributed group in its life."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


@pytest.mark.parametrize("launch", ["torchrun", "ray_actors"])
def test_two_learner_ranks_train_checkpoint_and_save(tiny_model_dir, tmp_path, launch):
    env = {k: v for k, v in os.environ.items() if k not in {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE",
                                                           "LOCAL_RANK", "RAY_ADDRESS"}}
    out = tmp_path / "run"
    command = ([TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "rl.cli", "train"] if launch == "torchrun"
               else [sys.executable, "-m", "rl.cli", "train", "train.learner_ranks=2"])
    proc = subprocess.run(
        [*command, "+experiment=smoke", "rollout=hf", f"model.path={tiny_model_dir}", "algo.zero_stage=3",
         "algo.mini_batches=2", "rollout.max_tokens_per_turn=16", "env.eval_tasks_per_difficulty=1",
         f"train.out_dir={out}"],
        env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train/learner_ranks"] == 2
    meta = json.loads((out / "checkpoints" / "step_2" / "meta.json").read_text())
    assert meta["world_size"] == 2
    assert sorted(p.name for p in (out / "checkpoints" / "step_2" / "rng").iterdir()) == ["rank_0.pt", "rank_1.pt"]
    assert (out / "final_model" / "config.json").exists()
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"train/loss"' in line]
    assert [r["train/optimizer_steps"] for r in steps] == [2, 4]
    assert proc.stdout.count('"eval/success_final"') == 1  # only rank 0 reports
