"""textworld: generated TextWorld games played through the agent loop; the game's own `won` decides."""

import asyncio

import pytest

pytest.importorskip("textworld")

from rollout.agent_loop import EpisodeLimits, run_episode  # noqa: E402
from rollout.chat import ChatFormat, format_tool_call  # noqa: E402
from rollout.demos import ScriptedEngine  # noqa: E402
from rollout.engines.base import SamplingConfig  # noqa: E402
from rollout.env import Env  # noqa: E402
from rollout.envs import (
    get_env,  # noqa: E402
    textworld_env,  # noqa: E402
)
from rollout.envs.extras import MissingExtraError  # noqa: E402
from rollout.envs.textworld_env import SHAPES, TextWorldEnv, clean, game_file  # noqa: E402
from rollout.types import FinishReason, ToolCall  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def game_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        path = tmp_path_factory.mktemp("textworld-cache")
        patch.setenv("TURNRL_TEXTWORLD_CACHE", str(path))
        yield path


def act(command):
    return ToolCall("act", {"command": command})


def play(tokenizer, task, calls, max_turns=20):
    chat = ChatFormat(tokenizer, TextWorldEnv.tools)
    engine = ScriptedEngine(chat, [format_tool_call(c) for c in calls])
    limits = EpisodeLimits(max_turns=max_turns, max_tokens_per_turn=256, max_total_tokens=32_768)
    return asyncio.run(run_episode(engine, chat, task, SamplingConfig(), limits))


def test_registered_under_its_name_and_follows_the_protocol():
    assert get_env("textworld") is TextWorldEnv
    env = TextWorldEnv(TextWorldEnv.generate_task(0, 1))
    assert isinstance(env, Env)
    env.close()


@pytest.mark.parametrize("difficulty", TextWorldEnv.difficulties)
def test_walkthrough_wins_through_the_agent_loop(tiny_tokenizer, difficulty):
    task = TextWorldEnv.generate_task(seed=difficulty, difficulty=difficulty)
    calls = TextWorldEnv.expert_solution(task)
    assert 1 <= len(calls) <= SHAPES[difficulty].quest_length
    traj = play(tiny_tokenizer, task, calls)
    assert traj.finish_reason == FinishReason.DONE and traj.success
    assert len(traj.turns) == len(calls) and not any(t.tool_error for t in traj.turns)


def test_a_policy_that_only_looks_runs_out_of_turns(tiny_tokenizer):
    task = TextWorldEnv.generate_task(seed=2, difficulty=2)
    traj = play(tiny_tokenizer, task, [act("look")] * 4, max_turns=4)
    assert traj.finish_reason == FinishReason.MAX_TURNS and not traj.success


def test_gibberish_ends_the_episode_as_tool_errors(tiny_tokenizer):
    task = TextWorldEnv.generate_task(seed=2, difficulty=2)
    traj = play(tiny_tokenizer, task, [act("dance"), act("take unicorn"), act("xyzzy")])
    assert traj.finish_reason == FinishReason.TOOL_ERROR and not traj.success


@pytest.mark.parametrize("command, fragment", [
    ("dance", "That's not a verb I recognise."),
    ("take unicorn", "You can't see any such thing."),
    ("take", "What do you want to take?"),
])
def test_commands_the_parser_rejects_are_error_observations(command, fragment):
    task = TextWorldEnv.generate_task(seed=3, difficulty=2)
    env = TextWorldEnv(task)
    result = env.step(act(command))
    assert result.error and not result.done
    assert result.observation == f"Error: the game did not understand {command!r}: {fragment}"
    results = [env.step(c) for c in TextWorldEnv.expert_solution(task)]  # the episode goes on
    assert results[-1].done and env.verify()
    env.close()


def test_commands_that_fail_in_the_world_are_ordinary_observations():
    env = TextWorldEnv(TextWorldEnv.generate_task(seed=3, difficulty=2))
    result = env.step(act("examine north"))
    assert not result.error and result.observation == "You see nothing unexpected in that direction."
    env.close()


@pytest.mark.parametrize("call, fragment", [
    (ToolCall("go", {"command": "north"}), "unknown tool 'go'"),
    (ToolCall("act", {}), "missing argument 'command'"),
    (ToolCall("act", {"command": ["go", "east"]}), "must be a string"),
    (ToolCall("act", {"command": "  "}), "act needs a command"),
])
def test_bad_calls_are_error_observations(call, fragment):
    env = TextWorldEnv(TextWorldEnv.generate_task(seed=3, difficulty=1))
    result = env.step(call)
    assert result.error and not result.done and fragment in result.observation
    env.close()


def test_observations_are_compact_without_banner_or_status_line():
    task = TextWorldEnv.generate_task(seed=4, difficulty=4)
    env = TextWorldEnv(task)
    first = env.reset()
    assert first.startswith(task.instruction + "\n") and first.count("\n") == 1
    assert "$$" not in first and "\\" not in first
    results = [env.step(c) for c in TextWorldEnv.expert_solution(task)]
    for r in results:
        assert "\n" not in r.observation and ">" not in r.observation
        assert len(r.observation) <= textworld_env.MAX_OBSERVATION_CHARS
    assert "RESTART" not in results[-1].observation and "You scored 1 out of a possible 1" in results[-1].observation
    assert env.step(act("look")).observation.startswith("Error: the episode is over")
    env.close()


def test_clean_drops_the_prompt_and_status_line():
    raw = "\nYou pick up the key.\n\n\n\n>        -= Attic =-0/5"
    assert clean(raw) == "You pick up the key."
    assert clean("a " * 100, limit=20) == "a a a a a a a a a..."


def test_games_are_cached_and_tasks_deterministic(game_cache):
    a = TextWorldEnv.generate_task(6, 3)
    path = game_file(6, SHAPES[3])
    assert path.parent == game_cache and path.exists() and path.with_suffix(".json").exists()
    mtime = path.stat().st_mtime_ns
    b = TextWorldEnv.generate_task(6, 3)
    assert a == b and a.id == "textworld-d3-s6" and a.difficulty == 3
    assert path.stat().st_mtime_ns == mtime  # served from the cache, not compiled again
    assert TextWorldEnv.expert_solution(a) == TextWorldEnv.expert_solution(b)


def test_difficulty_grows_the_world_and_the_quest():
    lengths = {d: [len(TextWorldEnv.expert_solution(TextWorldEnv.generate_task(s, d))) for s in range(2)]
               for d in (1, 4)}
    assert max(lengths[1]) == 1 and min(lengths[4]) > 1
    with pytest.raises(ValueError, match="difficulty"):
        TextWorldEnv.generate_task(0, 9)


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "textworld", None)
    with pytest.raises(MissingExtraError, match=r"turnrl\[envs\]"):
        TextWorldEnv.generate_task(0, 1)
