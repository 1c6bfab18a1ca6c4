"""skyrl_gsm8k and skyrl_text2sql: SkyRL-Gym's `gsm8k_multi_turn` and `text2sql` as turnrl environments.

Adapters over the `skyrl-gym` package (`pip install 'turnrl[envs]'`), made with `skyrl_gym.make`.
SkyRL-Gym environments read free text (`#### 42`, `<sql>...</sql>`, `<solution>...</solution>`);
here the agent calls tools instead, and the adapter writes each call as the text the package
parses. The package's own reward decides success: `verify()` is its reward being 1.0 (GSM8K:
the strict `#### ANSWER` match; text2sql: the solution query returns the same rows as the gold
query, which also requires the package's `<think>` format, written by the adapter).

The package ships no data (GSM8K and Spider/BIRD/SynSQL are downloads), so tasks come from small
generators here, and `expert_solution` is the generator's gold answer:
- skyrl_gsm8k: a templated word problem whose answer takes `difficulty` (1-4) arithmetic steps.
  `gsm8k_task(question, answer)` wraps a real GSM8K row the same way.
- skyrl_text2sql: a SQLite shop database (customers, products, orders) seeded per task and written
  under `$TURNRL_SKYRL_SQL_DIR` (default `~/.cache/turnrl/skyrl_sql`) in the layout the package
  expects; difficulty 1-4 is the gold query's shape: filter, aggregate, join, join + group + having.
"""

from __future__ import annotations

import os
import random
import re
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from rollout.env import register_env
from rollout.envs.extras import require
from rollout.tools import calculator_tool, dispatch, episode_over, error_result, made_up_names, string_argument
from rollout.types import StepResult, Task, ToolCall, ToolSpec

MAX_OBSERVATION_CHARS = 600
DIFFICULTIES = (1, 2, 3, 4)


def _skyrl() -> Any:
    return require("skyrl_gym", "skyrl", "skyrl-gym")


def _check_difficulty(env: str, difficulty: int) -> None:
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"{env} difficulty must be one of {DIFFICULTIES}, got {difficulty}")


# ---------------------------------------------------------------- GSM8K

ITEMS = ("apples", "marbles", "stamps", "coins", "books", "shells")


def word_problem(seed: int, difficulty: int) -> tuple[str, list[str], int]:
    """A question, the arithmetic the expert does (one expression per step) and the answer."""
    rng = random.Random(seed)
    name, friend = (n.capitalize() for n in made_up_names(rng, 2))
    item = rng.choice(ITEMS)
    count = rng.randint(5, 30)
    sentences, steps = [f"{name} has {count} {item}."], []
    for _ in range(difficulty):
        kind = rng.choice(("buy", "give", "times") if count < 200 else ("give",))
        if kind == "buy":
            n = rng.randint(2, 20)
            sentences.append(f"{name} buys {n} more {item}.")
            steps.append(f"{count} + {n}")
            count += n
        elif kind == "give" and count > 2:
            n = rng.randint(1, count - 1)
            sentences.append(f"{name} gives {n} {item} to {friend}.")
            steps.append(f"{count} - {n}")
            count -= n
        else:
            n = rng.randint(2, 3)
            sentences.append(f"{name} {'doubles' if n == 2 else 'triples'} the number of {item}.")
            steps.append(f"{count} * {n}")
            count *= n
    sentences.append(f"How many {item} does {name} have now?")
    return " ".join(sentences), steps, count


def gsm8k_task(question: str, answer: str, task_id: str, difficulty: int = 0) -> Task:
    """A skyrl_gsm8k task from any GSM8K-style row (the answer is the number after '####')."""
    return Task(id=task_id, env="skyrl_gsm8k", instruction=question,
                params={"question": question, "answer": answer, "steps": [], "max_turns": 5},
                difficulty=difficulty)


@register_env("skyrl_gsm8k")
class SkyRLGSM8KEnv:
    """Solve a word problem; `answer` is scored by SkyRL-Gym's gsm8k_multi_turn (a few tries)."""

    tools = [
        ToolSpec("calculate", "Evaluate arithmetic.", string_argument("expression")),
        ToolSpec("answer", "Give the final numeric answer.", string_argument("text")),
    ]
    difficulties = DIFFICULTIES
    reset_shows_instruction = True  # reset() begins with the task's instruction

    def __init__(self, task: Task) -> None:
        self.task = task
        self.env = _skyrl().make("gsm8k_multi_turn", env_config={}, extras={
            "reward_spec": {"ground_truth": task.params["answer"]}, "max_turns": task.params["max_turns"]})
        self.env.init([{"role": "user", "content": task.instruction}])
        self.reward = 0.0
        self.done = False

    @staticmethod
    def generate_task(seed: int, difficulty: int) -> Task:
        _check_difficulty("skyrl_gsm8k", difficulty)
        question, steps, answer = word_problem(seed, difficulty)
        task = gsm8k_task(question, str(answer), f"skyrl_gsm8k-d{difficulty}-s{seed}", difficulty)
        task.params |= {"seed": seed, "difficulty": difficulty, "steps": steps}
        return task

    @staticmethod
    def expert_solution(task: Task) -> list[ToolCall]:
        calls = [ToolCall("calculate", {"expression": step}) for step in task.params["steps"]]
        return calls + [ToolCall("answer", {"text": task.params["answer"]})]

    def reset(self) -> str:
        return self.task.instruction

    def step(self, call: ToolCall) -> StepResult:
        if self.done:
            return episode_over()
        return dispatch(call, self.tools, {"calculate": calculator_tool, "answer": self._answer})

    def verify(self) -> bool:
        return self.reward == 1.0

    def close(self) -> None:
        self.env.close()

    def _answer(self, text: str) -> StepResult:
        out = self.env.step(f"#### {text.strip()}")  # the package's strict format
        self.reward = float(out["reward"])
        self.done = bool(out["done"])
        if self.done:
            return StepResult("Answer recorded.", done=True, info={"reward": self.reward})
        tries = self.env.max_turns - self.env.turns
        return StepResult(f"Not correct. {tries} {'try' if tries == 1 else 'tries'} left.",
                          info={"reward": self.reward})


# ---------------------------------------------------------------- text2sql

SQL_LAYOUT = ("spider", "database")  # where the package's SQLEnv looks for data="spider"
SCHEMA = ("customers(id, name, city); products(id, name, price); "
          "orders(id, customer_id, product_id, quantity)")
CITIES = ("Oslo", "Lima", "Pune", "Kyoto", "Accra")
PRODUCTS = ("lamp", "chair", "kettle", "radio", "rug", "clock", "vase", "desk")


def sql_dir() -> Path:
    return Path(os.environ.get("TURNRL_SKYRL_SQL_DIR", Path.home() / ".cache" / "turnrl" / "skyrl_sql"))


def shop_rows(seed: int) -> dict[str, list[tuple]]:
    """The rows of the shop database of `seed`."""
    rng = random.Random(seed)
    names = [n.capitalize() for n in made_up_names(rng, rng.randint(6, 9))]
    customers = [(i + 1, name, rng.choice(CITIES)) for i, name in enumerate(names)]
    products = [(i + 1, name, rng.randint(5, 90)) for i, name in enumerate(rng.sample(PRODUCTS, 6))]
    orders = [(i + 1, rng.randint(1, len(customers)), rng.randint(1, len(products)), rng.randint(1, 5))
              for i in range(rng.randint(12, 20))]
    return {"customers": customers, "products": products, "orders": orders}


def shop_database(seed: int) -> tuple[Path, str]:
    """The data root the package reads and the db id of the shop database of `seed`, written on first use."""
    root, db_id = sql_dir(), f"shop_s{seed}"
    path = root.joinpath(*SQL_LAYOUT, db_id, f"{db_id}.sqlite")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, scratch = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        with sqlite3.connect(scratch) as db:
            db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, city TEXT)")
            db.execute("CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT, price INTEGER)")
            db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, product_id INTEGER, "
                       "quantity INTEGER)")
            for table, rows in shop_rows(seed).items():
                db.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)
        os.replace(scratch, path)  # whole or not at all, for concurrent workers
    return root, db_id


def sql_question(seed: int, difficulty: int) -> tuple[str, str]:
    """A question about the shop database of `seed` and its gold SQL."""
    rng = random.Random(seed * 31 + difficulty)
    rows = shop_rows(seed)
    city = rng.choice(sorted({c[2] for c in rows["customers"]}))
    product = rng.choice(rows["products"])[1]
    if difficulty == 1:
        return (f"What are the names of the customers who live in {city}?",
                f"SELECT name FROM customers WHERE city = '{city}'")
    if difficulty == 2:
        return ("How many orders are there for each product id?",
                "SELECT product_id, COUNT(*) FROM orders GROUP BY product_id")
    if difficulty == 3:
        return (f"What are the names of the customers who ordered a {product}?",
                "SELECT DISTINCT c.name FROM customers c JOIN orders o ON o.customer_id = c.id "
                f"JOIN products p ON p.id = o.product_id WHERE p.name = '{product}'")
    n = rng.randint(3, 8)
    return (f"Which cities have customers who together ordered more than {n} items?",
            "SELECT c.city FROM customers c JOIN orders o ON o.customer_id = c.id "
            f"GROUP BY c.city HAVING SUM(o.quantity) > {n}")


def text2sql_observation(raw: str) -> tuple[str, bool]:
    """The package's `<observation>` text without tags, reminder or file paths; and whether it is an error."""
    text = re.sub(r"</?observation>|<reminder>.*?</reminder>", "", raw, flags=re.S).strip()
    error = text.startswith(("Error executing SQL", "SQL Timeout", "Your previous action is invalid"))
    text = re.sub(r", db file: \S+", "", text).replace("Error executing SQL: ", "SQL failed: ")
    lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    text = "\n".join(lines) or "(no rows)"
    return (text if len(text) <= MAX_OBSERVATION_CHARS else text[: MAX_OBSERVATION_CHARS - 3] + "..."), error


@register_env("skyrl_text2sql")
class SkyRLText2SQLEnv:
    """Answer a question over a SQLite database: explore with `sql`, submit one `answer` query."""

    tools = [
        ToolSpec("sql", "Run a read-only SQL query and see its rows.", string_argument("query")),
        ToolSpec("answer", "Submit the SQL query that answers the question.", string_argument("query")),
    ]
    difficulties = DIFFICULTIES
    reset_shows_instruction = True  # reset() begins with the task's instruction

    def __init__(self, task: Task) -> None:
        self.task = task
        root, db_id = shop_database(task.params["seed"])
        config = require("skyrl_gym.envs.sql.env", "skyrl_text2sql", "skyrl-gym").Text2SQLEnvConfig(db_path=str(root))
        self.env = _skyrl().make("text2sql", env_config=config, extras={
            "db_id": db_id, "data": "spider", "reward_spec": {"ground_truth": task.params["gold_sql"]},
            "max_turns": task.params["max_turns"]})
        self.reward = 0.0
        self.done = False

    @staticmethod
    def generate_task(seed: int, difficulty: int) -> Task:
        _check_difficulty("skyrl_text2sql", difficulty)
        question, gold = sql_question(seed, difficulty)
        return Task(id=f"skyrl_text2sql-d{difficulty}-s{seed}", env="skyrl_text2sql",
                    instruction=f"Tables: {SCHEMA}. {question}",
                    params={"seed": seed, "difficulty": difficulty, "gold_sql": gold, "max_turns": 8},
                    difficulty=difficulty)

    @staticmethod
    def expert_solution(task: Task) -> list[ToolCall]:
        gold = task.params["gold_sql"]
        return [ToolCall("sql", {"query": gold}), ToolCall("answer", {"query": gold})]

    def reset(self) -> str:
        return self.task.instruction

    def step(self, call: ToolCall) -> StepResult:
        if self.done:
            return episode_over()
        return dispatch(call, self.tools, {"sql": self._sql, "answer": self._answer})

    def verify(self) -> bool:
        return self.reward == 1.0

    def close(self) -> None:
        self.env.close()

    def _send(self, thought: str, action: str) -> dict:
        # The package scores the whole history: every turn must open with <think> (its format rule).
        out = self.env.step(f"<think>{thought}</think>\n{action}")
        self.done = bool(out["done"])
        if self.done:
            self.reward = float(out["reward"])
        return out

    def _sql(self, query: str) -> StepResult:
        if not query.strip():
            return error_result("sql needs a query, e.g. sql(query: 'SELECT name FROM customers')")
        out = self._send("run a query", f"<sql>{query}</sql>")
        if self.done:  # the package's turn limit ran out
            return StepResult("No turns left.", done=True, info={"reward": self.reward})
        observation, error = text2sql_observation(out["observations"][0]["content"])
        return StepResult(f"Error: {observation}" if error else observation, error=error)

    def _answer(self, query: str) -> StepResult:
        if not query.strip():
            return error_result("answer needs the SQL query that answers the question")
        self._send("submit the answer", f"<solution>{query}</solution>")
        return StepResult("Answer recorded.", done=True, info={"reward": self.reward})
