"""Held-out evaluation: the fixed seeded task set, greedy decoding, success by difficulty."""

from __future__ import annotations

import asyncio
import math
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
    (`rl.rollout_pool`); results in the order of `tasks`."""
    greedy = SamplingConfig(temperature=0.0)

    async def one_slice(start: int) -> list[Trajectory]:
        trajs = await rollout.run_episodes(tasks[start:start + slice_size], greedy)
        bar.update(len(trajs))
        return trajs

    with tqdm(total=len(tasks), desc=desc, unit="ep", leave=False) as bar:
        slices = await asyncio.gather(*(one_slice(i) for i in range(0, len(tasks), slice_size)))
    trajs = [t for s in slices for t in s]
    return summarize(trajs), trajs


def held_out_outcomes(records: list[dict], step: int) -> dict[str, bool]:
    """Task id -> success of the held-out evaluation at `step` in a run's trajectory records
    (`rollout.store.read_trajectories`; step 0 is the starting policy)."""
    return {r["task"]["id"]: bool(r["success"]) for r in records if r["source"] == "eval" and r["step"] == step}


def pooled_held_out_outcomes(records_by_seed: dict[int, list[dict]], step: int) -> dict[str, bool]:
    """"seed/task id" -> success of each seed's run at `step` (`held_out_outcomes`): repeated runs
    on the same held-out tasks, pooled so that two arms are compared over every (seed, task)."""
    return {f"{seed}/{task}": ok for seed, records in records_by_seed.items()
            for task, ok in held_out_outcomes(records, step).items()}


def compare_paired(a: dict[str, bool], b: dict[str, bool]) -> dict[str, float]:
    """Two evaluations on the same tasks, task by task: how many only `a` solved, how many only `b`,
    and McNemar's exact two-sided p-value (a binomial test at 1/2 of those two counts). Paired, a
    gain of a few points can be significant where the two success rates' standard errors overlap."""
    if a.keys() != b.keys():
        raise ValueError(f"paired evaluations need the same tasks ({len(a)} and {len(b)} tasks, "
                         f"{len(a.keys() ^ b.keys())} in only one)")
    only_a = sum(a[t] and not b[t] for t in a)
    only_b = sum(b[t] and not a[t] for t in a)
    n = only_a + only_b
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n) if n else 1.0
    return {"tasks": len(a), "solved_only_by_a": only_a, "solved_only_by_b": only_b, "mcnemar_p": p}
