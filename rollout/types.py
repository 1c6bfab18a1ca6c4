"""The data that flows out of rollout: tasks in, trajectories out.

Everything here is a plain dataclass so it pickles across processes and serialises to JSON.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Task:
    """One thing for the agent to do in one environment.

    `params` is everything the environment needs to rebuild the task deterministically
    (a seed, the difficulty knobs); `instruction` is what the agent is told.
    """

    id: str
    env: str
    instruction: str
    params: dict[str, Any]
    difficulty: int = 0
    parent_id: str | None = None  # lineage: the task this one was made from
    origin: str = "generator"  # how it was made: "generator", "variant", "llm", ...


@dataclass
class ToolSpec:
    """A tool the agent may call, described by an OpenAI-style JSON schema."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object

    def to_json_schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


@dataclass
class ToolCall:
    """A parsed call the agent made: tool name and JSON arguments."""

    name: str
    arguments: dict[str, Any]


@dataclass
class StepResult:
    """What an environment answers to one tool call.

    `error` is set when the call itself was bad (unknown tool, bad arguments); the observation then
    says what was wrong so the agent can read it and recover.
    """

    observation: str
    done: bool = False
    error: bool = False
    info: dict[str, Any] = field(default_factory=dict)


class FinishReason(enum.StrEnum):
    DONE = "done"  # the environment ended the episode (the agent answered / finished)
    MAX_TURNS = "max_turns"
    MAX_LENGTH = "max_length"  # the episode's token budget ran out
    TOOL_ERROR = "tool_error"  # too many consecutive bad tool calls or the tool itself failed
    TIMEOUT = "timeout"  # a tool or the engine did not answer in time


@dataclass
class Turn:
    """Where one assistant turn and the observation after it sit in `Trajectory.token_ids`."""

    action_start: int  # first token the policy generated in this turn
    action_end: int  # one past the last generated token
    observation_end: int  # one past the last observation token that follows (== action_end if none)
    tool_error: bool = False
    reward: float = 0.0  # per-turn reward, placed on the turn's last generated token
    masked: bool = False  # kept in context with loss mask 0 (partial masking of a flagged turn)


@dataclass
class Trajectory:
    """One whole episode as token ids, exactly as the engine consumed and produced them.

    Invariants (tested): `token_ids[:prompt_length]` is the prompt; every position with
    `loss_mask == 1` holds a token the engine sampled, with its behaviour log-prob in `logprobs`
    and the policy version that produced it in `versions`; other positions hold prompt,
    observation or template tokens (`logprobs` 0.0, `versions` -1), or the sampled tokens of a
    masked turn (`Turn.masked`: log-probs and versions kept, loss mask 0).
    """

    task_id: str
    group_id: str
    token_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float]
    versions: list[int]
    prompt_length: int
    turns: list[Turn]
    finish_reason: FinishReason
    success: bool = False  # the environment's verifier
    reward: float = 0.0  # outcome reward, set by rewards/
    difficulty: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    # What the environment answered to the last action when that answer is not in the context (the
    # episode ended there): WebRL's final page. Kept for reward models and inspection only.
    final_observation: str = ""

    @property
    def num_generated_tokens(self) -> int:
        return sum(self.loss_mask)

    def mask_turn(self, index: int) -> None:
        """Partial masking after the episode: turn `index` stays in context with loss mask 0."""
        turn = self.turns[index]
        turn.masked = True
        self.loss_mask[turn.action_start:turn.action_end] = [0] * (turn.action_end - turn.action_start)
