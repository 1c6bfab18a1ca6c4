"""bfcl: the Berkeley Function Calling Leaderboard's multi-turn entries as a turnrl environment.

An adapter over the `bfcl-eval` package (`pip install --no-deps bfcl-eval==2026.3.23`: its declared
dependencies pin numpy 1.26 and pull LLM SDKs; the parts used here need only the standard library).
A task is one of the package's 800 multi-turn entries (categories base, miss_func, miss_param,
long_context; 200 each): user requests against executable Python backends (GorillaFileSystem,
MathAPI, MessageAPI, TwitterAPI, TicketAPI, TradingBot, TravelAPI, VehicleControlAPI), each
loaded from the entry's `initial_config`.

User turns arrive one at a time, as BFCL runs them: `reset()` is the first request, the agent
calls the entry's functions, then calls `respond(message)` to end its turn; the next request
comes back as that call's observation. One instruction of all requests concatenated would
lose what the benchmark tests: miss_param and miss_func entries have a turn the agent cannot
complete (a missing argument, a missing function) and must not act on, followed by a turn that
supplies what was missing; and BFCL checks the world after every turn, not only at the end.

Tools: an environment's `tools` are the entry's functions (the package's function docs, BFCL's
type names mapped to JSON schema) plus `respond`; in miss_func entries the held-out functions
join the tools at the turn that adds them, with BFCL's "I have updated some more functions"
message. The class attribute `BFCLEnv.tools` is every function of the eight backends plus
`respond`, about 130 tools; an episode's prompt shows its instance's (the agent loop renders
`env.tools`), and the first message names them too. Any other is an unknown-tool error
observation. A call runs the method on the agent's backend instances; its result is the string
BFCL's executor makes of it (dicts as JSON), cut at MAX_OBSERVATION_CHARS. Unknown tools,
unexpected or missing arguments, and exceptions the backend raises are error observations;
argument types are left to the backend, as BFCL's executor does (its ground truth passes a
string where a doc says integer). An `{"error": ...}` the backend returns is its answer to a
well-formed call, not an error.

Verification is BFCL's multi-turn checker, turn by turn, using the package's own `state_checker`
and `response_checker`: at each `respond`, the turn's ground-truth calls run on a second set of
instances (fresh from the same config, advanced turn by turn); a turn with ground-truth calls
fails if the agent made no call in it, if any public attribute of a backend differs from the
ground truth's, or if the ground truth's results are not all among the agent's results so far.
Turns whose ground truth is empty are not checked (the next turn's state check sees any action
taken). A failed turn ends the episode, as the checker stops at it. `verify()` is every turn
having passed. BFCL's force-quit after 20 model steps in a turn is not copied: its steps may hold
parallel calls (two long_context ground truths make 34 and 35 calls in one turn), here one call
is one step; the agent loop's `max_turns` bounds the episode.

`expert_solution` is the ground truth (`possible_answer`), with positional arguments named,
and `respond` after each turn. Difficulty 1-4 buckets the ground truth's total call count
(2-4, 5, 6-7, 8 or more: 207, 191, 239 and 162 entries); `generate_task` picks an entry of the
bucket by seed, `make_task(entry_id)` names one. The expert passes 799 of the 800 entries; the
other, multi_turn_miss_func_49, has a ground truth that calls `tail` two turns before the turn
that adds it, so `generate_task` leaves it out (`solvable`).
"""

from __future__ import annotations

import ast
import copy
import functools
import importlib
import inspect
import json
import random
from importlib import resources
from typing import Any

from rollout.env import register_env
from rollout.envs.extras import require
from rollout.tools import episode_over, error_result, validate_arguments
from rollout.types import StepResult, Task, ToolCall, ToolSpec

# Not in the envs extra: its declared dependencies would downgrade numpy (`make` runs this line).
BFCL_INSTALL = "pip install --no-deps bfcl-eval==2026.3.23"

CATEGORIES = ("base", "miss_func", "miss_param", "long_context")
CLASSES = ("GorillaFileSystem", "MathAPI", "MessageAPI", "TwitterAPI", "TicketAPI", "TradingBot", "TravelAPI",
           "VehicleControlAPI")
DIFFICULTIES = (1, 2, 3, 4)
MAX_OBSERVATION_CHARS = 32_000  # every ground-truth result fits (long_context ones reach ~31.7k)
_TYPES = {"dict": "object", "float": "number", "tuple": "array", "any": None}

RESPOND = ToolSpec(
    "respond",
    "Reply to the user and end your turn, once you have done all you can for the current request "
    "(or to ask for what is missing). The user's next request, if any, comes back.",
    {"type": "object", "properties": {"message": {"type": "string"}}, "required": []},
)


def _bfcl() -> Any:
    return require("bfcl_eval.constants.executable_backend_config", "bfcl", "bfcl-eval", BFCL_INSTALL)


def difficulty_of(calls: int) -> int:
    """The difficulty bucket of an entry whose ground truth makes `calls` calls in all."""
    return 1 if calls <= 4 else 2 if calls == 5 else 3 if calls <= 7 else 4


@functools.cache
def entries() -> dict[str, dict[str, Any]]:
    """Every multi-turn entry by id, with its ground truth (`ground_truth`: calls per turn) added."""
    _bfcl()
    data = resources.files("bfcl_eval") / "data"
    out: dict[str, dict[str, Any]] = {}
    for category in CATEGORIES:
        name = f"BFCL_v4_multi_turn_{category}.json"
        rows = [json.loads(line) for line in (data / name).read_text().splitlines() if line.strip()]
        answers = [json.loads(line) for line in (data / "possible_answer" / name).read_text().splitlines()
                   if line.strip()]
        for row, answer in zip(rows, answers, strict=True):
            if row["id"] != answer["id"]:
                raise ValueError(f"bfcl-eval's {name}: entry {row['id']} is paired with answer {answer['id']}")
            out[row["id"]] = row | {"category": category, "ground_truth": answer["ground_truth"]}
    return out


def solvable(entry: dict[str, Any]) -> bool:
    """False for the entries whose ground truth calls a held-out function before the turn that adds it."""
    held = {name: int(turn) for turn, names in entry.get("missed_function", {}).items() for name in names}
    return all(held.get(call.split("(", 1)[0].strip(), 0) <= turn
               for turn, calls in enumerate(entry["ground_truth"]) for call in calls)


@functools.cache
def _buckets() -> dict[int, list[str]]:
    buckets: dict[int, list[str]] = {d: [] for d in DIFFICULTIES}
    for entry_id, entry in entries().items():
        if not solvable(entry):
            continue
        buckets[difficulty_of(sum(map(len, entry["ground_truth"])))].append(entry_id)
    for ids in buckets.values():
        random.Random(0).shuffle(ids)  # consecutive seeds then mix categories and backends
    return buckets


def _schema(doc: Any) -> Any:
    """BFCL's parameter schema as JSON schema: its `dict`/`float` type names become `object`/`number`."""
    if isinstance(doc, list):
        return [_schema(x) for x in doc]
    if not isinstance(doc, dict):
        return doc
    out = {k: _schema(v) for k, v in doc.items() if k != "type"}
    if isinstance(doc.get("type"), str) and _TYPES.get(doc["type"], doc["type"]) is not None:
        out["type"] = _TYPES.get(doc["type"], doc["type"])
    if "properties" in doc:  # property names are keys, not schemas: keep them as they are
        out["properties"] = {name: _schema(p) for name, p in doc["properties"].items()}
    return out


@functools.cache
def functions() -> dict[str, tuple[str, ToolSpec]]:
    """Every backend function's name -> (its class, its ToolSpec)."""
    config = _bfcl()
    docs = resources.files("bfcl_eval") / "data" / "multi_turn_func_doc"
    out: dict[str, tuple[str, ToolSpec]] = {}
    for cls in CLASSES:
        for line in (docs / config.MULTI_TURN_FUNC_DOC_FILE_MAPPING[cls]).read_text().splitlines():
            if line.strip():
                doc = json.loads(line)
                out[doc["name"]] = (cls, ToolSpec(doc["name"], doc["description"], _schema(doc["parameters"])))
    return out


class _AllTools:
    """`BFCLEnv.tools` on the class: every function of the eight backends and `respond`, read on first use."""

    def __get__(self, obj: Any, owner: type) -> list[ToolSpec]:
        return [spec for _, spec in functions().values()] + [RESPOND]


def _backend_class(name: str) -> type:
    return getattr(importlib.import_module(_bfcl().CLASS_FILE_PATH_MAPPING[name]), name)


def _backends(entry: dict[str, Any]) -> dict[str, Any]:
    """Fresh instances of the entry's classes, loaded from its initial config (BFCL's executor does the same)."""
    config = _bfcl()
    out = {}
    for name in entry["involved_classes"]:
        instance = _backend_class(name)()
        if name not in config.STATELESS_CLASSES:
            instance._load_scenario(copy.deepcopy(entry["initial_config"].get(name, {})),
                                    long_context=entry["category"] == "long_context")
        out[name] = instance
    return out


def _run(instance: Any, name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
    """The method's result as BFCL's executor writes it, and whether it raised."""
    try:
        result = getattr(instance, name)(**copy.deepcopy(arguments))
    except Exception as err:  # the backend's own failure is the agent's observation, never ours
        return f"Error during execution: {err}", True
    if isinstance(result, str):
        return result, False
    if isinstance(result, dict):
        try:
            return json.dumps(result), False
        except (TypeError, ValueError):
            return str(result), False
    return str(result), False


def parse_call(text: str) -> ToolCall:
    """A ground-truth call string (`sort('a.txt')`, `cd(folder='x')`) as a ToolCall with named arguments."""
    node = ast.parse(text, mode="eval").body
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise ValueError(f"not a plain function call: {text!r}")
    name = node.func.id
    arguments = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    if node.args:
        params = [p for p in inspect.signature(getattr(_backend_class(functions()[name][0]), name)).parameters
                  if p != "self"]
        arguments |= {params[i]: ast.literal_eval(a) for i, a in enumerate(node.args)}
    return ToolCall(name, arguments)


def _user_text(messages: list[dict[str, str]]) -> str:
    return " ".join(m["content"] for m in messages if m["role"] == "user")


def make_task(entry_id: str) -> Task:
    """The task of one BFCL multi-turn entry, e.g. `multi_turn_base_0`."""
    entry = entries().get(entry_id)
    if entry is None:
        raise ValueError(f"no BFCL multi-turn entry {entry_id!r}; ids are multi_turn_<category>_<n>, categories "
                         f"{CATEGORIES}")
    difficulty = difficulty_of(sum(map(len, entry["ground_truth"])))
    return Task(id=f"bfcl-{entry_id}", env="bfcl", instruction=_user_text(entry["question"][0]),
                params={"entry_id": entry_id, "category": entry["category"],
                        "index": int(entry_id.rsplit("_", 1)[1]), "difficulty": difficulty},
                difficulty=difficulty)


@register_env("bfcl")
class BFCLEnv:
    """Serve a BFCL multi-turn entry's user requests one turn at a time; BFCL's checker decides each turn."""

    tools = _AllTools()
    difficulties = DIFFICULTIES
    reset_shows_instruction = True  # reset() begins with the task's instruction

    def __init__(self, task: Task) -> None:
        self.task = task
        self.entry = entries()[task.params["entry_id"]]
        self.backends = _backends(self.entry)
        self.gold = _backends(self.entry)
        self.held = {int(turn): names for turn, names in self.entry.get("missed_function", {}).items()}
        held = {name for names in self.held.values() for name in names}
        self.tools = [spec for cls, spec in functions().values()
                      if cls in self.entry["involved_classes"] and spec.name not in held] + [RESPOND]
        self.turn = 0
        self.turn_calls = 0  # calls that reached a backend in this turn
        self.results: list[str] = []  # every such call's result so far, for BFCL's response check
        self.failure: str | None = None
        self.done = False

    @staticmethod
    def generate_task(seed: int, difficulty: int) -> Task:
        if difficulty not in DIFFICULTIES:
            raise ValueError(f"bfcl difficulty must be one of {DIFFICULTIES}, got {difficulty}")
        ids = _buckets()[difficulty]
        return make_task(ids[seed % len(ids)])

    @staticmethod
    def expert_solution(task: Task) -> list[ToolCall]:
        calls = []
        for turn in entries()[task.params["entry_id"]]["ground_truth"]:
            calls += [parse_call(call) for call in turn] + [ToolCall("respond", {"message": "Done."})]
        return calls

    def reset(self) -> str:
        names = ", ".join(spec.name for spec in self.tools)
        return (f"{self.task.instruction}\n\n(Functions you can call for this task: {names}. Call respond when "
                "you have done all you can for the request.)")

    def step(self, call: ToolCall) -> StepResult:
        if self.done:
            return episode_over()
        spec = next((s for s in self.tools if s.name == call.name), None)
        if spec is None:
            names = ", ".join(s.name for s in self.tools)
            return error_result(f"unknown tool {call.name[:40]!r} for this task; tools: {names}")
        # Types and lengths are left to the backend, as in BFCL's executor: its ground truth passes strings
        # where a doc says integer (`close_ticket(ticket_id='ticket_001')`) and writes long files.
        problem = validate_arguments(spec, call.arguments, check_values=False)
        if problem is not None:
            return error_result(problem)
        if spec is RESPOND:
            return self._respond()
        self.turn_calls += 1
        cls = functions()[call.name][0]
        result, raised = _run(self.backends[cls], call.name, call.arguments)
        self.results.append(result)
        if len(result) > MAX_OBSERVATION_CHARS:
            result = result[: MAX_OBSERVATION_CHARS - 3] + "..."
        return StepResult(result, error=raised)

    def verify(self) -> bool:
        return self.failure is None and self.turn == len(self.entry["question"])

    def close(self) -> None:
        self.backends.clear()
        self.gold.clear()

    def _fail(self, why: str) -> StepResult:
        self.failure, self.done = why, True
        return StepResult("The conversation is over.", done=True, info={"failure": why})

    def _respond(self) -> StepResult:
        problem = self._check_turn()
        if problem is not None:
            return self._fail(problem)
        self.turn += 1
        self.turn_calls = 0
        if self.turn == len(self.entry["question"]):
            self.done = True
            return StepResult("All requests are handled.", done=True)
        message = _user_text(self.entry["question"][self.turn])
        if self.turn in self.held:  # miss_func: BFCL adds the held-out functions with its own user message
            added = [functions()[name][1] for name in self.held[self.turn]]
            self.tools = self.tools[:-1] + added + [RESPOND]
            prompts = require("bfcl_eval.constants.default_prompts", "bfcl", "bfcl-eval", BFCL_INSTALL)
            message = (f"{prompts.DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC} "
                       f"(new: {', '.join(s.name for s in added)})")
        return StepResult(message)

    def _check_turn(self) -> str | None:
        """BFCL's multi-turn checker for the turn the agent just ended: why it failed, or None."""
        checker = require("bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker", "bfcl", "bfcl-eval",
                          BFCL_INSTALL)
        gold_calls = [parse_call(call) for call in self.entry["ground_truth"][self.turn]]
        gold_results = [_run(self.gold[functions()[c.name][0]], c.name, c.arguments)[0] for c in gold_calls]
        if not gold_calls:
            return None
        if self.turn_calls == 0:
            return f"no call in turn {self.turn}"
        for check in (checker.state_checker(self.backends, self.gold),
                      checker.response_checker(self.results, gold_results, self.turn)):
            if not check["valid"]:
                return check["error_message"]
        return None
