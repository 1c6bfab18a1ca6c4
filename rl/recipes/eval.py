"""`turnrl eval`: greedy success of `model.path` on the fixed held-out tasks, in this process (no Ray)."""

from __future__ import annotations

from curricula.tasks import heldout_tasks
from rl.build import make_rollout_worker
from rl.config import TurnRLConfig
from rl.evaluate import evaluate


async def evaluate_model(cfg: TurnRLConfig) -> dict:
    """The held-out report of `model.path` on `env.name`: success overall and by difficulty, finish reasons."""
    rollout = make_rollout_worker(cfg)
    try:
        e = cfg.env
        result, _ = await evaluate(rollout, heldout_tasks(e.name, e.eval_difficulties, e.eval_tasks_per_difficulty,
                                                          e.eval_seed_offset))
    finally:
        await rollout.shutdown()
    return {"model": cfg.model.path, "env": cfg.env.name, **result.metrics("eval/"),
            "finish_reasons": result.finish_reasons}
