"""bfcl: BFCL multi-turn entries played through the agent loop; BFCL's own checker decides each turn."""

import asyncio
import sys

import pytest

pytest.importorskip("bfcl_eval")

from rollout.agent_loop import EpisodeLimits, run_episode  # noqa: E402
from rollout.chat import ChatFormat, format_tool_call  # noqa: E402
from rollout.demos import ScriptedEngine  # noqa: E402
from rollout.engines.base import SamplingConfig  # noqa: E402
from rollout.env import Env  # noqa: E402
from rollout.envs import (
    bfcl,  # noqa: E402
    get_env,  # noqa: E402
)
from rollout.envs.bfcl import CLASSES, BFCLEnv, difficulty_of, entries, make_task, parse_call  # noqa: E402
from rollout.envs.extras import MissingExtraError  # noqa: E402
from rollout.types import FinishReason, ToolCall  # noqa: E402

RESPOND = ToolCall("respond", {"message": "Done."})
# one or two entries of every category and backend, short and long
ENTRIES = ("multi_turn_base_0", "multi_turn_base_15", "multi_turn_base_33", "multi_turn_base_60",
           "multi_turn_base_110", "multi_turn_base_173",
           "multi_turn_miss_func_0", "multi_turn_miss_func_150", "multi_turn_miss_param_1",
           "multi_turn_miss_param_90", "multi_turn_long_context_5", "multi_turn_long_context_130")


def play(tokenizer, task, calls, max_turns=60):
    chat = ChatFormat(tokenizer, BFCLEnv.tools)  # as the trainer makes it, for the environment name
    engine = ScriptedEngine(chat, [format_tool_call(c) for c in calls])
    limits = EpisodeLimits(max_turns=max_turns, max_tokens_per_turn=4096, max_total_tokens=200_000)
    return asyncio.run(run_episode(engine, chat, task, SamplingConfig(), limits))


def expert_by_turn(task):
    """The expert's calls split at each respond: one list per user turn, respond included."""
    turns, current = [], []
    for call in BFCLEnv.expert_solution(task):
        current.append(call)
        if call.name == "respond":
            turns.append(current)
            current = []
    return turns


def test_registered_under_its_name_and_follows_the_protocol():
    assert get_env("bfcl") is BFCLEnv
    env = BFCLEnv(BFCLEnv.generate_task(0, 1))
    assert isinstance(env, Env)
    env.close()


def test_class_tools_are_every_backend_function_and_instance_tools_the_entrys():
    names = [t.name for t in BFCLEnv.tools]
    assert len(names) == len(set(names)) > 100 and names[-1] == "respond"
    env = BFCLEnv(make_task("multi_turn_base_0"))  # TwitterAPI + GorillaFileSystem
    own = {t.name for t in env.tools}
    assert {"cd", "mv", "post_tweet", "respond"} <= own and not own & {"add", "book_flight", "startEngine"}
    assert "Functions you can call for this task: cat, cd, " in env.reset()
    assert env.reset().startswith(entries()["multi_turn_base_0"]["question"][0][0]["content"])


def test_an_episodes_prompt_shows_its_tasks_tools_only(tiny_tokenizer):
    # The class-level union of ~130 tools is tens of thousands of tokens with the tiny tokenizer.
    traj = play(tiny_tokenizer, make_task("multi_turn_base_0"), [RESPOND], max_turns=1)
    prompt = tiny_tokenizer.decode(traj.token_ids[:traj.prompt_length])
    assert "post_tweet" in prompt and "book_flight" not in prompt and "startEngine" not in prompt
    assert traj.prompt_length < len(ChatFormat(tiny_tokenizer, BFCLEnv.tools).prompt_ids("")) / 2


def test_bfcl_types_become_json_schema():
    spec = next(t for t in BFCLEnv.tools if t.name == "adjustClimateControl")
    assert spec.parameters["type"] == "object" and spec.parameters["required"] == ["temperature"]
    assert spec.parameters["properties"]["temperature"]["type"] == "number"
    assert spec.parameters["properties"]["fanSpeed"]["type"] == "integer"
    types = {p.get("type") for t in BFCLEnv.tools for p in t.parameters["properties"].values()}
    assert types <= {"string", "integer", "number", "boolean", "array", "object"}


@pytest.mark.parametrize("entry_id", ENTRIES)
def test_expert_passes_bfcls_checker_through_the_agent_loop(tiny_tokenizer, entry_id):
    task = make_task(entry_id)
    calls = BFCLEnv.expert_solution(task)
    traj = play(tiny_tokenizer, task, calls)
    assert traj.finish_reason == FinishReason.DONE and traj.success, entry_id
    assert len(traj.turns) == len(calls) and not any(t.tool_error for t in traj.turns)


@pytest.mark.parametrize("difficulty", BFCLEnv.difficulties)
def test_expert_passes_generated_tasks_of_every_difficulty(difficulty):
    for seed in range(25):
        task = BFCLEnv.generate_task(seed, difficulty)
        assert task.difficulty == difficulty == difficulty_of(sum(map(len, entries()[task.params["entry_id"]]
                                                                       ["ground_truth"])))
        env = BFCLEnv(task)
        results = [env.step(call) for call in BFCLEnv.expert_solution(task)]
        assert results[-1].done and env.verify(), task.id
        assert not any(r.done for r in results[:-1])


def test_generated_tasks_cover_every_category_and_backend_and_are_deterministic():
    tasks = [BFCLEnv.generate_task(seed, d) for seed in range(40) for d in BFCLEnv.difficulties]
    assert {t.params["category"] for t in tasks} == set(bfcl.CATEGORIES)
    assert {c for t in tasks for c in entries()[t.params["entry_id"]]["involved_classes"]} == set(CLASSES)
    assert BFCLEnv.generate_task(7, 3) == BFCLEnv.generate_task(7, 3)
    assert len({t.id for t in tasks}) > 100


def test_responding_without_acting_fails_the_first_turn(tiny_tokenizer):
    task = make_task("multi_turn_base_0")
    traj = play(tiny_tokenizer, task, [RESPOND] * 4)
    assert traj.finish_reason == FinishReason.DONE and not traj.success and len(traj.turns) == 1


def test_a_wrong_state_fails_the_turn_and_ends_the_episode(tiny_tokenizer):
    task = make_task("multi_turn_base_0")  # turn 0: cd document, mkdir temp, mv final_report.pdf temp
    turns = expert_by_turn(task)
    wrong = [ToolCall("cd", {"folder": "document"}), ToolCall("mkdir", {"dir_name": "tmp"}),
             ToolCall("mv", {"source": "final_report.pdf", "destination": "tmp"}), RESPOND]
    traj = play(tiny_tokenizer, task, wrong + [c for turn in turns[1:] for c in turn])
    assert traj.finish_reason == FinishReason.DONE and not traj.success and len(traj.turns) == len(wrong)
    env = BFCLEnv(task)
    results = [env.step(c) for c in wrong]
    assert results[-1].done and "does not match the state" in results[-1].info["failure"]
    assert env.step(RESPOND).observation.startswith("Error: the episode is over")


def test_a_missing_read_fails_bfcls_response_check():
    task = make_task("multi_turn_base_1")  # turn 0: ls(a=True); pwd changes nothing either
    env = BFCLEnv(task)
    env.step(ToolCall("pwd", {}))
    result = env.step(RESPOND)
    assert result.done and "does not contain all the ground truth response" in result.info["failure"]
    assert not env.verify()


def test_user_turns_arrive_one_at_a_time():
    task = make_task("multi_turn_base_0")
    questions = entries()["multi_turn_base_0"]["question"]
    env = BFCLEnv(task)
    turns = expert_by_turn(task)
    for index, turn in enumerate(turns[:-1]):
        results = [env.step(c) for c in turn]
        assert results[-1].observation == questions[index + 1][0]["content"] and not results[-1].done
    assert not env.verify()  # the last turn is still open
    assert [env.step(c) for c in turns[-1]][-1].done and env.verify()


def test_miss_func_adds_the_held_out_functions_at_their_turn():
    entry = entries()["multi_turn_miss_func_0"]  # sort is held out until turn 3
    assert entry["missed_function"] == {"3": ["sort"]}
    env = BFCLEnv(make_task("multi_turn_miss_func_0"))
    early = env.step(ToolCall("sort", {"file_name": "final_report.pdf"}))
    assert early.error and "unknown tool 'sort' for this task" in early.observation
    turns = expert_by_turn(env.task)
    assert turns[2] == [RESPOND]  # the turn that asks for sort: nothing to do yet
    for turn in turns[:3]:
        last = env.step(turn[-1]) if turn == [RESPOND] else [env.step(c) for c in turn][-1]
    assert last.observation.startswith("I have updated some more functions") and "(new: sort)" in last.observation
    assert "sort" in {t.name for t in env.tools}
    assert [env.step(c) for c in turns[3] + turns[4]][-1].done and env.verify()


def test_acting_on_a_turn_with_a_missing_parameter_is_caught_at_the_next_turn():
    task = make_task("multi_turn_miss_param_1")  # turn 3: "show the last several lines" (how many?)
    turns = expert_by_turn(task)
    assert turns[3] == [RESPOND]
    env = BFCLEnv(task)
    for call in turns[0] + turns[1] + turns[2]:
        env.step(call)
    assert not env.step(ToolCall("rm", {"file_name": "log.txt"})).error  # acting on a guess
    assert not env.step(RESPOND).done  # a turn with no ground-truth calls is not checked...
    result = [env.step(c) for c in turns[4]][-1]
    assert result.done and "does not match the state" in result.info["failure"] and not env.verify()  # ...the next is


@pytest.mark.parametrize("call, fragment", [
    (ToolCall("go", {}), "unknown tool 'go' for this task"),
    (ToolCall("book_flight", {}), "unknown tool 'book_flight' for this task"),  # another backend's function
    (ToolCall("cd", {}), "cd is missing argument 'folder'; call it as cd(folder: string)"),
    (ToolCall("cd", {"folder": "x", "force": True}), "cd got unexpected argument 'force'"),
    (ToolCall("cd", {"folder": ["document"]}), "Error during execution: "),  # the backend raised
])
def test_bad_calls_are_error_observations(call, fragment):
    task = make_task("multi_turn_base_0")
    env = BFCLEnv(task)
    result = env.step(call)
    assert result.error and not result.done and fragment in result.observation
    assert [env.step(c) for c in BFCLEnv.expert_solution(task)][-1].done and env.verify()  # the episode goes on


def test_a_backends_error_answer_is_an_observation_not_an_error():
    env = BFCLEnv(make_task("multi_turn_base_0"))
    result = env.step(ToolCall("cd", {"folder": "nowhere"}))
    assert not result.error and not result.done and '"error"' in result.observation


def test_ground_truth_calls_are_parsed_with_positional_arguments_named():
    assert parse_call("sort('final_report.pdf')") == ToolCall("sort", {"file_name": "final_report.pdf"})
    assert parse_call("ls(a=True)") == ToolCall("ls", {"a": True})
    assert parse_call("add(a=1, b=2.5)") == ToolCall("add", {"a": 1, "b": 2.5})
    with pytest.raises(ValueError, match="plain function call"):
        parse_call("x.y(1)")


def test_unknown_entry_or_difficulty_is_rejected():
    with pytest.raises(ValueError, match="no BFCL multi-turn entry"):
        make_task("multi_turn_base_9999")
    with pytest.raises(ValueError, match="difficulty"):
        BFCLEnv.generate_task(0, 5)


def test_missing_package_says_how_to_install_it(monkeypatch):
    for cached in (bfcl.entries, bfcl.functions, bfcl._buckets):
        cached.cache_clear()
    monkeypatch.setitem(sys.modules, "bfcl_eval.constants.executable_backend_config", None)
    try:
        with pytest.raises(MissingExtraError, match=r"bfcl environment needs bfcl-eval"):
            BFCLEnv.generate_task(0, 1)
        with pytest.raises(MissingExtraError, match=r"pip install --no-deps bfcl-eval==2026.3.23"):
            BFCLEnv.tools  # noqa: B018
    finally:
        for cached in (bfcl.entries, bfcl.functions, bfcl._buckets):
            cached.cache_clear()
