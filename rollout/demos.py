"""Expert demonstrations, laid out token for token like the policy's own episodes.

The expert's actions are played through the real agent loop by a scripted engine, so an SFT
example has exactly the tokens, masks and observation deltas an RL episode would have.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator

from rollout.agent_loop import EpisodeLimits, run_episode
from rollout.chat import ChatFormat, format_tool_call
from rollout.engines.base import Generation, SamplingConfig
from rollout.env import first_message
from rollout.envs import get_env
from rollout.types import Task, Trajectory


class ScriptedEngine:
    """An engine that 'generates' a fixed list of assistant turns, one per call."""

    version = -1

    def __init__(self, chat: ChatFormat, turns: list[str]) -> None:
        self._turns = [chat.encode(text) + [chat.eos_id] for text in turns]
        self._next = 0

    async def generate(self, prompt_ids: list[int], sampling: SamplingConfig) -> Generation:
        ids = self._turns[self._next]
        self._next += 1
        return Generation(token_ids=ids, logprobs=[0.0] * len(ids), finish_reason="stop", version=self.version)

    async def update_weights(self, state_dict, version: int) -> None:
        raise NotImplementedError("a scripted engine has no weights")

    async def shutdown(self) -> None:
        pass


def expert_trajectory(chat: ChatFormat, task: Task, max_total_tokens: int = 4096) -> Trajectory:
    """The expert solver's episode for `task` as a trajectory (loss mask on the expert's turns)."""
    calls = get_env(task.env).expert_solution(task)
    engine = ScriptedEngine(chat, [format_tool_call(c) for c in calls])
    limits = EpisodeLimits(max_turns=len(calls), max_tokens_per_turn=max_total_tokens,
                           max_total_tokens=max_total_tokens)
    return asyncio.run(run_episode(engine, chat, task, SamplingConfig(), limits))


def corpus_texts(env_name: str, num_tasks: int, seed: int = 0, on_episode: Callable[[], object] | None = None
                 ) -> Iterator[str]:
    """Text an environment produces (tool specs, instructions, expert calls, observations), for
    training a tokenizer before any model exists; `on_episode()` after each expert episode."""
    env_cls = get_env(env_name)
    yield json.dumps([t.to_json_schema() for t in env_cls.tools])
    for i in range(num_tasks):
        difficulty = env_cls.difficulties[i % len(env_cls.difficulties)]
        task = env_cls.generate_task(seed + i, difficulty)
        env = env_cls(task)
        yield first_message(env, task)
        for call in env_cls.expert_solution(task):
            yield format_tool_call(call)
            yield env.step(call).observation
        env.close()
        if on_episode is not None:
            on_episode()
