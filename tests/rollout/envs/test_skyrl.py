"""skyrl_gsm8k and skyrl_text2sql: SkyRL-Gym's own rewards decide, through turnrl's agent loop."""

import asyncio

import pytest

pytest.importorskip("skyrl_gym")

from rollout.agent_loop import EpisodeLimits, run_episode  # noqa: E402
from rollout.chat import ChatFormat, format_tool_call  # noqa: E402
from rollout.demos import ScriptedEngine  # noqa: E402
from rollout.engines.base import SamplingConfig  # noqa: E402
from rollout.env import Env  # noqa: E402
from rollout.envs import get_env  # noqa: E402
from rollout.envs.extras import MissingExtraError  # noqa: E402
from rollout.envs.skyrl import (  # noqa: E402
    SkyRLGSM8KEnv,
    SkyRLText2SQLEnv,
    gsm8k_task,
    shop_database,
    text2sql_observation,
    word_problem,
)
from rollout.types import FinishReason, ToolCall  # noqa: E402

ENVS = (SkyRLGSM8KEnv, SkyRLText2SQLEnv)


@pytest.fixture(autouse=True)
def sql_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TURNRL_SKYRL_SQL_DIR", str(tmp_path))
    return tmp_path


def play(tokenizer, env_cls, task, calls, max_turns=10):
    chat = ChatFormat(tokenizer, env_cls.tools)
    engine = ScriptedEngine(chat, [format_tool_call(c) for c in calls])
    limits = EpisodeLimits(max_turns=max_turns, max_tokens_per_turn=256, max_total_tokens=16_384)
    return asyncio.run(run_episode(engine, chat, task, SamplingConfig(), limits))


@pytest.mark.parametrize("env_cls", ENVS)
def test_registered_under_their_names_and_follow_the_protocol(env_cls):
    assert get_env(env_cls.generate_task(0, 1).env) is env_cls
    env = env_cls(env_cls.generate_task(0, 1))
    assert isinstance(env, Env)
    env.close()


@pytest.mark.parametrize("env_cls", ENVS)
@pytest.mark.parametrize("difficulty", (1, 2, 3, 4))
def test_expert_succeeds_through_the_agent_loop(tiny_tokenizer, env_cls, difficulty):
    for seed in range(3):
        task = env_cls.generate_task(seed, difficulty)
        calls = env_cls.expert_solution(task)
        traj = play(tiny_tokenizer, env_cls, task, calls)
        assert traj.finish_reason == FinishReason.DONE and traj.success, task.id
        assert len(traj.turns) == len(calls) and not any(t.tool_error for t in traj.turns)


def test_gsm8k_wrong_answers_use_up_the_packages_tries(tiny_tokenizer):
    task = SkyRLGSM8KEnv.generate_task(1, 2)
    wrong = ToolCall("answer", {"text": str(int(task.params["answer"]) + 1)})
    traj = play(tiny_tokenizer, SkyRLGSM8KEnv, task, [wrong] * 5)
    assert traj.finish_reason == FinishReason.DONE and not traj.success and len(traj.turns) == 5
    env = SkyRLGSM8KEnv(task)
    assert env.step(wrong).observation == "Not correct. 4 tries left."
    assert env.step(ToolCall("answer", {"text": task.params["answer"]})).done and env.verify()


def test_gsm8k_uses_the_packages_strict_match():
    task = gsm8k_task("What is 1000 + 234?", "1234", "row-1")
    for text, correct in (("1234", True), ("1,234", True), ("#### 1234", True), ("1234.0", False)):
        env = SkyRLGSM8KEnv(task)
        env.step(ToolCall("answer", {"text": text}))
        assert env.verify() is correct, text


def test_word_problems_take_difficulty_steps():
    for difficulty in (1, 2, 3, 4):
        for seed in range(30):
            question, steps, answer = word_problem(seed, difficulty)
            assert len(steps) == difficulty and answer >= 0 and question.endswith("now?")
            assert word_problem(seed, difficulty) == (question, steps, answer)


def test_text2sql_a_wrong_query_fails_through_the_agent_loop(tiny_tokenizer):
    task = SkyRLText2SQLEnv.generate_task(2, 1)
    calls = [ToolCall("sql", {"query": "SELECT name FROM customers"}),
             ToolCall("answer", {"query": "SELECT name FROM customers"})]
    traj = play(tiny_tokenizer, SkyRLText2SQLEnv, task, calls)
    assert traj.finish_reason == FinishReason.DONE and not traj.success


def test_text2sql_is_judged_by_rows_not_text():
    task = SkyRLText2SQLEnv.generate_task(3, 1)
    city = task.params["gold_sql"].split("'")[1]
    env = SkyRLText2SQLEnv(task)
    env.step(ToolCall("answer", {"query": f"select c.name from customers as c where c.city in ('{city}')"}))
    assert env.verify()


def test_text2sql_running_out_of_the_packages_turns_ends_unsolved():
    task = SkyRLText2SQLEnv.generate_task(0, 2)
    task.params["max_turns"] = 2
    env = SkyRLText2SQLEnv(task)
    assert not env.step(ToolCall("sql", {"query": "SELECT 1"})).done
    result = env.step(ToolCall("sql", {"query": "SELECT 1"}))
    assert result.done and result.observation == "No turns left." and not env.verify()


@pytest.mark.parametrize("query, fragment", [
    ("SELEC name", 'SQL failed: near "SELEC": syntax error'),
    ("SELECT * FROM nope", "SQL failed: no such table: nope"),
])
def test_bad_sql_is_an_error_observation_without_paths(query, fragment, sql_dir):
    env = SkyRLText2SQLEnv(SkyRLText2SQLEnv.generate_task(0, 1))
    result = env.step(ToolCall("sql", {"query": query}))
    assert result.error and not result.done and result.observation == f"Error: {fragment}"
    assert str(sql_dir) not in result.observation


@pytest.mark.parametrize("env_cls, call, fragment", [
    (SkyRLGSM8KEnv, ToolCall("answer", {}), "missing argument 'text'"),
    (SkyRLGSM8KEnv, ToolCall("calculate", {"expression": "2 +"}), "Error: "),
    (SkyRLGSM8KEnv, ToolCall("sql", {"query": "x"}), "unknown tool 'sql'"),
    (SkyRLText2SQLEnv, ToolCall("sql", {"query": " "}), "sql needs a query"),
    (SkyRLText2SQLEnv, ToolCall("answer", {"query": 7}), "must be a string"),
])
def test_bad_calls_are_error_observations(env_cls, call, fragment):
    env = env_cls(env_cls.generate_task(0, 1))
    result = env.step(call)
    assert result.error and not result.done and fragment in result.observation
    assert [env.step(c) for c in env_cls.expert_solution(env.task)][-1].done and env.verify()


def test_text2sql_observation_strips_tags_reminder_and_paths():
    raw = "\n\n<observation>  0\n  Oslo\n<reminder>You have 3 turns left.</reminder></observation>\n\n"
    assert text2sql_observation(raw) == ("0\nOslo", False)
    raw = "<observation>Error executing SQL: boom, db file: /x/y.sqlite\n<reminder>r</reminder></observation>"
    assert text2sql_observation(raw) == ("SQL failed: boom", True)


def test_shop_database_is_written_once_per_seed(sql_dir):
    root, db_id = shop_database(5)
    path = root / "spider" / "database" / db_id / f"{db_id}.sqlite"
    assert root == sql_dir and path.exists()
    mtime = path.stat().st_mtime_ns
    assert shop_database(5) == (root, db_id) and path.stat().st_mtime_ns == mtime
    assert SkyRLText2SQLEnv.generate_task(5, 3) == SkyRLText2SQLEnv.generate_task(5, 3)


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "skyrl_gym", None)
    with pytest.raises(MissingExtraError, match=r"turnrl\[envs\]"):
        SkyRLGSM8KEnv(SkyRLGSM8KEnv.generate_task(0, 1))


def test_unknown_difficulty_is_rejected():
    for env_cls in ENVS:
        with pytest.raises(ValueError, match="difficulty"):
            env_cls.generate_task(0, 5)
