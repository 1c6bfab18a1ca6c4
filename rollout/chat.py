"""Chat-format glue between messages and token ids, done so that tokens never drift.

The agent loop keeps one growing list of token ids per episode. The prompt is rendered once with
the tokenizer's own chat template. After that, generated tokens are appended exactly as sampled
and each observation is appended as a *delta*: the tokens the template adds after an assistant
turn when a tool message follows, computed once against a fixed base conversation. So the
template's end-of-turn suffix (Qwen's `<|im_end|>\\n`) cannot re-tokenize differently from how
the engine saw it, and nothing generated is ever decoded and re-encoded.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from rollout.types import ToolCall, ToolSpec

_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


class ChatTemplateError(ValueError):
    """The tokenizer's chat template cannot be used for delta tokenization."""


@dataclass
class ParsedAction:
    """An assistant turn's text, parsed: a tool call, or the reason it could not be parsed."""

    call: ToolCall | None
    error: str | None = None


def format_tool_call(call: ToolCall) -> str:
    """The assistant text of a tool call, exactly as the chat template renders `tool_calls`."""
    return "<tool_call>\n" + json.dumps({"name": call.name, "arguments": call.arguments}) + "\n</tool_call>"


def parse_action(text: str) -> ParsedAction:
    """Parse one `<tool_call>{json}</tool_call>` out of an assistant turn; never raises."""
    blocks = _TOOL_CALL.findall(text)
    if not blocks:
        return ParsedAction(None, 'no tool call found; reply with <tool_call>\n{"name": ..., "arguments": {...}}'
                                  "\n</tool_call>")
    if len(blocks) > 1:
        return ParsedAction(None, f"found {len(blocks)} tool calls; make exactly one tool call per turn")
    try:
        payload = json.loads(blocks[0])
    except json.JSONDecodeError as err:
        return ParsedAction(None, f"tool call is not valid JSON ({err.msg} at char {err.pos})")
    if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
        return ParsedAction(None, 'tool call must be a JSON object with a string "name"')
    arguments = payload.get("arguments", {})
    if not isinstance(arguments, dict):
        return ParsedAction(None, 'tool call "arguments" must be a JSON object')
    return ParsedAction(ToolCall(payload["name"], arguments))


class ChatFormat:
    """Token-level rendering of episodes for one tokenizer (any HF tokenizer with a chat template)."""

    def __init__(self, tokenizer: Any, tools: list[ToolSpec], system_prompt: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.tools = [t.to_json_schema() for t in tools]
        self.system_prompt = system_prompt
        self.eos_id: int = tokenizer.eos_token_id
        if self.eos_id is None:
            raise ChatTemplateError("tokenizer has no eos_token: cannot tell where an assistant turn ends")
        self._observation_prefix, self._observation_suffix = self._observation_frame()

    def _render_ids(self, messages: list[dict], add_generation_prompt: bool,
                    tools: list[dict] | None = None) -> list[int]:
        tools = self.tools if tools is None else tools
        text = self.tokenizer.apply_chat_template(
            messages, tools=tools or None, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _system(self) -> list[dict]:
        return [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []

    def prompt_ids(self, user_message: str, tools: list[ToolSpec] | None = None) -> list[int]:
        """Token ids of the conversation start, ending with the assistant generation prompt; with
        `tools`, those are the ones shown (an episode's own, where its environment narrows them)."""
        messages = self._system() + [{"role": "user", "content": user_message}]
        schemas = None if tools is None else [t.to_json_schema() for t in tools]
        return self._render_ids(messages, add_generation_prompt=True, tools=schemas)

    def _observation_frame(self) -> tuple[list[int], list[int]]:
        """The template tokens around an observation, found by rendering a fixed base conversation.

        Returns (prefix, suffix): after an assistant turn that ended with eos, an observation is
        `prefix + encode(observation) + suffix`, suffix ending with the next generation prompt.
        """
        marker = "OBSERVATION"
        base = self._system() + [
            {"role": "user", "content": "base"},
            {"role": "assistant", "content": "base"},
        ]
        base_ids = self._render_ids(base, add_generation_prompt=False)
        full_ids = self._render_ids(base + [{"role": "tool", "content": marker}], add_generation_prompt=True)
        if full_ids[: len(base_ids)] != base_ids or self.eos_id not in base_ids:
            raise ChatTemplateError("chat template renders the same conversation prefix differently")
        # Everything after the assistant's end-of-turn token belongs to the observation's frame
        # (for ChatML this includes the "\n" that follows <|im_end|>, which the engine never emits).
        after_eos = len(base_ids) - base_ids[::-1].index(self.eos_id)
        delta = full_ids[after_eos:]
        marker_ids = self.tokenizer.encode(marker, add_special_tokens=False)
        for start in range(len(delta) - len(marker_ids) + 1):
            if delta[start : start + len(marker_ids)] == marker_ids:
                return delta[:start], delta[start + len(marker_ids) :]
        raise ChatTemplateError("observation text does not tokenize independently inside the tool turn")

    def observation_ids(self, observation: str) -> list[int]:
        """Tokens appended after an assistant turn that ended with eos: the tool turn, then the
        generation prompt for the next assistant turn."""
        return self._observation_prefix + self.encode(observation) + self._observation_suffix

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, token_ids: list[int]) -> str:
        """Text of generated tokens, without the trailing end-of-turn token."""
        if token_ids and token_ids[-1] == self.eos_id:
            token_ids = token_ids[:-1]
        return self.tokenizer.decode(token_ids, skip_special_tokens=False)
