"""The trajectory store: every trained (and evaluated) episode of a run as one JSON line, for
inspection and reuse (ORM training: `turnrl orm train`).

A record holds the task, the exact token ids, the decoded text (whole and turn by turn: the
action, then the observation that followed), the verifier's outcome, the reward trained on, the
policy versions that produced it, and where it came from (`source`: train, or eval at a step).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

from rollout.types import Task, Trajectory

log = logging.getLogger(__name__)


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


class CorruptFileError(ValueError):
    """A file of a run is damaged beyond the torn last line a kill leaves; the message names it."""


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file that a killed run may have torn: a torn last line is dropped
    (with a warning naming the file); a bad line elsewhere raises CorruptFileError naming file and line."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise CorruptFileError(f"{path}:{i + 1} is not a JSON record (only a torn last line is "
                                       "repaired): fix or remove that line") from None
            log.warning("%s: dropped its torn last line (line %d, from a run killed mid-write)", path, i + 1)
    return records


def cut_back_jsonl(path: Path, resume_step: int, keep: int | None) -> list[dict]:
    """A resumed run's JSONL file cut back to what it held at its checkpoint: its first `keep`
    records when the checkpoint counted them, else those of steps up to `resume_step` (a torn last
    line goes too); rewritten atomically, and its records returned."""
    records = read_jsonl(path) if path.exists() else []
    kept = records[:keep] if keep is not None else [r for r in records if r.get("step", 0) <= resume_step]
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    tmp.replace(path)
    return kept


class TrajectoryStore:
    """Appends records to a JSONL file. On resume it keeps exactly the `keep` records the checkpoint
    counted (else those of steps up to `resume_step`), dropping what came after it (generated
    again) and a torn last line, so no episode is stored twice; `records` counts what it holds."""

    def __init__(self, path: str | Path, resume_step: int | None = None, keep: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records = 0
        if resume_step is not None:
            self.records = len(cut_back_jsonl(self.path, resume_step, keep))
        elif self.path.exists():
            self.path.unlink()  # a fresh run

    def write(self, records: Iterable[dict]) -> None:
        with self.path.open("a") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
                self.records += 1


def read_trajectories(paths: Iterable[str | Path]) -> Iterator[dict]:
    """Records from JSONL stores; a torn last line (a run killed mid-write) is skipped."""
    for path in paths:
        yield from read_jsonl(Path(path))
