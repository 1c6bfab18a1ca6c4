"""The self-evolving curriculum of one run: its task pool, how tasks are drawn from it, how each
step's outcomes feed back, and how new tasks are made from the failed ones.

`Curriculum.open` starts the pool (`<out_dir>/tasks.sqlite`) with tasks from the environment's
generator, or restores it from a checkpoint's copy on resume. After each learner step,
`after_step` records every trained episode's outcome per task and, every `generate_every` steps,
makes new tasks, filtered, for the pool: with the `procedural` generator the most-failed recent
tasks get easier and same-level variants and the mastered ones (recent success at or above the
band's top) harder ones (`curricula/generate.py`); with `llm` the most-failed ones go to the task
proposer as examples (`curricula/proposer.py`). New tasks pass the filters of
`curricula/generate.py`; with `pilot_rollouts` the current policy also plays each a few times
first, and only tasks it solves sometimes but not always enter.
"""

from __future__ import annotations

import asyncio
import random
import shutil
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from curricula.generate import filter_new_tasks, in_difficulty_band, procedural_variants
from curricula.pool import PoolTask, TaskPool
from curricula.proposer import LLMProposer, ProposerSettings
from curricula.sampling import PoolSampler, turn_cap
from rollout.engines.base import SamplingConfig
from rollout.envs import get_env
from rollout.types import Task

POOL_FILE = "tasks.sqlite"

# (tasks, episodes per task) -> each task's success share under the current policy
PilotRollouts = Callable[[list[Task], int], Awaitable[list[float]]]


@dataclass
class CurriculumSettings:
    initial_tasks: int = 256  # starting tasks from the environment's generator (env.train_difficulties)
    # The sampler mix (curricula/sampling.py); weights need not sum to 1.
    uniform: float = 0.5
    success_band: float = 0.5
    learning_progress: float = 0.0
    band: list[float] = field(default_factory=lambda: [0.1, 0.9])  # success_band's [low, high]
    ema: float = 0.5  # weight of the newest step in a task's recent success rate
    generate_every: int = 5  # steps between generations of new tasks from failures (0: never)
    parents_per_generation: int = 8  # failed (and, apart, mastered) tasks that get variants each time
    # ScalingInter-RL: the turn cap rises through these values every turn_cap_every steps
    # (turn_cap_mode=step) or linearly between them (linear); empty: rollout.max_turns throughout.
    turn_caps: list[int] = field(default_factory=list)
    turn_cap_every: int = 10
    turn_cap_mode: str = "step"
    generators: list[str] = field(default_factory=lambda: ["procedural"])  # procedural and/or llm
    # Pilot rollouts per new task (0: none): it enters the pool only if the current policy's success
    # on them lies in difficulty_band (WebRL's [0.05, 0.75]: neither hopeless nor already solved).
    pilot_rollouts: int = 0
    difficulty_band: list[float] = field(default_factory=lambda: [0.05, 0.75])
    proposer: ProposerSettings = field(default_factory=ProposerSettings)  # the llm generator's model

    def check(self, enabled: bool) -> None:
        """Raise ValueError naming the fields of settings no curriculum can run with (`enabled`: the
        pool is in use, so its own settings matter too)."""
        if self.turn_cap_mode not in ("step", "linear") or any(h < 1 for h in self.turn_caps):
            raise ValueError(f"turn_cap_mode={self.turn_cap_mode!r} must be step or linear and "
                             f"turn_caps={list(self.turn_caps)} positive")
        if not set(self.generators) <= set(GENERATORS):
            raise ValueError(f"generators={list(self.generators)} may hold only {GENERATORS}")
        band = self.difficulty_band
        if self.pilot_rollouts < 0 or len(band) != 2 or not 0 <= band[0] <= band[1] <= 1:
            raise ValueError(f"pilot_rollouts={self.pilot_rollouts} must be >= 0 and difficulty_band="
                             f"{list(band)} a [low, high] within [0, 1]")
        if self.proposer.examples < 1 or self.proposer.samples < 1:
            raise ValueError(f"proposer.examples={self.proposer.examples} and proposer.samples="
                             f"{self.proposer.samples} must be >= 1")
        if enabled and (self.initial_tasks < 1 or len(self.band) != 2 or not 0 <= self.band[0] <= self.band[1] <= 1
                        or self.uniform + self.success_band + self.learning_progress <= 0):
            raise ValueError(f"an enabled curriculum needs initial_tasks={self.initial_tasks} >= 1, band="
                             f"{list(self.band)} a [low, high] within [0, 1] and a positive weight among "
                             f"uniform={self.uniform}, "
                             f"success_band={self.success_band} and learning_progress={self.learning_progress}")


GENERATORS = ("procedural", "llm")


def pilot_rollouts(rollout, sampling: SamplingConfig, max_turns: Callable[[], int | None]) -> PilotRollouts:
    """Pilot rollouts on the rollout workers: each task's success share over `episodes` sampled episodes
    (under the current turn cap). They are not trained on."""

    async def run(tasks: list[Task], episodes: int) -> list[float]:
        trajs = await rollout.run_episodes([t for t in tasks for _ in range(episodes)], sampling, None, max_turns())
        return [sum(t.success for t in trajs[i * episodes:(i + 1) * episodes]) / episodes for i in range(len(tasks))]

    return run


class Curriculum:
    def __init__(self, pool: TaskPool, settings: CurriculumSettings, seed: int, seed_limit: int,
                 proposer: LLMProposer | None = None, pilot: PilotRollouts | None = None) -> None:
        self.pool = pool
        self.seed_limit = seed_limit  # new tasks' seeds stay below the held-out ones
        self.proposer = proposer
        self.pilot = pilot
        self.s = settings
        mix = {"uniform": settings.uniform, "success_band": settings.success_band,
               "learning_progress": settings.learning_progress}
        self.sampler = PoolSampler(pool.all, {k: v for k, v in mix.items() if v > 0}, seed,
                                   band=(settings.band[0], settings.band[1]))
        self.rng = random.Random(seed + 1)
        self.totals: Counter = Counter()
        self.last_accepted: list[PoolTask] = []  # the tasks the last generation added

    @classmethod
    def open(cls, out_dir: Path, settings: CurriculumSettings, env_name: str, difficulties: list[int], seed: int,
             seed_limit: int, resume_from: Path | None, proposer: LLMProposer | None = None,
             pilot: PilotRollouts | None = None) -> Curriculum:
        """The run's pool: restored from `resume_from`'s copy when resuming, else new, with seed tasks."""
        path = Path(out_dir) / POOL_FILE
        for stale in (path, path.with_name(POOL_FILE + "-wal"), path.with_name(POOL_FILE + "-shm")):
            stale.unlink(missing_ok=True)  # the live pool of an earlier attempt is not to be trusted
        if resume_from is not None and (Path(resume_from) / POOL_FILE).exists():
            shutil.copyfile(Path(resume_from) / POOL_FILE, path)
            return cls(TaskPool(path, settings.ema), settings, seed, seed_limit, proposer, pilot)
        pool = TaskPool(path, settings.ema)
        env_cls = get_env(env_name)
        rng = random.Random(seed)
        pool.add([PoolTask(env_cls.generate_task(rng.randrange(seed_limit), rng.choice(difficulties)), 0, 0)
                  for _ in range(settings.initial_tasks)])
        return cls(pool, settings, seed, seed_limit, proposer, pilot)

    def max_turns(self, step: int) -> int | None:
        return turn_cap(step, self.s.turn_caps, self.s.turn_cap_every, self.s.turn_cap_mode)

    async def after_step(self, outcomes: list[tuple[str, bool]], step: int) -> dict[str, float]:
        """Record (task id, success) of every trained episode; every generate_every steps, add new tasks
        made from the failed (and mastered) ones. Returns curriculum/ metrics."""
        by_task: dict[str, list[bool]] = defaultdict(list)
        for task_id, success in outcomes:
            by_task[task_id].append(success)
        await asyncio.to_thread(self.pool.record, by_task, step)
        metrics: dict[str, float] = {}
        self.last_accepted = []
        if self.s.generate_every and step % self.s.generate_every == 0:
            counts = await self._generate(step)
            self.totals.update(counts)
            metrics |= {f"curriculum/{k}": float(v) for k, v in counts.items()}
        depths: dict[int, list[bool]] = defaultdict(list)
        difficulties: dict[int, list[bool]] = defaultdict(list)  # depth counts same-level variants too
        for task_id, results in by_task.items():
            pool_task = self.pool.get(task_id)
            depths[pool_task.depth].extend(results)
            difficulties[pool_task.task.difficulty].extend(results)
        metrics |= {f"curriculum/success_depth{d}": sum(r) / len(r) for d, r in depths.items()}
        metrics |= {f"curriculum/success_difficulty{d}": sum(r) / len(r) for d, r in difficulties.items()}
        metrics |= {f"curriculum/episodes_difficulty{d}": float(len(r)) for d, r in difficulties.items()}
        self.sampler.refresh()  # the statistics and the pool changed
        cap = self.max_turns(step - 1)  # what this step's groups ran under: they started at version step - 1
        if cap is not None:
            metrics["curriculum/turn_cap"] = float(cap)
        return metrics | {"curriculum/pool_size": float(len(self.pool))}

    async def _generate(self, step: int) -> Counter:
        recent = [t for t in self.pool.all() if t.last_seen_step is not None and t.last_seen_step > step -
                  self.s.generate_every and t.recent_success is not None]
        failed = sorted((t for t in recent if t.recent_success < self.s.band[1]),
                        key=lambda t: (t.recent_success, t.task.id))
        mastered = sorted((t for t in recent if t.recent_success >= self.s.band[1]),
                          key=lambda t: (-t.recent_success, t.task.id))
        n = self.s.parents_per_generation
        candidates, counts = [], Counter()
        if "procedural" in self.s.generators:
            candidates += [v for parent in failed[:n]
                           for v in procedural_variants(parent, self.rng, step, self.seed_limit)]
            candidates += [v for parent in mastered[:n]
                           for v in procedural_variants(parent, self.rng, step, self.seed_limit, mastered=True)]
        if "llm" in self.s.generators and self.proposer is not None and failed:
            proposed, skipped = await self.proposer.propose(failed[:n], step)
            candidates += proposed
            counts.update({f"proposer_{reason}": k for reason, k in skipped.items()})
            counts["proposed"] = len(proposed)
        accepted, rejected = await asyncio.to_thread(filter_new_tasks, candidates, self.pool.has_task)
        if self.s.pilot_rollouts and self.pilot is not None and accepted:
            success = await self.pilot([c.task for c in accepted], self.s.pilot_rollouts)
            counts["pilot_episodes"] = self.s.pilot_rollouts * len(accepted)
            accepted, too_easy_or_hard = in_difficulty_band(accepted, success, tuple(self.s.difficulty_band))
            rejected.update(too_easy_or_hard)
        await asyncio.to_thread(self.pool.add, accepted)
        self.last_accepted = accepted
        counts.update({"generated": len(candidates), "accepted": len(accepted),
                       **{f"rejected_{reason}": n for reason, n in rejected.items()}})
        return counts

    def save(self, checkpoint_dir: Path) -> None:
        """A consistent copy of the pool into a checkpoint directory."""
        self.pool.backup(Path(checkpoint_dir) / POOL_FILE)

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
