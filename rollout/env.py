"""The environment API: a tiny protocol and the registry it is added to by name (`rollout.envs.get_env` looks it up).

An environment is a class with this shape (no base class to inherit):

    @register_env("myenv")
    class MyEnv:
        tools: list[ToolSpec]                       # what the agent may call; an instance may
                                                    # narrow it to its task's (the prompt shows those)

        def __init__(self, task: Task) -> None       # rebuild the task's world from task.params
        def reset(self) -> str                       # the first user message the agent sees
        def step(self, call: ToolCall) -> StepResult # never raises on bad calls: error observation
        def verify(self) -> bool                     # the outcome verifier: did the agent succeed?
        def close(self) -> None

        @staticmethod
        def generate_task(seed: int, difficulty: int) -> Task   # the task generator
        @staticmethod
        def expert_solution(task: Task) -> list[ToolCall]       # the expert solver
        difficulties: tuple[int, ...]                           # the knob's legal values

See README.md ("The Env API") for a complete small example.
"""

from __future__ import annotations

from collections.abc import Callable
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
    """Class decorator that makes an environment available by `name` (in configs: `env.name`)."""

    def wrap(cls: type) -> type:
        if name in ENV_REGISTRY and ENV_REGISTRY[name] is not cls:
            raise ValueError(f"environment {name!r} is already registered by {ENV_REGISTRY[name].__qualname__}")
        ENV_REGISTRY[name] = cls
        cls.name = name
        return cls

    return wrap
