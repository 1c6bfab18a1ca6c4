"""The one metrics sink: every metric goes to `metrics.jsonl` and, unless disabled, to wandb; and
the step metrics and summaries the training loop logs through it.

Metric names follow the usual prefixes: `rollout/`, `train/`, `reward/`, `eval/`, `perf/`.
"""

from __future__ import annotations

import json
import logging
import math
import netrc
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from rl.buffer import BufferStats, ScoredGroup
from rl.evaluate import EvalResult
from rollout.store import cut_back_jsonl
from rollout.types import Trajectory
from rollout.worker import RolloutStats

log = logging.getLogger(__name__)


def resolve_wandb_mode(mode: str) -> str:
    """`auto` means online when the user is logged in to wandb, offline otherwise."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        hosts = netrc.netrc().hosts
    except (FileNotFoundError, netrc.NetrcParseError):
        return "offline"
    return "online" if any("wandb" in host for host in hosts) else "offline"


class MetricsSink:
    def __init__(self, out_dir: Path, config: dict[str, Any], wandb_mode: str, project: str, run_name: str,
                 resume_step: int = 0, keep: int | None = None) -> None:
        """On resume (`resume_step` > 0) the file keeps exactly the `keep` rows the checkpoint
        counted (else those of steps up to `resume_step`)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / "metrics.jsonl"
        # A resumed run replays what came after its checkpoint: those rows would be duplicates.
        self.history: list[dict[str, Any]] = []
        if resume_step > 0:
            self.history = cut_back_jsonl(self.path, resume_step, keep)
        elif self.path.exists():
            self.path.unlink()
        self._file = self.path.open("a")
        self.wandb = None
        mode = resolve_wandb_mode(wandb_mode)
        if mode != "disabled":
            import wandb

            self.wandb = wandb.init(project=project, name=run_name or None, config=config, mode=mode,
                                    dir=str(out_dir), reinit="finish_previous")
            log.info("wandb run %s (%s) in %s", self.wandb.id, mode, out_dir)

    def log(self, metrics: dict[str, float], step: int) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self.history.append(row)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        if self.wandb is not None:
            import wandb

            self.wandb.log({name: wandb.Table(columns=columns, data=rows)}, step=step)

    def set_summary(self, summary: dict[str, Any]) -> None:
        if self.wandb is not None:
            for key, value in summary.items():
                self.wandb.summary[key] = value

    def close(self) -> None:
        self._file.close()
        if self.wandb is not None:
            self.wandb.finish()


def _plain(value: Any) -> Any:
    value = float(value) if hasattr(value, "item") else value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def rollout_metrics(trajs: list[Trajectory]) -> dict[str, float]:
    """rollout/ and reward/ metrics of one step's trained episodes."""
    n = len(trajs)
    rewards = torch.tensor([t.reward for t in trajs])
    turns = [len(t.turns) for t in trajs]
    metrics = {
        "rollout/success_rate": sum(t.success for t in trajs) / n,
        "rollout/mean_turns": sum(turns) / n,
        "rollout/gen_tokens": float(sum(t.num_generated_tokens for t in trajs)),
        "rollout/mean_length": sum(len(t.token_ids) for t in trajs) / n,
        "rollout/tool_error_rate": sum(tu.tool_error for t in trajs for tu in t.turns) / max(sum(turns), 1),
        "reward/mean": rewards.mean().item(),
        "reward/std": rewards.std().item() if n > 1 else 0.0,
    }
    for traj in trajs:
        key = f"rollout/finish_{traj.finish_reason.value}"
        metrics[key] = metrics.get(key, 0.0) + 1.0 / n
    return metrics


def sample_table(trajs: list[Trajectory], tokenizer, limit: int = 4) -> tuple[list[str], list[list]]:
    """(columns, rows) of a wandb table of the first `limit` episodes, decoded."""
    rows = [[t.task_id, t.difficulty, t.success, t.reward, t.finish_reason.value, len(t.turns),
             tokenizer.decode(t.token_ids[t.prompt_length:], skip_special_tokens=False)] for t in trajs[:limit]]
    return ["task", "difficulty", "success", "reward", "finish", "turns", "episode"], rows


def mean_by_key(rows: list[dict[str, float]]) -> dict[str, float]:
    """Each key's mean over the rows that have it."""
    keys = {k for row in rows for k in row}
    return {k: sum(row[k] for row in rows if k in row) / sum(k in row for row in rows) for k in keys}


def workers_summary(stats: RolloutStats) -> dict:
    """The run summary's account of the rollout workers: where they ran, restarts, re-queued calls."""
    return {"count": len(stats.workers), "nodes": len({w.node_id for w in stats.workers}),
            "engine_restarts": stats.engine_restarts, "worker_restarts": stats.worker_restarts,
            "requeued_calls": stats.requeued_calls,
            "placement": [asdict(w) for w in stats.workers]}


def history_mean(history: list[dict], key: str) -> float:
    """The mean of `key` over the logged rows that have it (0 if none)."""
    values = [row[key] for row in history if row.get(key) is not None]
    return sum(values) / len(values) if values else 0.0


@dataclass
class StepTimes:
    """Where one training step's seconds went (perf/ metrics)."""

    wait_s: float  # waiting for the step's scored groups
    train_s: float  # the learner's update
    sync_s: float  # the weights' way to the rollout workers
    step_s: float  # the whole step


def step_metrics(groups: list[ScoredGroup], train_metrics: dict[str, float], buffer: BufferStats,
                 workers: RolloutStats, times: StepTimes) -> dict[str, float]:
    """The metrics of one training step: its episodes, rewards, the update, staleness, faults, speed."""
    trajs = [t for g in groups for t in g.trajectories]
    return {
        **rollout_metrics(trajs),
        **{f"reward/{k}": v for k, v in mean_by_key([g.reward_metrics for g in groups]).items()},
        **train_metrics,
        "rollout/staleness_mean": sum(buffer.staleness) / len(buffer.staleness),
        "rollout/staleness_max": max(buffer.staleness),
        "rollout/groups_in_flight": buffer.in_flight,
        "rollout/groups_ready": buffer.ready,
        "rollout/groups_dropped_stale": buffer.dropped_stale,
        "rollout/groups_filtered_uniform": buffer.filtered_uniform,
        "rollout/engine_restarts": workers.engine_restarts,
        "rollout/worker_restarts": workers.worker_restarts,
        "rollout/requeued_calls": workers.requeued_calls,
        "perf/wait_s": times.wait_s,
        "perf/train_s": times.train_s,
        "perf/weight_sync_s": times.sync_s,
        "perf/step_s": times.step_s,
        "perf/gen_tokens_per_s": sum(t.num_generated_tokens for t in trajs) / times.step_s,
    }


def run_summary(sft: EvalResult, final: EvalResult, steps: int, max_staleness: int, learner_ranks: int,
                buffer: BufferStats, workers: RolloutStats, history: list[dict], wall_s: float,
                final_model: Path, curriculum: dict | None = None) -> dict:
    """summary.json: held-out success before and after RL, and the run's accounting."""
    return {
        "eval/success_sft": sft.success,
        "eval/success_final": final.success,
        "eval/success_gain": final.success - sft.success,
        "eval/success_sft_by_difficulty": sft.success_by_difficulty,
        "eval/success_final_by_difficulty": final.success_by_difficulty,
        "eval/num_tasks": final.num_tasks,
        "train/steps": steps,
        "train/max_staleness": max_staleness,
        "train/learner_ranks": learner_ranks,
        # Every group started is trained, dropped as stale, filtered as uniform, abandoned when the
        # run ended, or left ready.
        "rollout/groups": {"started": buffer.started, "trained": buffer.trained,
                           "dropped_stale": buffer.dropped_stale, "filtered_uniform": buffer.filtered_uniform,
                           "abandoned": buffer.abandoned, "ready_at_end": buffer.ready},
        "rollout/workers": workers_summary(workers),
        **({"curriculum": curriculum} if curriculum is not None else {}),
        "perf/wall_s": wall_s,
        "perf/mean_weight_sync_s": history_mean(history, "perf/weight_sync_s"),
        "final_model": str(final_model),
    }
