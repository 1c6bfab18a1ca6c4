"""One rank of the 2-process learner test (launched by tests/rl/learner/test_learner.py under torchrun).

Every rank: one train_step on the batch in `batch.pt` -> rank 0 writes the weights to `out/step1.pt`.
Then the checkpoint round trip at 2 ranks: save, train a step (A); a fresh learner loads the
checkpoint and trains the same step (B); rank 0 writes both to `out/resume.pt`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from rl.learner.checkpoint import load_checkpoint, save_checkpoint
from rl.learner.learner import Learner, LearnerConfig, TrainBatch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("batch")
    parser.add_argument("out")
    parser.add_argument("--config", required=True, help="LearnerConfig fields as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = LearnerConfig(**json.loads(args.config))
    batch = TrainBatch(**torch.load(args.batch))
    out = Path(args.out)

    learner = Learner(args.model_dir, cfg)
    metrics = learner.train_step(batch)
    weights = learner.state_dict_for_inference()
    if learner.rank == 0:
        torch.save({"weights": weights, "metrics": metrics}, out / "step1.pt")

    save_checkpoint(out / "ckpt", learner, learner.step, config={"ranks": 2}, extra={"note": "two ranks"})
    learner.train_step(batch)
    a = learner.state_dict_for_inference()

    resumed = Learner(args.model_dir, cfg)
    step, extra = load_checkpoint(out / "ckpt" / "step_1", resumed)
    resumed.train_step(batch)
    b = resumed.state_dict_for_inference()
    if learner.rank == 0:
        torch.save({"a": a, "b": b, "step": step, "extra": extra}, out / "resume.pt")


if __name__ == "__main__":
    main()
