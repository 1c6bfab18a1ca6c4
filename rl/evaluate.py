"""Held-out evaluation: the fixed seeded task set, greedy decoding, success by difficulty."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field

from tqdm import tqdm

from rollout.engines.base import SamplingConfig
from rollout.types import Task, Trajectory


@dataclass
class EvalResult:
    success: float
    success_by_difficulty: dict[int, float]
    mean_turns: float
    num_tasks: int
    finish_reasons: dict[str, int] = field(default_factory=dict)

    def metrics(self, prefix: str = "eval/") -> dict[str, float]:
        out = {f"{prefix}success": self.success, f"{prefix}mean_turns": self.mean_turns}
        out.update({f"{prefix}success_d{d}": s for d, s in self.success_by_difficulty.items()})
        return out


def summarize(trajectories: list[Trajectory]) -> EvalResult:
    by_difficulty: dict[int, list[bool]] = defaultdict(list)
    reasons: dict[str, int] = defaultdict(int)
    for traj in trajectories:
        by_difficulty[traj.difficulty].append(traj.success)
        reasons[traj.finish_reason.value] += 1
    n = max(len(trajectories), 1)
    return EvalResult(
        success=sum(t.success for t in trajectories) / n,
        success_by_difficulty={d: sum(v) / len(v) for d, v in sorted(by_difficulty.items())},
        mean_turns=sum(len(t.turns) for t in trajectories) / n,
        num_tasks=len(trajectories),
        finish_reasons=dict(reasons),
    )


async def evaluate(rollout, tasks: list[Task], desc: str = "eval",
                   slice_size: int = 8) -> tuple[EvalResult, list[Trajectory]]:
    """Greedy episodes on every held-out task, in slices spread over the rollout workers
    (`rl.cluster.rollout_pool`); results in the order of `tasks`."""
    greedy = SamplingConfig(temperature=0.0)

    async def one_slice(start: int) -> list[Trajectory]:
        trajs = await rollout.run_episodes(tasks[start:start + slice_size], greedy)
        bar.update(len(trajs))
        return trajs

    with tqdm(total=len(tasks), desc=desc, unit="ep", leave=False) as bar:
        slices = await asyncio.gather(*(one_slice(i) for i in range(0, len(tasks), slice_size)))
    trajs = [t for s in slices for t in s]
    return summarize(trajs), trajs
