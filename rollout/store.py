"""The trajectory store: every trained (and evaluated) episode of a run as one JSON line, for
inspection and reuse (ORM training: `turnrl orm train`).

A record holds the task, the exact token ids, the decoded text (whole and turn by turn: the
action, then the observation that followed), the verifier's outcome, the reward trained on, the
policy versions that produced it, and where it came from (`source`: train, or eval at a step).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

from rollout.types import Task, Trajectory


def trajectory_record(traj: Trajectory, task: Task, tokenizer, step: int, source: str) -> dict:
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
    versions = [v for v in traj.versions if v >= 0]
    return {
        "source": source,
        "step": step,
        "group": traj.group_id,
        "task": asdict(task),
        "success": traj.success,
        "reward": traj.reward,
        "finish_reason": traj.finish_reason.value,
        "version_min": min(versions, default=-1),
        "version_max": max(versions, default=-1),
        "num_generated_tokens": traj.num_generated_tokens,
        "prompt": decode(traj.token_ids[:traj.prompt_length]),
        "turns": [{"action": decode(traj.token_ids[t.action_start:t.action_end]),
                   "observation": decode(traj.token_ids[t.action_end:t.observation_end]),
                   "tool_error": t.tool_error, "reward": t.reward} for t in traj.turns],
        "final_observation": traj.final_observation,
        "text": decode(traj.token_ids),
        "token_ids": traj.token_ids,
    }


class TrajectoryStore:
    """Appends records to a JSONL file; on resume, drops records from steps after the checkpoint
    (they will be generated again), so no episode is stored twice."""

    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= resume_step]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(self.path)
        elif resume_step is None and self.path.exists():
            self.path.unlink()  # a fresh run

    def write(self, records: Iterable[dict]) -> None:
        with self.path.open("a") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")


def read_trajectories(paths: Iterable[str | Path]) -> Iterator[dict]:
    """Records from JSONL stores; a torn last line (a run killed mid-write) is skipped."""
    for path in paths:
        lines = Path(path).read_text().splitlines()
        for i, line in enumerate(lines):
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                if i != len(lines) - 1:
                    raise ValueError(f"{path}:{i + 1} is not a JSON trajectory record") from None
