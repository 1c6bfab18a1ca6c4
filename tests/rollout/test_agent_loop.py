"""The token-in/token-out invariant and the episode's finish reasons."""

import asyncio
import time

import pytest
import torch

from rollout.agent_loop import EpisodeLimits, run_episode, run_episodes
from rollout.chat import ChatFormat, format_tool_call
from rollout.demos import ScriptedEngine
from rollout.engines.base import Generation, SamplingConfig
from rollout.env import register_env
from rollout.envs import get_env
from rollout.types import FinishReason, StepResult, Task, ToolCall, ToolSpec


class RecordingEngine:
    """Wraps an engine and records every prompt it was given and every generation it returned."""

    def __init__(self, inner):
        self.inner = inner
        self.version = inner.version
        self.calls: list[tuple[list[int], Generation]] = []

    async def generate(self, prompt_ids, sampling):
        prompt = list(prompt_ids)
        gen = await self.inner.generate(prompt_ids, sampling)
        self.calls.append((prompt, gen))
        return gen


def assert_token_in_token_out(traj, calls):
    """Every prompt is the trajectory so far; every generation sits verbatim at its turn's span;
    the loss mask is 1 exactly on generated tokens, with their behaviour log-probs."""
    assert len(calls) == len(traj.turns)
    generated_positions = set()
    for (prompt, gen), turn in zip(calls, traj.turns, strict=True):
        assert traj.token_ids[: len(prompt)] == prompt
        assert turn.action_start == len(prompt)
        assert traj.token_ids[turn.action_start : turn.action_end] == gen.token_ids
        assert traj.logprobs[turn.action_start : turn.action_end] == gen.logprobs
        assert traj.versions[turn.action_start : turn.action_end] == [gen.version] * len(gen.token_ids)
        generated_positions.update(range(turn.action_start, turn.action_end))
    assert [i for i, m in enumerate(traj.loss_mask) if m] == sorted(generated_positions)
    assert len(traj.token_ids) == len(traj.loss_mask) == len(traj.logprobs) == len(traj.versions)


def test_multi_turn_tool_episode_keeps_tokens_exactly(tiny_tokenizer):
    env_cls = get_env("kbsearch")
    task = env_cls.generate_task(seed=11, difficulty=3)
    chat = ChatFormat(tiny_tokenizer, env_cls.tools)
    calls = env_cls.expert_solution(task)
    engine = RecordingEngine(ScriptedEngine(chat, [format_tool_call(c) for c in calls]))
    traj = asyncio.run(run_episode(engine, chat, task, SamplingConfig(), EpisodeLimits(max_turns=10)))
    assert traj.finish_reason == FinishReason.DONE and traj.success
    assert len(traj.turns) == len(calls) >= 3
    assert_token_in_token_out(traj, engine.calls)
    # The environment's answer to the final `answer` call never enters the context; it is kept apart.
    assert traj.final_observation == "Answer recorded."
    assert "Answer recorded." not in tiny_tokenizer.decode(traj.token_ids)


def test_an_episode_cut_by_the_turn_cap_has_no_final_observation_apart(tiny_tokenizer):
    env_cls = get_env("kbsearch")
    task = env_cls.generate_task(seed=11, difficulty=3)
    chat = ChatFormat(tiny_tokenizer, env_cls.tools)
    calls = env_cls.expert_solution(task)
    engine = ScriptedEngine(chat, [format_tool_call(c) for c in calls])
    traj = asyncio.run(run_episode(engine, chat, task, SamplingConfig(), EpisodeLimits(max_turns=1)))
    assert traj.finish_reason == FinishReason.MAX_TURNS and traj.final_observation == ""


def test_sampled_episodes_from_a_real_engine_keep_tokens_exactly(tiny_model_dir, tiny_tokenizer):
    from rollout.engines.hf import HFEngine

    env_cls = get_env("kbsearch")
    chat = ChatFormat(tiny_tokenizer, env_cls.tools)
    engine = RecordingEngine(HFEngine(str(tiny_model_dir)))
    tasks = [env_cls.generate_task(seed=s, difficulty=2) for s in range(3)]
    limits = EpisodeLimits(max_turns=3, max_tokens_per_turn=12, max_total_tokens=2048)
    trajs = asyncio.run(run_episodes(engine, chat, tasks, SamplingConfig(seed=0), limits))
    for traj in trajs:
        mine = [(p, g) for p, g in engine.calls if traj.token_ids[: len(p)] == p
                and traj.token_ids[len(p) : len(p) + len(g.token_ids)] == g.token_ids]
        assert_token_in_token_out(traj, mine)
        assert traj.finish_reason in (FinishReason.MAX_TURNS, FinishReason.TOOL_ERROR)


def test_turn_cut_by_token_budget_is_closed_with_an_unmasked_eos(tiny_tokenizer):
    env_cls = get_env("kbsearch")
    task = env_cls.generate_task(seed=1, difficulty=1)
    chat = ChatFormat(tiny_tokenizer, env_cls.tools)

    class Rambler:
        version = 7

        async def generate(self, prompt_ids, sampling):
            ids = chat.encode("hmm " * 50)[: sampling.max_tokens]
            return Generation(ids, [-1.0] * len(ids), "length", self.version)

    limits = EpisodeLimits(max_turns=2, max_tokens_per_turn=8, max_consecutive_errors=5)
    traj = asyncio.run(run_episode(Rambler(), chat, task, SamplingConfig(), limits))
    first = traj.turns[0]
    assert first.action_end - first.action_start == 8 and first.tool_error
    assert traj.token_ids[first.action_end] == chat.eos_id and traj.loss_mask[first.action_end] == 0
    assert "no tool call" in tiny_tokenizer.decode(traj.token_ids[first.action_end : first.observation_end])


def test_episode_token_budget_ends_with_max_length(tiny_tokenizer):
    env_cls = get_env("kbsearch")
    task = env_cls.generate_task(seed=2, difficulty=1)
    chat = ChatFormat(tiny_tokenizer, env_cls.tools)
    prompt_len = len(chat.prompt_ids(env_cls(task).reset()))
    engine = ScriptedEngine(chat, ["x"] * 10)
    limits = EpisodeLimits(max_turns=10, max_total_tokens=prompt_len + 30, max_consecutive_errors=10)
    traj = asyncio.run(run_episode(engine, chat, task, SamplingConfig(), limits))
    assert traj.finish_reason == FinishReason.MAX_LENGTH
    assert len(traj.token_ids) <= prompt_len + 30


@register_env("test-flaky")
class FlakyEnv:
    """Its `hang` tool never answers in time and its `boom` tool raises."""

    tools = [ToolSpec("hang", "sleeps", {"type": "object", "properties": {}}),
             ToolSpec("boom", "raises", {"type": "object", "properties": {}})]
    difficulties = (1,)

    def __init__(self, task):
        self.task = task

    def reset(self):
        return "do it"

    def step(self, call):
        if call.name == "hang":
            time.sleep(0.5)
            return StepResult("late")
        raise RuntimeError("backend exploded")

    def verify(self):
        return False

    def close(self):
        pass

    @staticmethod
    def generate_task(seed, difficulty):
        return Task(id=f"flaky-{seed}", env="test-flaky", instruction="do it", params={})

    @staticmethod
    def expert_solution(task):
        return []


@pytest.mark.parametrize("tool, reason", [("hang", FinishReason.TIMEOUT), ("boom", FinishReason.TOOL_ERROR)])
def test_hanging_and_raising_tools_end_the_episode_cleanly(tiny_tokenizer, tool, reason):
    chat = ChatFormat(tiny_tokenizer, FlakyEnv.tools)
    engine = ScriptedEngine(chat, [format_tool_call(ToolCall(tool, {}))] * 3)
    limits = EpisodeLimits(max_turns=3, tool_timeout_s=0.05, max_consecutive_errors=2)
    traj = asyncio.run(run_episode(engine, chat, FlakyEnv.generate_task(0, 1), SamplingConfig(), limits))
    assert traj.finish_reason == reason and not traj.success
    if tool == "boom":
        assert "backend exploded" in tiny_tokenizer.decode(traj.token_ids)


def test_simulated_tool_latency_is_log_normal_with_the_configured_mean(tiny_tokenizer, monkeypatch):
    """Every tool call of an episode sleeps once before the tool runs; the sleeps average the mean."""
    import random

    import rollout.agent_loop as agent_loop

    sleeps: list[float] = []
    monkeypatch.setattr(agent_loop.time, "sleep", sleeps.append)
    random.seed(0)
    env_cls = get_env("kbsearch")
    task = env_cls.generate_task(seed=3, difficulty=2)
    chat = ChatFormat(tiny_tokenizer, env_cls.tools)
    calls = env_cls.expert_solution(task)
    episodes = 200
    for _ in range(episodes):
        engine = ScriptedEngine(chat, [format_tool_call(c) for c in calls])
        traj = asyncio.run(run_episode(engine, chat, task, SamplingConfig(), EpisodeLimits(
            max_turns=20, simulated_tool_latency_s=0.2)))
        assert traj.success
    assert len(sleeps) == episodes * len(calls)
    assert sum(sleeps) / len(sleeps) == pytest.approx(0.2, rel=0.1)
    assert max(sleeps) > 3 * 0.2  # the long tail


def test_failed_tool_calls_stay_in_context_but_leave_the_loss_when_masked(tiny_tokenizer):
    env_cls = get_env("kbsearch")
    task = env_cls.generate_task(seed=5, difficulty=1)
    chat = ChatFormat(tiny_tokenizer, env_cls.tools)
    script = ["not a tool call"] + [format_tool_call(c) for c in env_cls.expert_solution(task)]
    for mask in (False, True):
        traj = asyncio.run(run_episode(ScriptedEngine(chat, script), chat, task, SamplingConfig(),
                                       EpisodeLimits(max_turns=10, mask_error_turns=mask)))
        bad, good = traj.turns[0], traj.turns[1]
        assert traj.success and bad.tool_error and bad.masked == mask and not good.masked
        assert tiny_tokenizer.decode(traj.token_ids[bad.action_start:bad.action_end]).startswith("not a tool")
        assert set(traj.loss_mask[bad.action_start:bad.action_end]) == {0 if mask else 1}
        assert set(traj.loss_mask[good.action_start:good.action_end]) == {1}


def test_masked_turns_contribute_nothing_to_the_loss_gradient():
    from rl.algo.losses import policy_loss

    logprobs = torch.tensor([[-1.0, -2.0, -0.5, -1.5]], requires_grad=True)
    mask = torch.tensor([[1.0, 0.0, 0.0, 1.0]])  # positions 1-2: a masked turn
    loss, _ = policy_loss(logprobs, logprobs.detach() - 0.1, torch.tensor([1.0]), mask)
    loss.backward()
    assert torch.all(logprobs.grad[0, 1:3] == 0) and torch.all(logprobs.grad[0, [0, 3]] != 0)


@register_env("test-half-hanging")
class HalfHangingEnv:
    """Tasks with params["hang"] block in step until RELEASE is set; the others answer at once."""

    RELEASE = None  # a threading.Event, set by the test
    tools = [ToolSpec("go", "finishes the task", {"type": "object", "properties": {}})]
    difficulties = (1,)

    def __init__(self, task):
        self.task = task
        self.done = False

    def reset(self):
        return ""

    def step(self, call):
        if self.task.params["hang"]:
            HalfHangingEnv.RELEASE.wait()
        self.done = True
        return StepResult("finished", done=True)

    def verify(self):
        return self.done

    def close(self):
        pass

    @staticmethod
    def generate_task(seed, difficulty):
        return Task(id=f"half-{seed}", env="test-half-hanging", instruction="Call go.", params={"hang": seed % 2 == 0})

    @staticmethod
    def expert_solution(task):
        return [ToolCall("go", {})]


def test_hung_tools_cost_only_their_own_episodes(tiny_tokenizer, caplog):
    """8 episodes on 4 tool threads, half of them calling a tool that never answers: the hung
    ones end as timeout (logged with the tool's name), every healthy one finishes done. With the
    queue time counted against the timeout, the healthy ones queued behind the hung would time out."""
    import threading

    from rollout.env_threads import EnvThreads

    HalfHangingEnv.RELEASE = threading.Event()
    chat = ChatFormat(tiny_tokenizer, HalfHangingEnv.tools)
    tasks = [HalfHangingEnv.generate_task(seed, 1) for seed in range(8)]

    class Go:
        version = 0

        async def generate(self, prompt_ids, sampling):
            ids = chat.encode(format_tool_call(ToolCall("go", {})))
            return Generation(ids, [0.0] * len(ids), "stop", 0)

    async def main():
        threads = EnvThreads(4)
        try:
            limits = EpisodeLimits(max_turns=2, tool_timeout_s=1.0)
            return await run_episodes(Go(), chat, tasks, SamplingConfig(), limits, threads=threads)
        finally:
            threads.shutdown()

    try:
        trajs = asyncio.run(main())
    finally:
        HalfHangingEnv.RELEASE.set()
    hung = [t for t, task in zip(trajs, tasks, strict=True) if task.params["hang"]]
    healthy = [t for t, task in zip(trajs, tasks, strict=True) if not task.params["hang"]]
    assert all(t.finish_reason == FinishReason.TIMEOUT and not t.success for t in hung)
    assert all(t.finish_reason == FinishReason.DONE and t.success for t in healthy)
    assert sum("tool go gave no answer within 1 s" in r.getMessage() for r in caplog.records) == 4


def test_the_first_message_is_the_instruction_then_what_reset_returns(tiny_tokenizer):
    from rollout.env import first_message

    task = Task(id="t", env="x", instruction="Find the number between 1 and 10.", params={})

    class Opening:
        def reset(self):
            return "You have 5 guesses."

    class Silent:
        def reset(self):
            return ""

    class SaysItItself:
        reset_shows_instruction = True

        def reset(self):
            return "Find the number between 1 and 10. (5 guesses)"

    assert first_message(Opening(), task) == "Find the number between 1 and 10.\nYou have 5 guesses."
    assert first_message(Silent(), task) == "Find the number between 1 and 10."
    assert first_message(SaysItItself(), task) == "Find the number between 1 and 10. (5 guesses)"
    # Through the agent loop: the prompt of an environment without the flag carries the instruction.
    chat = ChatFormat(tiny_tokenizer, HalfHangingEnv.tools)
    healthy = HalfHangingEnv.generate_task(1, 1)
    traj = asyncio.run(run_episode(ScriptedEngine(chat, [format_tool_call(ToolCall("go", {}))]), chat, healthy,
                                   SamplingConfig(), EpisodeLimits(max_turns=1)))
    assert "Call go." in tiny_tokenizer.decode(traj.token_ids[:traj.prompt_length])


@register_env("test-verbose")
class VerboseEnv:
    """Its `dump` tool answers with a megabyte."""

    tools = [ToolSpec("dump", "prints a lot", {"type": "object", "properties": {}})]
    difficulties = (1,)

    def __init__(self, task):
        self.calls = 0

    def reset(self):
        return ""

    def step(self, call):
        self.calls += 1
        return StepResult("x" * 1_000_000, done=self.calls == 2)

    def verify(self):
        return True

    def close(self):
        pass

    @staticmethod
    def generate_task(seed, difficulty):
        return Task(id=f"verbose-{seed}", env="test-verbose", instruction="Dump.", params={})

    @staticmethod
    def expert_solution(task):
        return [ToolCall("dump", {}), ToolCall("dump", {})]


def test_long_observations_are_cut_before_the_context_and_the_store(tiny_tokenizer):
    chat = ChatFormat(tiny_tokenizer, VerboseEnv.tools)
    task = VerboseEnv.generate_task(0, 1)
    limits = EpisodeLimits(max_turns=2, max_observation_chars=100)
    traj = asyncio.run(run_episode(ScriptedEngine(chat, [format_tool_call(ToolCall("dump", {}))] * 2), chat, task,
                                   SamplingConfig(), limits))
    cut = "x" * 100 + "\n[observation cut to its first 100 of 1000000 characters]"
    first = traj.turns[0]
    assert cut in tiny_tokenizer.decode(traj.token_ids[first.action_end:first.observation_end])
    assert traj.final_observation == cut and traj.success
