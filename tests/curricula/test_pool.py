"""Tests for curricula/pool.py: statistics, lineage, and surviving a kill mid-write."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from curricula.pool import PoolTask, TaskPool
from rollout.types import Task


def pool_task(i: int, parent: str | None = None, depth: int = 0) -> PoolTask:
    task = Task(id=f"t{i}", env="kbsearch", instruction=f"question {i}", params={"seed": i}, difficulty=1 + i % 3,
                parent_id=parent, origin="seed" if parent is None else "procedural")
    return PoolTask(task, generation_step=0 if parent is None else 5, depth=depth)


def test_tasks_round_trip_and_duplicates_are_ignored(tmp_path):
    pool = TaskPool(tmp_path / "tasks.sqlite")
    assert pool.add([pool_task(0), pool_task(1)]) == 2
    assert pool.add([pool_task(1), pool_task(2)]) == 1
    got = pool.get("t1")
    assert got.task == pool_task(1).task and got.attempts == 0 and got.recent_success is None
    assert len(pool) == 3 and pool.has_task(pool_task(2).task) and not pool.has_task(pool_task(9).task)
    # The same instruction with other parameters is another task (every Coin game has one instruction).
    assert not pool.has_task(replace(pool_task(2).task, params={**pool_task(2).task.params, "seed": 99}))


def test_a_pool_with_unsorted_stored_params_finds_its_tasks_after_reopening(tmp_path):
    path = tmp_path / "tasks.sqlite"
    pool = TaskPool(path)
    task = replace(pool_task(0).task, params={"seed": 3, "difficulty": 1})
    pool.add([PoolTask(task, 0, 0)])
    # As pools written before parameters were sorted stored them: in the generator's key order.
    pool._db.execute("UPDATE tasks SET params = ? WHERE id = ?", (json.dumps(task.params), task.id))
    assert not pool.has_task(task)
    pool.close()
    reader = TaskPool(path, read_only=True)  # `turnrl tasks` beside a run: reads, never rewrites
    assert not reader.has_task(task) and len(reader) == 1
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.add([pool_task(1)])
    reader.close()
    reopened = TaskPool(path)
    assert reopened.has_task(task) and reopened.get(task.id).task.params == task.params


def test_a_read_only_pool_must_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="no task pool"):
        TaskPool(tmp_path / "missing.sqlite", read_only=True)
    assert not (tmp_path / "missing.sqlite").exists()


def test_statistics_keep_counts_and_an_exponential_moving_average(tmp_path):
    pool = TaskPool(tmp_path / "tasks.sqlite", ema=0.5)
    pool.add([pool_task(0)])
    pool.record({"t0": [True, False, False, False]}, step=1)  # 0.25
    pool.record({"t0": [True, True, True, True]}, step=2)  # 0.5 * 0.25 + 0.5 * 1.0
    t = pool.get("t0")
    assert (t.attempts, t.successes, t.last_seen_step) == (8, 5, 2)
    assert t.recent_success == pytest.approx(0.625) and t.previous_success == pytest.approx(0.25)
    with pytest.raises(KeyError, match="t9"):
        pool.record({"t9": [True]}, step=3)


def test_lineage_runs_from_the_seed_task_to_the_newest(tmp_path):
    pool = TaskPool(tmp_path / "tasks.sqlite")
    pool.add([pool_task(0), pool_task(1, parent="t0", depth=1), pool_task(2, parent="t1", depth=2)])
    assert [t.task.id for t in pool.lineage("t2")] == ["t0", "t1", "t2"]
    assert [t.depth for t in pool.lineage("t2")] == [0, 1, 2]


WRITER = """
import sys
from curricula.pool import PoolTask, TaskPool
from rollout.types import Task
pool = TaskPool(sys.argv[1])
batch = 0
while True:
    pool.add([PoolTask(Task(id=f"b{batch}-{i}", env="kbsearch", instruction=f"q {batch} {i}", params={"i": i},
                            difficulty=1, parent_id=None, origin="seed"), 0, 0) for i in range(50)])
    batch += 1
    print(batch, flush=True)
"""


def test_a_pool_killed_mid_write_reopens_with_only_whole_batches(tmp_path):
    path = tmp_path / "tasks.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    for _ in range(20):  # let it commit a few batches, then kill it wherever it is
        proc.stdout.readline()
    time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    pool = TaskPool(path)
    tasks = pool.all()
    assert len(tasks) >= 20 * 50 and len(tasks) % 50 == 0  # no half-written batch
    assert all(t.task.params == {"i": int(t.task.id.split("-")[1])} for t in tasks)


def test_lineage_tree_draws_generated_tasks_under_their_parents(tmp_path):
    from curricula.pool import lineage_tree

    pool = TaskPool(tmp_path / "tasks.sqlite")
    pool.add([pool_task(0), pool_task(1, parent="t0", depth=1), pool_task(2, parent="t1", depth=2),
              pool_task(3, parent="t0", depth=1), pool_task(4)])
    pool.record({"t1": [True, False]}, step=2)
    tree = lineage_tree(pool).splitlines()
    assert tree[0].endswith("5 tasks (2 seed, 3 generated), deepest lineage 2")
    assert tree[1].startswith("t0  d1 seed")
    assert tree[2].startswith("├─ t1  d2 procedural@5  1/2 (recent 0.50)")
    assert tree[3].startswith("│  └─ t2") and tree[4].startswith("└─ t3")
    assert len(tree) == 5  # t4 has no descendants: left out
