"""The multi-turn agent loop: one coroutine per episode, token-in/token-out.

Episodes of a batch run concurrently (`run_episodes`), each awaiting the engine on its own, so
there is no barrier between turns of different episodes. Every call of an environment (building
it with its reset, step, verify, close) runs in a tool thread (`rollout/env_threads.py`), so a
slow tool never blocks the event loop and a hung one costs only its own episode.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial

from rollout.chat import ChatFormat, parse_action
from rollout.engines.base import Engine, SamplingConfig
from rollout.env import first_message
from rollout.env_threads import EnvCallTimeout, EnvThreads
from rollout.envs import get_env
from rollout.types import FinishReason, StepResult, Task, Trajectory, Turn

log = logging.getLogger(__name__)


@dataclass
class EpisodeLimits:
    max_turns: int = 8
    max_tokens_per_turn: int = 64
    max_total_tokens: int = 1024  # prompt + everything appended, the engine's context budget
    max_consecutive_errors: int = 3  # bad tool calls in a row before the episode ends as TOOL_ERROR
    tool_timeout_s: float = 30.0  # per tool call, counted from when a tool thread starts it
    env_start_timeout_s: float = 120.0  # building the task's environment and its reset()
    # Longer observations are cut (saying so) before they enter the context or the store.
    max_observation_chars: int = 32_000
    # Extra time every tool call takes, log-normal (sigma 1, a long tail) with this mean; 0: none.
    # Stands in for remote tools (search APIs, sandboxes) when measuring how rollout overlaps them.
    simulated_tool_latency_s: float = 0.0
    # Turns whose tool call failed keep their tokens in context but leave the loss (mask 0): the
    # policy still sees its mistake and the observation, and is not trained to repeat it.
    mask_error_turns: bool = False


class _EpisodeBuffer:
    """The growing token list of one episode with its aligned per-token fields."""

    def __init__(self, prompt_ids: list[int]) -> None:
        self.token_ids = list(prompt_ids)
        self.loss_mask = [0] * len(prompt_ids)
        self.logprobs = [0.0] * len(prompt_ids)
        self.versions = [-1] * len(prompt_ids)

    def add_generated(self, token_ids: list[int], logprobs: list[float], version: int) -> None:
        self.token_ids += token_ids
        self.loss_mask += [1] * len(token_ids)
        self.logprobs += logprobs
        self.versions += [version] * len(token_ids)

    def mask(self, start: int, end: int) -> None:
        """Keep tokens [start, end) in context, out of the loss."""
        self.loss_mask[start:end] = [0] * (end - start)

    def add_context(self, token_ids: list[int]) -> None:
        self.token_ids += token_ids
        self.loss_mask += [0] * len(token_ids)
        self.logprobs += [0.0] * len(token_ids)
        self.versions += [-1] * len(token_ids)


def _slow_step(env, call, latency_s: float) -> StepResult:
    sigma = 1.0  # mean of lognormvariate(mu, sigma) is exp(mu + sigma^2 / 2)
    time.sleep(random.lognormvariate(math.log(latency_s) - sigma**2 / 2, sigma))
    return env.step(call)


def cap_observation(text: str, max_chars: int) -> str:
    """`text` cut to its first `max_chars` characters, saying so, before it enters the context or
    the store (a tool that answers with a megabyte costs neither the budget nor the disk)."""
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}\n[observation cut to its first {max_chars} of {len(text)} characters]"


async def _step_env(env, call, threads: EnvThreads, task: Task, limits: EpisodeLimits) -> StepResult | None:
    """env.step in a tool thread; None when it gives no answer within the tool timeout. A tool that
    raises is an error observation."""
    latency_s = limits.simulated_tool_latency_s
    step = partial(_slow_step, env, call, latency_s) if latency_s > 0 else partial(env.step, call)
    try:
        return await threads.run(step, limits.tool_timeout_s)
    except EnvCallTimeout:
        log.warning("tool %s gave no answer within %g s (rollout.tool_timeout_s) in task %s: the episode ends "
                    "as timeout; the call is abandoned and its thread replaced", call.name, limits.tool_timeout_s,
                    task.id)
        return None
    except Exception as err:  # a broken tool must not take the run down; the agent reads the error
        log.warning("tool %s raised %r", call.name, err)
        return StepResult(observation=f"Error: tool {call.name} failed: {err}", error=True)


async def _start_env(task: Task, threads: EnvThreads, limits: EpisodeLimits):
    """The task's environment, built in a tool thread, and the episode's first user message."""
    env_cls = get_env(task.env)

    def start():
        env = env_cls(task)
        return env, first_message(env, task)

    try:
        return await threads.run(start, limits.env_start_timeout_s)
    except EnvCallTimeout:
        raise EnvCallTimeout(f"environment {task.env!r} did not start task {task.id} within "
                             f"{limits.env_start_timeout_s:g} s (rollout.env_start_timeout_s)") from None


async def _verify(env, task: Task, threads: EnvThreads, limits: EpisodeLimits, timed_out: bool) -> bool:
    """The verifier's verdict; False after a tool timed out (its call may still be running)."""
    if timed_out:
        return False
    try:
        return bool(await threads.run(env.verify, limits.tool_timeout_s))
    except EnvCallTimeout:
        log.warning("verify of task %s gave no answer within %g s: counted as a failure", task.id,
                    limits.tool_timeout_s)
        return False


async def _close(env, task: Task, threads: EnvThreads, limits: EpisodeLimits) -> None:
    try:
        await threads.run(env.close, limits.tool_timeout_s)
    except EnvCallTimeout:
        log.warning("close of task %s gave no answer within %g s; abandoned", task.id, limits.tool_timeout_s)


async def run_episode(
    engine: Engine,
    chat: ChatFormat,
    task: Task,
    sampling: SamplingConfig,
    limits: EpisodeLimits,
    group_id: str = "",
    threads: EnvThreads | None = None,
) -> Trajectory:
    """Play one episode of `task` with the engine's current policy and return its trajectory. The
    environment's methods run in `threads` (a thread of the episode's own if None)."""
    if threads is None:
        threads = EnvThreads(1)
        try:
            return await run_episode(engine, chat, task, sampling, limits, group_id, threads)
        finally:
            threads.shutdown()
    env, message = await _start_env(task, threads, limits)
    timed_out = False
    try:
        # The environment instance's tools: where a task narrows them (bfcl: its backends' functions
        # out of ~130), the prompt shows only those.
        buf = _EpisodeBuffer(chat.prompt_ids(cap_observation(message, limits.max_observation_chars), env.tools))
        prompt_length = len(buf.token_ids)
        turns: list[Turn] = []
        finish = FinishReason.MAX_TURNS
        consecutive_errors = 0
        final_observation = ""  # the last answer of the environment that never enters the context
        for turn_index in range(limits.max_turns):
            budget = min(limits.max_tokens_per_turn, limits.max_total_tokens - len(buf.token_ids))
            if budget <= 0:
                finish = FinishReason.MAX_LENGTH
                break
            # A distinct seed per turn: the same seed every turn would replay one random stream.
            seed = None if sampling.seed is None else sampling.seed * 1009 + turn_index
            gen = await engine.generate(
                buf.token_ids, replace(sampling, max_tokens=budget, stop_token_ids=[chat.eos_id], seed=seed)
            )
            start = len(buf.token_ids)
            buf.add_generated(gen.token_ids, gen.logprobs, gen.version)
            turn = Turn(action_start=start, action_end=len(buf.token_ids), observation_end=len(buf.token_ids))
            turns.append(turn)

            parsed = parse_action(chat.decode(gen.token_ids))
            if parsed.call is None:
                result = StepResult(observation=f"Error: {parsed.error}", error=True)
            else:
                result = await _step_env(env, parsed.call, threads, task, limits)
                if result is None:
                    finish, timed_out = FinishReason.TIMEOUT, True
                    break
            observation_text = cap_observation(result.observation, limits.max_observation_chars)
            turn.tool_error = result.error
            final_observation = observation_text
            # Partial masking: the environment flags a turn (info["mask_turn"]), or a failed tool call.
            if result.info.get("mask_turn") or (result.error and limits.mask_error_turns):
                buf.mask(turn.action_start, turn.action_end)
                turn.masked = True
            consecutive_errors = consecutive_errors + 1 if result.error else 0
            if result.done:
                finish = FinishReason.DONE
                break
            if consecutive_errors >= limits.max_consecutive_errors:
                finish = FinishReason.TOOL_ERROR
                break
            # A turn cut off by the token budget never emitted its end-of-turn token; close it
            # as context (mask 0) so the next turn sees a well-formed conversation.
            closing = [] if gen.finish_reason == "stop" else [chat.eos_id]
            observation = closing + chat.observation_ids(observation_text)
            if len(buf.token_ids) + len(observation) >= limits.max_total_tokens:
                finish = FinishReason.MAX_LENGTH
                break
            buf.add_context(observation)
            turn.observation_end = len(buf.token_ids)
            final_observation = ""
        success = await _verify(env, task, threads, limits, timed_out)
    finally:
        await _close(env, task, threads, limits)
    return Trajectory(
        task_id=task.id,
        group_id=group_id,
        token_ids=buf.token_ids,
        loss_mask=buf.loss_mask,
        logprobs=buf.logprobs,
        versions=buf.versions,
        prompt_length=prompt_length,
        turns=turns,
        finish_reason=finish,
        success=success,
        difficulty=task.difficulty,
        final_observation=final_observation,
    )


async def run_episodes(
    engine: Engine,
    chat: ChatFormat,
    tasks: Sequence[Task],
    sampling: SamplingConfig,
    limits: EpisodeLimits,
    group_ids: Sequence[str] | None = None,
    threads: EnvThreads | None = None,
    on_done=None,
) -> list[Trajectory]:
    """Run all episodes concurrently; results in the order of `tasks`; their environments run in
    `threads` (None: a thread per episode, for this call). `on_done()` is called as each episode
    finishes (for progress bars)."""
    if threads is None:
        threads = EnvThreads(max(1, len(tasks)))
        try:
            return await run_episodes(engine, chat, tasks, sampling, limits, group_ids, threads, on_done)
        finally:
            threads.shutdown()

    async def one(i: int, task: Task) -> Trajectory:
        seeded = sampling if sampling.seed is None else replace(sampling, seed=sampling.seed + i)
        traj = await run_episode(
            engine, chat, task, seeded, limits, group_ids[i] if group_ids else task.id, threads
        )
        if on_done is not None:
            on_done()
        return traj

    return list(await asyncio.gather(*(one(i, t) for i, t in enumerate(tasks))))
