"""The environment API: a tiny protocol and the registry it is added to by name (`rollout.envs.get_env` looks it up).

An environment is a class with this shape (no base class to inherit):

    @register_env("myenv")
    class MyEnv:
        tools: list[ToolSpec]                       # what the agent may call; an instance may
                                                    # narrow it to its task's (the prompt shows those)

        def __init__(self, task: Task) -> None       # rebuild the task's world from task.params
        def reset(self) -> str                       # what the agent sees first, after the task's
                                                    # instruction (see `first_message`)
        def step(self, call: ToolCall) -> StepResult # never raises on bad calls: error observation
        def verify(self) -> bool                     # the outcome verifier: did the agent succeed?
        def close(self) -> None

        @staticmethod
        def generate_task(seed: int, difficulty: int) -> Task   # the task generator
        @staticmethod
        def expert_solution(task: Task) -> list[ToolCall]       # the expert solver
        difficulties: tuple[int, ...]                           # the knob's legal values
        reset_shows_instruction: bool = False        # optional: True when reset() already says
                                                    # the instruction (every built-in env does)

See README.md ("The Env API") for a complete small example.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from rollout.types import StepResult, Task, ToolCall, ToolSpec


@runtime_checkable
class Env(Protocol):
    tools: list[ToolSpec]
    difficulties: tuple[int, ...]

    def __init__(self, task: Task) -> None: ...
    def reset(self) -> str: ...
    def step(self, call: ToolCall) -> StepResult: ...
    def verify(self) -> bool: ...
    def close(self) -> None: ...

    @staticmethod
    def generate_task(seed: int, difficulty: int) -> Task: ...

    @staticmethod
    def expert_solution(task: Task) -> list[ToolCall]: ...


class UnknownEnvError(KeyError):
    pass


# Name -> environment class; `register_env` adds to it, `rollout.envs.get_env` reads it.
ENV_REGISTRY: dict[str, type] = {}


def register_env(name: str) -> Callable[[type], type]:
    """Class decorator that makes an environment available by `name` (in configs: `env.name`). The class
    itself is left as it is (no attribute is set on it, so none of the user's is shadowed)."""

    def wrap(cls: type) -> type:
        if name in ENV_REGISTRY and ENV_REGISTRY[name] is not cls:
            raise ValueError(f"environment {name!r} is already registered by {ENV_REGISTRY[name].__qualname__}")
        ENV_REGISTRY[name] = cls
        return cls

    return wrap


def first_message(env, task: Task) -> str:
    """The first user message of an episode: the task's instruction, then what `env.reset()` returns
    (on the next line, if anything), unless the environment's reset already shows the instruction
    (`reset_shows_instruction = True`)."""
    observation = env.reset()
    if getattr(env, "reset_shows_instruction", False) or not task.instruction:
        return observation
    return f"{task.instruction}\n{observation}" if observation else task.instruction


def import_env_modules(names: Sequence[str]) -> None:
    """Import the modules that register environments of one's own (`env.modules`), so that their
    `@register_env` has run in this process."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ImportError(f"cannot import {name!r} ({err}); it must be importable by name: installed, or "
                              "in a directory on PYTHONPATH") from err
