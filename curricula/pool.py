"""The persistent task pool: one SQLite file per run, safe to read while training writes it.

Every task has its parameters, difficulty, statistics (attempts, successes, a recent success rate
as an exponential moving average and its previous value, the last step it was trained on) and its
lineage (parent task, the generator that made it, the step it was made at, its depth below a seed
task). Writes are single transactions in WAL mode with full syncs, so a process killed at any point
leaves every task either wholly there or not at all, and readers (`turnrl tasks`) never block it.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from rollout.store import CorruptFileError
from rollout.types import Task

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    env TEXT NOT NULL,
    difficulty INTEGER NOT NULL,
    instruction TEXT NOT NULL,
    params TEXT NOT NULL,
    parent_id TEXT REFERENCES tasks(id),
    origin TEXT NOT NULL,
    generation_step INTEGER NOT NULL,
    depth INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    successes INTEGER NOT NULL DEFAULT 0,
    recent_success REAL,
    previous_success REAL,
    last_seen_step INTEGER
);
CREATE INDEX IF NOT EXISTS tasks_parent ON tasks(parent_id);
"""


def task_key(task: Task) -> tuple[str, str]:
    """What makes two tasks the same: the environment and the parameters (as sorted JSON)."""
    return task.env, json.dumps(task.params, sort_keys=True)


@dataclass
class PoolTask:
    """A task (its lineage in `task.parent_id` and `task.origin`) with its place and statistics."""

    task: Task
    generation_step: int  # the training step it was made at (0: a starting task)
    depth: int  # 0 for starting tasks, its parent's depth + 1 otherwise
    attempts: int = 0
    successes: int = 0
    recent_success: float | None = None  # EMA of per-step success rates
    previous_success: float | None = None  # the EMA before the last update (learning progress)
    last_seen_step: int | None = None


class TaskPool:
    """Tasks and their statistics in `path` (created if missing). `read_only` opens an existing pool
    without writing to it (`turnrl tasks` beside the run that writes it)."""

    def __init__(self, path: str | Path, ema: float = 0.5, read_only: bool = False) -> None:
        self.path = Path(path)
        self.ema = ema
        try:
            if read_only:
                if not self.path.exists():
                    raise FileNotFoundError(f"no task pool at {self.path}")
                self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                           isolation_level=None, check_same_thread=False)
                self._db.execute("SELECT count(*) FROM tasks").fetchone()
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._sort_stored_params()
        except sqlite3.DatabaseError as err:
            raise CorruptFileError(f"{self.path} is not a readable task pool ({err}); every checkpoint holds a copy "
                                   "(checkpoints/step_N/tasks.sqlite) that a resumed run restores") from None

    def _sort_stored_params(self) -> None:
        """Pools written before parameters were stored as sorted JSON hold some unsorted; rewrite
        those, so `has_task` finds them when such a run resumes."""
        stale = []
        for task_id, params in self._db.execute("SELECT id, params FROM tasks").fetchall():
            in_order = json.dumps(json.loads(params), sort_keys=True)
            if in_order != params:
                stale.append((in_order, task_id))
        if stale:
            with self._transaction() as db:
                db.executemany("UPDATE tasks SET params = ? WHERE id = ?", stale)

    def add(self, tasks: list[PoolTask]) -> int:
        """Insert tasks in one transaction; ids already present are left alone. Returns how many were new."""
        with self._transaction() as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO tasks (id, env, difficulty, instruction, params, parent_id, origin, "
                "generation_step, depth) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(t.task.id, t.task.env, t.task.difficulty, t.task.instruction, task_key(t.task)[1],
                  t.task.parent_id, t.task.origin, t.generation_step, t.depth) for t in tasks])
            return db.total_changes - before

    def record(self, outcomes: dict[str, list[bool]], step: int) -> None:
        """Add one step's episodes (successes per task id) to the statistics, in one transaction."""
        with self._transaction() as db:
            for task_id, results in outcomes.items():
                row = db.execute("SELECT recent_success FROM tasks WHERE id = ?", (task_id,)).fetchone()
                if row is None:
                    raise KeyError(f"task {task_id!r} is not in the pool {self.path}")
                rate = sum(results) / len(results)
                recent = rate if row[0] is None else (1 - self.ema) * row[0] + self.ema * rate
                db.execute("UPDATE tasks SET attempts = attempts + ?, successes = successes + ?, "
                           "previous_success = recent_success, recent_success = ?, last_seen_step = ? WHERE id = ?",
                           (len(results), sum(results), recent, step, task_id))

    def all(self) -> list[PoolTask]:
        return [self._from_row(r) for r in self._db.execute(f"SELECT {_COLUMNS} FROM tasks ORDER BY rowid")]

    def get(self, task_id: str) -> PoolTask | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return None if row is None else self._from_row(row)

    def has_task(self, task: Task) -> bool:
        """Whether the pool holds a task of the same environment with the same parameters. Not the
        same instruction: every TextWorldExpress Coin game has one instruction, and kbsearch asks
        one question of many worlds."""
        found = self._db.execute("SELECT 1 FROM tasks WHERE env = ? AND params = ? LIMIT 1",
                                 task_key(task)).fetchone()
        return found is not None

    def lineage(self, task_id: str) -> list[PoolTask]:
        """The chain from the seed task down to `task_id`."""
        chain = []
        current = self.get(task_id)
        while current is not None:
            chain.append(current)
            current = self.get(current.task.parent_id) if current.task.parent_id else None
        return chain[::-1]

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]

    def backup(self, dest: str | Path) -> None:
        """A consistent copy of the pool (SQLite's online backup), for a checkpoint."""
        target = sqlite3.connect(dest)
        with target:
            self._db.backup(target)
        target.close()

    def close(self) -> None:
        self._db.close()

    def _transaction(self):
        return _Transaction(self._db)

    @staticmethod
    def _from_row(row) -> PoolTask:
        (task_id, env, difficulty, instruction, params, parent_id, origin, generation_step, depth, attempts,
         successes, recent, previous, last_seen) = row
        task = Task(id=task_id, env=env, instruction=instruction, params=json.loads(params), difficulty=difficulty,
                    parent_id=parent_id, origin=origin)
        return PoolTask(task, generation_step, depth, attempts, successes, recent, previous, last_seen)


_COLUMNS = ("id, env, difficulty, instruction, params, parent_id, origin, generation_step, depth, attempts, "
            "successes, recent_success, previous_success, last_seen_step")


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def lineage_tree(pool: TaskPool, all_roots: bool = False) -> str:
    """The pool as text trees, parents above their generated children, with each task's statistics.
    Only seed tasks with descendants are drawn unless `all_roots`."""
    tasks = pool.all()
    children: dict[str | None, list[PoolTask]] = {}
    for t in tasks:
        children.setdefault(t.task.parent_id, []).append(t)
    generated = sum(t.task.parent_id is not None for t in tasks)
    lines = [f"{pool.path}: {len(tasks)} tasks ({len(tasks) - generated} seed, {generated} generated), "
             f"deepest lineage {max((t.depth for t in tasks), default=0)}"]

    def describe(t: PoolTask) -> str:
        recent = "-" if t.recent_success is None else f"{t.recent_success:.2f}"
        made = t.task.origin if t.task.parent_id is None else f"{t.task.origin}@{t.generation_step}"
        return f"{t.task.id}  d{t.task.difficulty} {made}  {t.successes}/{t.attempts} (recent {recent})"

    def draw(t: PoolTask, prefix: str, last: bool, root: bool) -> None:
        lines.append(describe(t) if root else f"{prefix}{'└─ ' if last else '├─ '}{describe(t)}")
        kids = children.get(t.task.id, [])
        for i, kid in enumerate(kids):
            draw(kid, prefix if root else prefix + ("   " if last else "│  "), i == len(kids) - 1, False)

    for root in children.get(None, []):
        if all_roots or root.task.id in children:
            draw(root, "", True, True)
    return "\n".join(lines)
