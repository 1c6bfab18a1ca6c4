"""Tests for curricula/generate.py: variants of failed tasks keep their lineage; each filter rejects
what it should, pilot rollouts included."""

import asyncio
import random

from curricula.curriculum import Curriculum, CurriculumSettings
from curricula.generate import feasible, filter_new_tasks, in_difficulty_band, procedural_variants
from curricula.pool import PoolTask, TaskPool
from rollout.envs import get_env
from rollout.types import Task


def test_variants_are_easier_or_same_level_children_of_the_failed_task():
    parent = PoolTask(get_env("kbsearch").generate_task(7, 3), generation_step=0, depth=2)
    variants = procedural_variants(parent, random.Random(0), step=12, seed_limit=10**6)
    assert sorted(v.task.difficulty for v in variants) == [2, 3]
    for v in variants:
        assert v.task.parent_id == parent.task.id and v.task.origin == "procedural"
        assert v.depth == 3 and v.generation_step == 12 and v.task.id.endswith(parent.task.id)
    below = procedural_variants(parent, random.Random(0), step=12, seed_limit=3)
    assert all(v.task.params["seed"] < 3 for v in below)  # never a held-out seed
    easiest = PoolTask(get_env("kbsearch").generate_task(7, 1), 0, 0)
    assert [v.task.difficulty for v in procedural_variants(easiest, random.Random(0), 1, 10**6)] == [1]


def test_filters_reject_duplicates_infeasible_tasks_and_tasks_outside_the_band():
    env = get_env("kbsearch")
    good = [PoolTask(env.generate_task(s, 2), 3, 1) for s in (1, 2, 3)]
    broken = PoolTask(Task(id="broken", env="kbsearch", instruction="no world behind this", params={}), 3, 1)
    duplicate = PoolTask(env.generate_task(1, 2), 3, 1)  # the same task as good[0]
    accepted, rejected = filter_new_tasks([*good, broken, duplicate], lambda task: task == good[2].task)
    assert [a.task.id for a in accepted] == [good[0].task.id, good[1].task.id]
    assert rejected == {"duplicate": 2, "infeasible": 1}
    kept, rejected = in_difficulty_band(good, [0.0, 0.5, 0.9], band=(0.05, 0.75))
    assert [k.task.id for k in kept] == [good[1].task.id] and rejected == {"difficulty": 2}
    assert feasible(good[0].task) and not feasible(broken.task)


def test_a_mastered_task_gets_a_harder_variant_and_the_hardest_level_none():
    env = get_env("kbsearch")
    parent = PoolTask(env.generate_task(3, 2), 0, 0)
    (harder,) = procedural_variants(parent, random.Random(0), step=4, seed_limit=10**6, mastered=True)
    assert harder.task.difficulty == 3 and harder.task.parent_id == parent.task.id
    top = PoolTask(env.generate_task(3, max(env.difficulties)), 0, 0)
    assert procedural_variants(top, random.Random(0), step=4, seed_limit=10**6, mastered=True) == []


def test_pilot_rollouts_keep_only_new_tasks_the_policy_solves_sometimes(tmp_path):
    settings = CurriculumSettings(initial_tasks=3, generate_every=1, generators=["procedural"], pilot_rollouts=4,
                                  difficulty_band=[0.05, 0.75])
    pool = TaskPool(tmp_path / "tasks.sqlite")
    pool.add([PoolTask(get_env("kbsearch").generate_task(s, 2), 0, 0) for s in (31, 32, 33)])
    asked = []

    async def pilot(tasks, episodes):  # success shares by position: hopeless, in band, solved, ...
        asked.append((len(tasks), episodes))
        return [(0.0, 0.5, 1.0)[i % 3] for i in range(len(tasks))]

    curriculum = Curriculum(pool, settings, seed=0, seed_limit=10**6, pilot=pilot)
    metrics = asyncio.run(curriculum.after_step([(t.task.id, False) for t in pool.all()], step=1))
    candidates = asked[0][0]
    assert asked == [(candidates, 4)] and metrics["curriculum/pilot_episodes"] == 4 * candidates
    in_band = len(range(1, candidates, 3))
    assert metrics["curriculum/accepted"] == in_band
    assert metrics["curriculum/rejected_difficulty"] == candidates - in_band and len(pool) == 3 + in_band


def test_step_metrics_give_success_by_difficulty_apart_from_depth(tmp_path):
    pool = TaskPool(tmp_path / "tasks.sqlite")
    env = get_env("kbsearch")
    easy, hard = PoolTask(env.generate_task(1, 1), 0, 0), PoolTask(env.generate_task(2, 3), 0, 0)
    pool.add([easy, hard])  # both at depth 0: only the difficulty tells them apart
    curriculum = Curriculum(pool, CurriculumSettings(initial_tasks=0, generate_every=0), seed=0, seed_limit=10**6)
    outcomes = [(easy.task.id, True), (easy.task.id, True), (easy.task.id, False), (hard.task.id, False)]
    metrics = asyncio.run(curriculum.after_step(outcomes, step=1))
    assert metrics["curriculum/success_depth0"] == 0.5
    assert metrics["curriculum/success_difficulty1"] == 2 / 3 and metrics["curriculum/success_difficulty3"] == 0.0
    assert metrics["curriculum/episodes_difficulty1"] == 3.0 and metrics["curriculum/episodes_difficulty3"] == 1.0
