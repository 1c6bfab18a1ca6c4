"""Held-out evaluation: the fixed seeded task set, greedy decoding, success by difficulty."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from tqdm import tqdm

from rollout.agent_loop import EpisodeLimits, run_episodes
from rollout.chat import ChatFormat
from rollout.engines.base import Engine, SamplingConfig
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


async def evaluate(engine: Engine, chat: ChatFormat, tasks: list[Task], limits: EpisodeLimits,
                   desc: str = "eval") -> tuple[EvalResult, list[Trajectory]]:
    """Greedy episodes on every held-out task."""
    greedy = SamplingConfig(temperature=0.0, max_tokens=limits.max_tokens_per_turn)
    with tqdm(total=len(tasks), desc=desc, unit="ep", leave=False) as bar:
        trajs = await run_episodes(engine, chat, tasks, greedy, limits, on_done=bar.update)
    return summarize(trajs), trajs
