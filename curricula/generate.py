"""New tasks out of failed ones, and the filters every new task passes before it enters the pool.

Procedural generation asks the environment's own generator for variants: of a failed task, one a
level easier (a stepping stone) and one at the same level with a fresh seed; of a mastered task,
one a level harder (the next rung). Each records its parent. Filters, in order, each rejection
counted by its reason:
- duplicate: the pool (or an earlier candidate) already has the task: the same environment and
  parameters;
- infeasible: the environment cannot rebuild the task, or its expert solver does not solve it;
- difficulty: an estimate of the current policy's success lies outside a band (WebRL keeps tasks
  whose critic value lies in [0.05, 0.75]); the curriculum estimates it with a few pilot rollouts.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

from curricula.pool import PoolTask, task_key
from rollout.envs import get_env
from rollout.types import Task

log = logging.getLogger(__name__)


def procedural_variants(parent: PoolTask, rng: random.Random, step: int, seed_limit: int,
                        mastered: bool = False) -> list[PoolTask]:
    """From the env's generator: for a failed parent an easier variant (one level down, where there
    is one) and a same-level one; for a `mastered` parent a variant one level up (where there is one).
    Seeds are drawn below `seed_limit`, where held-out tasks never are."""
    env_cls = get_env(parent.task.env)
    levels = sorted(env_cls.difficulties)
    here = parent.task.difficulty
    targets = [d for d in ((here + 1,) if mastered else (here - 1, here)) if d in levels]
    out = []
    for difficulty in targets:
        task = env_cls.generate_task(rng.randrange(seed_limit), difficulty)
        task = replace(task, id=f"{task.id}-from-{parent.task.id}", parent_id=parent.task.id, origin="procedural")
        out.append(PoolTask(task, generation_step=step, depth=parent.depth + 1))
    return out


def feasible(task: Task) -> bool:
    """The environment rebuilds the task and its expert solver reaches success in it."""
    env_cls = get_env(task.env)
    try:
        env = env_cls(task)
        env.reset()
        for call in env_cls.expert_solution(task):
            if env.step(call).done:
                break
        solved = env.verify()
        env.close()
        return bool(solved)
    except Exception as err:  # a generator bug must not stop training: the task is rejected
        log.warning("task %s is infeasible: %r", task.id, err)
        return False


def filter_new_tasks(candidates: list[PoolTask], in_pool: Callable[[Task], bool]
                     ) -> tuple[list[PoolTask], Counter]:
    """(the candidates that are new and feasible, rejections by reason)."""
    accepted, rejected, seen = [], Counter(), set()
    for candidate in candidates:
        key = task_key(candidate.task)
        if key in seen or in_pool(candidate.task):
            rejected["duplicate"] += 1
        elif not feasible(candidate.task):
            rejected["infeasible"] += 1
        else:
            accepted.append(candidate)
            seen.add(key)
    return accepted, rejected


def in_difficulty_band(candidates: list[PoolTask], success: list[float], band: tuple[float, float]
                       ) -> tuple[list[PoolTask], Counter]:
    """(the candidates whose estimated success lies in [low, high], rejections by reason)."""
    kept = [c for c, p in zip(candidates, success, strict=True) if band[0] <= p <= band[1]]
    rejected = Counter({"difficulty": len(candidates) - len(kept)}) if len(kept) < len(candidates) else Counter()
    return kept, rejected
