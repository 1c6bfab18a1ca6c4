"""Recording for the OpenAI-compatible proxy (rollout/proxy.py): chat requests in, token-exact
trajectories out.

Each request's messages are rendered with the model's own chat template into prompt ids. An
assistant message that the proxy itself produced in this episode (recognised by its content and
tool calls *and* by the exact prompt it was generated from) is not re-rendered from its text:
its generated token ids are spliced in as sampled. So when the agent appends tool results and
calls again, the new prompt extends the previous call's full token sequence: the tokens in
between (tool results, template tokens) join the trajectory with loss mask 0 and the new
generation with loss mask 1.

A prompt that extends none of the episode's sequences (the agent edited or dropped history, or
the template renders earlier turns differently) starts a new segment of the episode, a separate
training sample, instead of re-tokenizing; `ProxyStats.segments_split` counts these.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from rollout.engines.base import Generation
from rollout.types import FinishReason, Trajectory, Turn

# An assistant message as the proxy compares it: (content, ((tool name, canonical JSON arguments), ...)).
Fingerprint = tuple[str, tuple[tuple[str, str], ...]]


def canonical_arguments(arguments: str | dict) -> str:
    """Tool-call arguments as sorted JSON, so that an echoed message compares equal however it was
    re-serialised; unparseable argument strings compare as they are."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return json.dumps(arguments, sort_keys=True)


def fingerprint(message: dict) -> Fingerprint:
    """What identifies an assistant message (a template-ready dict) for splicing."""
    calls = tuple((c["function"]["name"], canonical_arguments(c["function"]["arguments"]))
                  for c in message.get("tool_calls") or [])
    return message.get("content") or "", calls


@dataclass
class _Spliced:
    """A generation the proxy returned, as the engine produced it."""

    token_ids: list[int]
    ended_with_eos: bool


class PromptRenderer:
    """Renders chat messages to prompt ids with the tokenizer's chat template, splicing in the
    exact tokens of assistant turns the proxy generated (see the module doc)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.eos_id: int = tokenizer.eos_token_id
        self.eos_text: str = tokenizer.decode([self.eos_id])

    def _text(self, messages: list[dict], tools: list[dict] | None, generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False,
                                                  add_generation_prompt=generation_prompt)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def render(self, messages: list[dict], tools: list[dict] | None,
               generations: dict[tuple[tuple[int, ...], Fingerprint], _Spliced]) -> list[int]:
        """Prompt ids for `messages`, ending with the assistant generation prompt.

        `generations` maps (prompt ids, fingerprint) of each generation the proxy returned to its tokens.
        Text between spliced turns is encoded chunk by chunk, so a chunk always tokenizes the same
        way in every later call of the episode.
        """
        ids: list[int] = []
        covered = ""  # template text that `ids` stands for
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            head = self._text(messages[:i], tools, generation_prompt=True)
            with_turn = self._text(messages[: i + 1], tools, generation_prompt=False)
            if not (head.startswith(covered) and with_turn.startswith(head)):
                continue  # the template is not prefix-stable here: this turn is rendered as text
            prompt = ids + self.encode(head[len(covered):])
            gen = generations.get((tuple(prompt), fingerprint(message)))
            eos_at = with_turn.rfind(self.eos_text, len(head))
            if gen is None or eos_at < 0:
                continue  # not ours (or edited): rendered as text, as context
            # A turn that ran out of tokens never emitted eos: the template's eos joins the context.
            cut = eos_at + (len(self.eos_text) if gen.ended_with_eos else 0)
            ids, covered = prompt + gen.token_ids, with_turn[:cut]
        full = self._text(messages, tools, generation_prompt=True)
        if not full.startswith(covered):
            return self.encode(full)
        return ids + self.encode(full[len(covered):])


@dataclass
class _Segment:
    """One training sample of an episode: a token sequence that every call so far extended."""

    token_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float]
    versions: list[int]
    prompt_length: int
    turns: list[Turn] = field(default_factory=list)

    @classmethod
    def start(cls, prompt_ids: list[int]) -> _Segment:
        n = len(prompt_ids)
        return cls(list(prompt_ids), [0] * n, [0.0] * n, [-1] * n, n)

    def extended_by(self, prompt_ids: list[int]) -> bool:
        return len(prompt_ids) >= len(self.token_ids) and prompt_ids[: len(self.token_ids)] == self.token_ids

    def add_context(self, token_ids: list[int]) -> None:
        self.token_ids += token_ids
        self.loss_mask += [0] * len(token_ids)
        self.logprobs += [0.0] * len(token_ids)
        self.versions += [-1] * len(token_ids)
        if self.turns:
            self.turns[-1].observation_end = len(self.token_ids)

    def add_generated(self, gen: Generation, tool_error: bool) -> None:
        start = len(self.token_ids)
        self.token_ids += gen.token_ids
        self.loss_mask += [1] * len(gen.token_ids)
        self.logprobs += gen.logprobs
        self.versions += [gen.version] * len(gen.token_ids)
        self.turns.append(Turn(start, len(self.token_ids), len(self.token_ids), tool_error=tool_error))


@dataclass
class FinishedEpisode:
    """An episode the agent finished (with its reward) or abandoned (expired: no call or finish in time)."""

    episode_id: str
    group_key: str
    trajectories: list[Trajectory]  # one per segment, in order; empty if it expired
    reward: float = 0.0
    success: bool = False
    expired: bool = False


@dataclass
class ProxyStats:
    calls: int = 0
    episodes_started: int = 0
    episodes_finished: int = 0
    episodes_expired: int = 0
    segments_split: int = 0  # calls whose prompt extended none of their episode's sequences
    generated_tokens: int = 0
    rejected_requests: int = 0  # 4xx answers


class Episode:
    """The recording of one episode: its segments and the generations it returned."""

    def __init__(self, episode_id: str, group_key: str) -> None:
        self.id = episode_id
        self.group_key = group_key
        self.segments: list[_Segment] = []
        self.generations: dict[tuple[tuple[int, ...], Fingerprint], _Spliced] = {}
        self.lock = asyncio.Lock()  # calls of one episode run one at a time, in arrival order
        self.admitted = False
        self.last_active = time.monotonic()

    def segment_for(self, prompt_ids: list[int]) -> tuple[_Segment, bool]:
        """The segment `prompt_ids` extends (its new tokens appended as context), else a new one;
        returns (segment, split) where split says a new segment began after earlier ones."""
        for segment in reversed(self.segments):
            if segment.extended_by(prompt_ids):
                segment.add_context(prompt_ids[len(segment.token_ids):])
                return segment, False
        self.segments.append(_Segment.start(prompt_ids))
        return self.segments[-1], len(self.segments) > 1

    def record(self, segment: _Segment, prompt_ids: list[int], gen: Generation, message: dict,
               tool_error: bool, eos_id: int) -> None:
        """Append `gen` to `segment` and remember it for splicing as the assistant `message` returned."""
        segment.add_generated(gen, tool_error)
        ended = bool(gen.token_ids) and gen.token_ids[-1] == eos_id
        self.generations[(tuple(prompt_ids), fingerprint(message))] = _Spliced(list(gen.token_ids), ended)
        self.last_active = time.monotonic()

    def trajectories(self, reward: float, success: bool, finish_reason: FinishReason) -> list[Trajectory]:
        return [Trajectory(task_id=self.group_key, group_id=self.group_key, token_ids=s.token_ids,
                           loss_mask=s.loss_mask, logprobs=s.logprobs, versions=s.versions,
                           prompt_length=s.prompt_length, turns=s.turns, finish_reason=finish_reason,
                           success=success, reward=reward,
                           info={"episode_id": self.id, "segment": i, "segments": len(self.segments)})
                for i, s in enumerate(self.segments) if s.turns]


class EpisodeRecorder:
    """Every open episode by id; finished and expired ones leave as `FinishedEpisode`s."""

    def __init__(self) -> None:
        self.episodes: dict[str, Episode] = {}
        self.closed: set[str] = set()  # ids finished or expired: never reopened
        self.stats = ProxyStats()

    def open(self, episode_id: str, group_key: str) -> Episode:
        """The episode `episode_id`, started now if it is new (KeyError if it was finished already)."""
        if episode_id in self.closed:
            raise KeyError(f"episode {episode_id!r} is already finished; use a new X-Episode-Id")
        episode = self.episodes.get(episode_id)
        if episode is None:
            episode = self.episodes[episode_id] = Episode(episode_id, group_key)
            self.stats.episodes_started += 1
        episode.last_active = time.monotonic()
        return episode

    def finish(self, episode_id: str, reward: float, success: bool,
               finish_reason: FinishReason = FinishReason.DONE) -> FinishedEpisode:
        """Close an episode with its reward (KeyError if no call of it was ever recorded)."""
        episode = self.episodes.get(episode_id)
        if episode is None or not episode.segments:
            raise KeyError(f"no chat completion was recorded for episode {episode_id!r}"
                           + (" (it is already finished)" if episode_id in self.closed else ""))
        del self.episodes[episode_id]
        self.closed.add(episode_id)
        self.stats.episodes_finished += 1
        return FinishedEpisode(episode_id, episode.group_key, episode.trajectories(reward, success, finish_reason),
                               reward, success)

    def expire(self, idle_s: float) -> list[FinishedEpisode]:
        """Drop episodes with no call or finish for `idle_s` seconds (an agent that crashed or forgot
        to finish); those mid-call are kept."""
        now = time.monotonic()
        stale = [e for e in self.episodes.values() if now - e.last_active > idle_s and not e.lock.locked()]
        for episode in stale:
            del self.episodes[episode.id]
            self.closed.add(episode.id)
        self.stats.episodes_expired += len(stale)
        return [FinishedEpisode(e.id, e.group_key, [], expired=True) for e in stale]
