"""Tests for curricula/reflection.py: reflection splices replayed in the environment."""

import asyncio

import pytest

from curricula.reflection import first_mistake, reflection_splices, splice, turn_texts
from rollout.agent_loop import EpisodeLimits, run_episode
from rollout.chat import ChatFormat, format_tool_call
from rollout.demos import ScriptedEngine
from rollout.engines.base import SamplingConfig
from rollout.env import register_env
from rollout.types import FinishReason, StepResult, Task, ToolCall, ToolSpec

REFLECT = "Wait, that step was a mistake."


@register_env("test-lock")
class LockEnv:
    """Press `a` then `b` to open the lock. `x` jams it for good (the world changes); any other
    button is an error observation and changes nothing; `give_up` ends the episode."""

    tools = [ToolSpec("press", "Press a button.", {"type": "object", "properties": {"button": {"type": "string"}},
                                                    "required": ["button"]}),
             ToolSpec("give_up", "Stop.", {"type": "object", "properties": {}})]
    difficulties = (1,)

    def __init__(self, task):
        self.pressed, self.jammed = [], False

    def reset(self):
        return "Open the lock."

    def step(self, call):
        if call.name == "give_up":
            return StepResult("Stopped.", done=True)
        button = call.arguments.get("button")
        if button == "x":
            self.jammed = True
            return StepResult("Clunk.")
        if button not in ("a", "b"):
            return StepResult(f"Error: there is no button {button!r}", error=True)
        self.pressed.append(button)
        return StepResult("Open!", done=True) if self.verify() else StepResult("Click.")

    def verify(self):
        return self.pressed[-2:] == ["a", "b"] and not self.jammed

    def close(self):
        pass

    @staticmethod
    def generate_task(seed, difficulty):
        return Task(id=f"lock-{seed}", env="test-lock", instruction="Open the lock.", params={"seed": seed})

    @staticmethod
    def expert_solution(task):
        return [press("a"), press("b")]


def press(button):
    return ToolCall("press", {"button": button})


LIMITS = EpisodeLimits(max_turns=8, max_tokens_per_turn=64, max_total_tokens=2048)
TASK = LockEnv.generate_task(0, 1)


def play(chat, calls, group="g0"):
    engine = ScriptedEngine(chat, [format_tool_call(c) for c in calls])
    return asyncio.run(run_episode(engine, chat, TASK, SamplingConfig(), LIMITS, group_id=group))


@pytest.fixture
def chat(tiny_tokenizer):
    return ChatFormat(tiny_tokenizer, LockEnv.tools)


def test_first_mistake_is_where_the_failed_episode_leaves_the_success():
    assert first_mistake(["a", "x", "b"], ["a", "b"]) == 1
    assert first_mistake(["z"], ["a", "b"]) == 0
    assert first_mistake(["a"], ["a", "b"]) is None  # stopped short: nothing to splice


def test_a_recoverable_mistake_is_spliced_masked_and_followed_by_the_reflection(chat):
    failed = play(chat, [press("a"), press("q"), press("q"), press("q")])  # three errors in a row
    success = play(chat, [press("a"), press("b")])
    assert failed.finish_reason == FinishReason.TOOL_ERROR and success.success
    spliced = asyncio.run(splice(TASK, failed, success, chat, LIMITS, REFLECT))
    assert spliced is not None and spliced.success and len(spliced.turns) == 3
    first, mistake, recovery = spliced.turns
    assert mistake.masked and not first.masked and not recovery.masked
    assert set(spliced.loss_mask[mistake.action_start:mistake.action_end]) == {0}
    assert set(spliced.loss_mask[recovery.action_start:recovery.action_end]) == {1}
    assert turn_texts(spliced, chat) == [turn_texts(success, chat)[0], turn_texts(failed, chat)[1],
                                         f"{REFLECT}\n{turn_texts(success, chat)[1]}"]
    # The mistake stays in context with the environment's own answer to it.
    assert "there is no button" in chat.decode(spliced.token_ids[mistake.action_end:mistake.observation_end])


def test_a_mistake_that_changes_the_world_or_ends_the_episode_gives_no_splice(chat):
    success = play(chat, [press("a"), press("b")])
    jammed = play(chat, [press("a"), press("x"), press("q"), press("q"), press("q")])
    assert asyncio.run(splice(TASK, jammed, success, chat, LIMITS, REFLECT)) is None  # the replay fails
    gave_up = play(chat, [press("a"), ToolCall("give_up", {})])
    assert asyncio.run(splice(TASK, gave_up, success, chat, LIMITS, REFLECT)) is None


def test_a_steps_splices_pair_failures_with_their_groups_successes(chat):
    recoverable = [press("a"), press("q"), press("q"), press("q")]
    trajs = [play(chat, [press("a"), press("b")], "g0"), play(chat, recoverable, "g0"),
             play(chat, recoverable, "g0"), play(chat, recoverable, "g1"), play(chat, recoverable, "g1")]
    advantages = [1.5, -0.5, -0.5, 0.0, 0.0]
    splices = asyncio.run(reflection_splices(
        trajs, ["g0", "g0", "g0", "g1", "g1"], [TASK] * 5, advantages, chat, LIMITS, REFLECT))
    # g0's two failures each take its success's advantage; g1 has no success to splice onto.
    assert len(splices.trajectories) == 2 and splices.advantages == [1.5, 1.5] and splices.tasks == [TASK] * 2
    assert all(t.success for t in splices.trajectories)
