"""Shared tool plumbing: argument checks against the JSON schema and dispatch to handlers."""

import random

import pytest

from rollout.tools import MAX_ARG_CHARS, dispatch, made_up_names, signature, validate_arguments
from rollout.types import StepResult, ToolCall, ToolSpec

SPECS = [
    ToolSpec("open", "Open.", {"type": "object", "properties": {"entity": {"type": "string"}},
                               "required": ["entity"]}),
    ToolSpec("move", "Move.", {"type": "object",
                               "properties": {"steps": {"type": "integer"}, "fast": {"type": "boolean"},
                                              "speed": {"type": "number"}},
                               "required": ["steps"]}),
    ToolSpec("look", "Look.", {"type": "object", "properties": {}, "required": []}),
]


def test_signature_names_arguments_and_types():
    assert signature(SPECS[0]) == "open(entity: string)"
    assert signature(SPECS[2]) == "look()"


@pytest.mark.parametrize(
    "spec, arguments",
    [(0, {"entity": "Tavon"}), (1, {"steps": 3}), (1, {"steps": 3, "fast": True, "speed": 1.5}),
     (1, {"steps": 3, "speed": 2}), (2, {})],
)
def test_valid_arguments_pass(spec, arguments):
    assert validate_arguments(SPECS[spec], arguments) is None


@pytest.mark.parametrize(
    "spec, arguments, fragment",
    [
        (0, {}, "missing argument 'entity'"),
        (0, {"entity": "a", "x": 1}, "unexpected argument 'x'"),
        (0, {"entity": 3}, "must be a string"),
        (0, {"entity": None}, "must be a string"),
        (0, ["Tavon"], "must be a JSON object"),
        (0, {"entity": "a" * (MAX_ARG_CHARS + 1)}, "at most"),
        (1, {"steps": "3"}, "must be an integer"),
        (1, {"steps": 1.5}, "must be an integer"),
        (1, {"steps": True}, "must be an integer"),
        (1, {"steps": 1, "speed": False}, "must be a number"),
        (2, {"what": "x"}, "unexpected argument"),
    ],
)
def test_invalid_arguments_are_described_with_the_usage(spec, arguments, fragment):
    problem = validate_arguments(SPECS[spec], arguments)
    assert problem is not None and fragment in problem
    if "at most" not in problem:
        assert signature(SPECS[spec]) in problem


def _handlers(calls):
    def record(name):
        def handler(**kwargs):
            calls.append((name, kwargs))
            return StepResult(f"ok {name}")
        return handler

    return {s.name: record(s.name) for s in SPECS}


def test_dispatch_calls_the_handler_with_keyword_arguments():
    calls = []
    result = dispatch(ToolCall("open", {"entity": "Tavon"}), SPECS, _handlers(calls))
    assert result.observation == "ok open" and not result.error
    assert calls == [("open", {"entity": "Tavon"})]


@pytest.mark.parametrize(
    "call",
    [ToolCall("fly", {}), ToolCall("open", {}), ToolCall("open", {"entity": 1}), ToolCall("x" * 500, {}),
     ToolCall(None, {}), ToolCall("open", "Tavon")],
)
def test_dispatch_turns_bad_calls_into_error_observations(call):
    calls = []
    result = dispatch(call, SPECS, _handlers(calls))
    assert result.error and result.observation.startswith("Error: ") and not result.done
    assert calls == []
    assert len(result.observation) < 300  # a long junk tool name is not echoed back whole


def test_unknown_tool_lists_the_tools():
    result = dispatch(ToolCall("fly", {}), SPECS, _handlers([]))
    assert all(signature(s) in result.observation for s in SPECS)


def test_made_up_names_are_distinct_and_seeded():
    names = made_up_names(random.Random(3), 40)
    assert len(set(names)) == 40 and all(n.isalpha() and n.islower() for n in names)
    assert names == made_up_names(random.Random(3), 40)
    assert names != made_up_names(random.Random(4), 40)
