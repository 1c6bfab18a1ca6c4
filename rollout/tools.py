"""What every tool-using environment shares: argument checking, dispatch, error observations.

Environments never raise on a bad call. `dispatch` turns an unknown tool or ill-formed arguments
into an error observation that names what the agent should do instead, and only calls a handler
with arguments that match the tool's JSON schema. Also the made-up names both built-in worlds use.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from rollout.calculator import CalculatorError, calculate, format_number
from rollout.types import StepResult, ToolCall, ToolSpec

MAX_ARG_CHARS = 200

# Two of these make a short made-up name ("Tavon", "Kelmar") that a small BPE vocabulary covers.
SYLLABLES = (
    "ta", "von", "mi", "rel", "kel", "mar", "zor", "vix", "sa", "len", "do", "ri", "bo", "nal",
    "fe", "tin", "ga", "lor", "pe", "dra", "ku", "sen", "ol", "mu", "ar", "is", "na", "bel",
)

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}
_JSON_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object",
               type(None): "null"}


def string_argument(name: str) -> dict[str, Any]:
    """The JSON schema of a tool's arguments when it takes one required string, `name`."""
    return {"type": "object", "properties": {name: {"type": "string"}}, "required": [name]}


def error_result(message: str) -> StepResult:
    """An error observation for a call that did nothing; the agent reads `message` and retries."""
    return StepResult(observation=f"Error: {message}", error=True)


def signature(spec: ToolSpec) -> str:
    """`open(entity: string)`: how the tool is called, for error messages."""
    props = spec.parameters.get("properties", {})
    args = ", ".join(f"{name}: {schema.get('type', 'any')}" for name, schema in props.items())
    return f"{spec.name}({args})"


def validate_arguments(spec: ToolSpec, arguments: Any, check_values: bool = True) -> str | None:
    """What is wrong with `arguments` for `spec` (missing, unexpected, and with `check_values` of the
    wrong type or too long), or None."""
    usage = f"call it as {signature(spec)}"
    if not isinstance(arguments, dict):
        return f"{spec.name} arguments must be a JSON object; {usage}"
    props: dict[str, dict] = spec.parameters.get("properties", {})
    extra = [name for name in arguments if name not in props]
    if extra:
        return f"{spec.name} got unexpected argument {_short(extra[0])}; {usage}"
    missing = [name for name in spec.parameters.get("required", []) if name not in arguments]
    if missing:
        return f"{spec.name} is missing argument {missing[0]!r}; {usage}"
    for name, value in arguments.items() if check_values else ():
        expected = props[name].get("type")
        # bool is an int subclass in Python but not a JSON integer
        wrong_bool = isinstance(value, bool) and expected not in ("boolean", None)
        if expected in _JSON_TYPES and (wrong_bool or not isinstance(value, _JSON_TYPES[expected])):
            article = "an" if expected[0] in "aeiou" else "a"
            got = _JSON_NAMES.get(type(value), type(value).__name__)
            return f"{spec.name} argument {name!r} must be {article} {expected}, got {got}; {usage}"
        if isinstance(value, str) and len(value) > MAX_ARG_CHARS:
            return f"{spec.name} argument {name!r} is {len(value)} chars; at most {MAX_ARG_CHARS}"
    return None


def dispatch(
    call: ToolCall, specs: Sequence[ToolSpec], handlers: dict[str, Callable[..., StepResult]]
) -> StepResult:
    """Check `call` against `specs`, then run its handler with the arguments as keywords."""
    spec = next((s for s in specs if s.name == call.name), None)
    if spec is None:
        tools = ", ".join(signature(s) for s in specs)
        return error_result(f"unknown tool {_short(call.name)}; tools: {tools}")
    problem = validate_arguments(spec, call.arguments)
    if problem is not None:
        return error_result(problem)
    return handlers[spec.name](**call.arguments)


def episode_over() -> StepResult:
    """The answer to any call after the episode ended."""
    return error_result("the episode is over; no more tool calls")


def made_up_names(rng: random.Random, count: int) -> list[str]:
    """`count` distinct lowercase two-syllable names ("tavon", "kelmar"), drawn from `rng`."""
    names: list[str] = []
    while len(names) < count:
        name = rng.choice(SYLLABLES) + rng.choice(SYLLABLES)
        if name not in names:
            names.append(name)
    return names


def _short(value: Any, limit: int = 40) -> str:
    """A repr of something the agent wrote, cut so a long junk argument is not echoed back whole."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def calculator_tool(expression: str) -> StepResult:
    """The `calculate` tool shared by environments: the safe evaluator's result, or an error observation."""
    try:
        return StepResult(format_number(calculate(expression)))
    except CalculatorError as err:
        return error_result(str(err))
