"""twx: TextWorldExpress text games (CookingWorld, Coin, TWC, MapReader, ...) as a turnrl environment.

An adapter over the `textworld-express` package (`pip install 'turnrl[envs]'`, needs Java 17). The
game's own signals decide the episode: it ends when the game reports `tasksuccess` or
`taskfailure`, and `verify()` is the game's `tasksuccess`. The agent plays with two tools: `act`
sends one text command ("open fridge", "move west"); `actions` lists the commands the game
says are valid now (without the many `examine ...` ones, cut to a few hundred characters).

Tasks: `generate_task(seed, difficulty)` draws the game type from `GAMES` by seed; `make_task`
names one of all eight. `twx_<game>` (e.g. `env.name=twx_coin`) is the same environment with every
task of that one game, to train on a single game type. Difficulty 1-4 sets the game's generation
knobs (rooms, ingredients, items to put away, distractors, doors; see `PARAMS`), so the gold path
grows from a few steps to a few dozen. The expert solution is the game's own gold action sequence,
cut at the win; for Coin, whose gold path is a random walk that differs between JVM processes, a
breadth-first search over the rooms (deterministic, shortest in rooms). arithmetic, sorting and
peckingorder have no knobs: every difficulty is the same game for them. The game's seed is the
task's seed scrambled (`game_seed`), since the game's own generator gives nearby seeds nearly the
same game.

All games of a process share one JVM (started on first use, about 0.6 s); each environment is its
own game object in it, so creating one costs a few tens of milliseconds and a step about 1 ms.
"""

from __future__ import annotations

import atexit
import json
import logging
import threading
from typing import Any

from rollout.env import register_env
from rollout.envs.extras import MissingExtraError, require
from rollout.tools import dispatch, episode_over, error_result, string_argument
from rollout.types import StepResult, Task, ToolCall, ToolSpec

log = logging.getLogger(__name__)

MAX_OBSERVATION_CHARS = 700
MAX_ACTIONS_CHARS = 500
FOLD = "train"  # the package's train/dev/test folds draw objects from different sets

_ROOMS = "includeDoors={doors},limitInventorySize=0"
# game -> difficulty -> the game's generation parameters
PARAMS: dict[str, dict[int, str]] = {
    "cookingworld": {
        1: "numLocations=1,numIngredients=1,numDistractorItems=0," + _ROOMS.format(doors=0),
        2: "numLocations=2,numIngredients=2,numDistractorItems=2," + _ROOMS.format(doors=0),
        3: "numLocations=3,numIngredients=2,numDistractorItems=3," + _ROOMS.format(doors=1),
        4: "numLocations=5,numIngredients=3,numDistractorItems=5," + _ROOMS.format(doors=1),
    },
    "coin": {
        1: "numLocations=2,numDistractorItems=0," + _ROOMS.format(doors=0),
        2: "numLocations=4,numDistractorItems=2," + _ROOMS.format(doors=0),
        3: "numLocations=6,numDistractorItems=3," + _ROOMS.format(doors=1),
        4: "numLocations=11,numDistractorItems=5," + _ROOMS.format(doors=1),
    },
    "twc": {
        1: "numLocations=1,numItemsToPutAway=1," + _ROOMS.format(doors=0),
        2: "numLocations=1,numItemsToPutAway=2," + _ROOMS.format(doors=0),
        3: "numLocations=2,numItemsToPutAway=3," + _ROOMS.format(doors=0),
        4: "numLocations=3,numItemsToPutAway=4," + _ROOMS.format(doors=1),
    },
    "mapreader": {
        1: "numLocations=4,maxDistanceApart=1,maxDistractorItemsPerLocation=0," + _ROOMS.format(doors=0),
        2: "numLocations=6,maxDistanceApart=2,maxDistractorItemsPerLocation=1," + _ROOMS.format(doors=0),
        3: "numLocations=8,maxDistanceApart=3,maxDistractorItemsPerLocation=2," + _ROOMS.format(doors=0),
        4: "numLocations=12,maxDistanceApart=5,maxDistractorItemsPerLocation=3," + _ROOMS.format(doors=0),
    },
    "simonsays": {d: f"gameLength={length},numDistractors={d + 1}" for d, length in zip(
        (1, 2, 3, 4), (2, 4, 6, 9), strict=True)},
    "arithmetic": {d: "" for d in (1, 2, 3, 4)},
    "sorting": {d: "" for d in (1, 2, 3, 4)},
    "peckingorder": {d: "" for d in (1, 2, 3, 4)},
}
GAMES = ("cookingworld", "coin", "twc", "mapreader")  # what generate_task draws from, by seed

_jvm_lock = threading.Lock()
_gateway: Any = None


def _jvm() -> Any:
    """The process's TextWorldExpress JVM (py4j gateway), started on first use."""
    global _gateway
    with _jvm_lock:
        if _gateway is None:
            constants = require("textworld_express.constants", "twx", "textworld-express")
            py4j = require("py4j.java_gateway", "twx", "textworld-express")
            try:
                port, proc = py4j.launch_gateway(classpath=constants.JAR_PATH, die_on_exit=True,
                                                 cwd=constants.BASEPATH, return_proc=True)
            except OSError as err:
                raise MissingExtraError(f"the twx environment could not start Java ({err}); it needs Java 17 "
                                        "on PATH") from err
            _gateway = py4j.JavaGateway(gateway_parameters=py4j.GatewayParameters(auto_field=True, port=port),
                                        java_process=proc)
            atexit.register(_gateway.shutdown)
    return _gateway


def compact(text: str, limit: int = MAX_OBSERVATION_CHARS) -> str:
    """One line, single spaces, at most `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_actions(valid: list[str], limit: int = MAX_ACTIONS_CHARS) -> str:
    """The valid commands, sorted, `examine ...` left out, cut to `limit` characters."""
    shown = sorted(a for a in valid if not a.startswith("examine "))
    text, count = "", 0
    for action in shown:
        piece = action if not text else f", {action}"
        if len(text) + len(piece) > limit:
            break
        text, count = text + piece, count + 1
    more = f" (+{len(shown) - count} more)" if count < len(shown) else ""
    return f"Actions: {text}{more}"


class _Game:
    """One TextWorldExpress game object in the shared JVM."""

    def __init__(self, game: str, game_params: str, seed: int, fold: str = FOLD) -> None:
        self.java = _jvm().jvm.textworldexpress.runtime.PythonInterface()
        problem = self.java.load(game, game_params)
        if problem:
            raise ValueError(f"twx game {game!r} rejected params {game_params!r}: {problem}")
        self.seed, self.fold = seed, fold
        self.restart()

    def restart(self) -> dict[str, Any]:
        """The same game from its start again."""
        self.state = json.loads(self.java.generateNewGameJSON(self.seed, self.fold, True))
        return self.state

    def step(self, command: str) -> dict[str, Any]:
        self.state = json.loads(self.java.stepJSON(command))
        return self.state

    def gold(self) -> list[str]:
        return list(self.java.getGoldActionSequence())

    def description(self) -> str:
        return str(self.java.getTaskDescription())

    def close(self) -> None:
        if _gateway is not None:
            _gateway.detach(self.java)


def _room(state: dict[str, Any]) -> str:
    return state["look"].split(".")[0]  # "You are in the kitchen"


def _coin_path(world: _Game) -> list[str]:
    """The shortest way (in rooms) to the coin, by breadth-first search over rooms: `look around`,
    then for each room on the way `open door to <d>` where there is one and `move <d>`, then `take
    coin`. Each room is reached by replaying its path from a fresh start of the same game, so the
    result depends only on the map, not on the game's random gold path."""

    def replay(path: list[str]) -> dict[str, Any]:
        world.restart()
        for command in path:
            world.step(command)
        return world.state

    start = ["look around"]
    frontier, seen = [start], {_room(replay(start))}
    while frontier:
        path = frontier.pop(0)
        state = replay(path)
        if "take coin" in state["validActions"]:
            replay([])  # leave the game at its start for the caller
            return [*path, "take coin"]
        moves = sorted(a for a in state["validActions"] if a.startswith("move "))
        for move in moves:
            door = f"open door to {move.removeprefix('move ')}"
            step = [door, move] if door in state["validActions"] else [move]
            room = _room(replay([*path, *step]))
            if room not in seen:
                seen.add(room)
                frontier.append([*path, *step])
    raise ValueError(f"twx coin game {world.seed}: no room with a coin is reachable")


def game_seed(seed: int) -> int:
    """The game's own seed for turnrl's task `seed`. TextWorldExpress seeds a java.util.Random with it,
    whose first draws hardly change between nearby seeds: every one of 100 consecutive Coin seeds had
    the same kitchen furniture, so the held-out block of seeds (10,100,000 on) was a different
    distribution from the SFT block (20,000,000 on), and a policy fit to one failed on the other. A
    64-bit mix (SplitMix64's finalizer) makes nearby seeds unrelated."""
    mask = (1 << 64) - 1
    z = (seed + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) & 0x7FFFFFFF  # a non-negative Java int


def make_task(game: str, seed: int, difficulty: int, env: str = "twx") -> Task:
    """A task of one named TextWorldExpress `game` (a key of PARAMS), played by environment `env`."""
    if game not in PARAMS:
        raise ValueError(f"twx game must be one of {sorted(PARAMS)}, got {game!r}")
    if difficulty not in TWXEnv.difficulties:
        raise ValueError(f"twx difficulty must be one of {TWXEnv.difficulties}, got {difficulty}")
    game_params, scrambled = PARAMS[game][difficulty], game_seed(seed)
    world = _Game(game, game_params, scrambled)
    try:
        instruction = compact(world.description())
    finally:
        world.close()
    return Task(id=f"twx-{game}-d{difficulty}-s{seed}", env=env, instruction=instruction,
                params={"game": game, "game_params": game_params, "seed": scrambled, "fold": FOLD,
                        "difficulty": difficulty}, difficulty=difficulty)


@register_env("twx")
class TWXEnv:
    """Play a TextWorldExpress game with text commands until the game says the task is done."""

    tools = [
        ToolSpec("act", "Do one text command in the game, e.g. 'open fridge', 'move west', 'take coin'.",
                 string_argument("command")),
        ToolSpec("actions", "List the commands that are valid now.",
                 {"type": "object", "properties": {}, "required": []}),
    ]
    difficulties = (1, 2, 3, 4)
    reset_shows_instruction = True  # reset() begins with the task's instruction

    def __init__(self, task: Task) -> None:
        self.task = task
        p = task.params
        self.game = _Game(p["game"], p["game_params"], p["seed"], p.get("fold", FOLD))
        self.done = False

    @staticmethod
    def generate_task(seed: int, difficulty: int) -> Task:
        return make_task(GAMES[seed % len(GAMES)], seed, difficulty)

    @staticmethod
    def expert_solution(task: Task) -> list[ToolCall]:
        p = task.params
        world = _Game(p["game"], p["game_params"], p["seed"], p.get("fold", FOLD))
        try:
            # Coin's gold path is a random walk that differs between JVM processes: search instead.
            commands = _coin_path(world) if p["game"] == "coin" else world.gold()
            calls = []
            for command in commands:  # some gold paths (twc) walk on after the win: cut there
                calls.append(ToolCall("act", {"command": command}))
                if world.step(command).get("tasksuccess"):
                    break
        finally:
            world.close()
        return calls

    def reset(self) -> str:
        return f"{self.task.instruction}\n{compact(self.game.state['observation'])}"

    def step(self, call: ToolCall) -> StepResult:
        if self.done:
            return episode_over()
        return dispatch(call, self.tools, {"act": self._act, "actions": self._actions})

    def verify(self) -> bool:
        return bool(self.game.state.get("tasksuccess"))

    def close(self) -> None:
        self.game.close()

    def _act(self, command: str) -> StepResult:
        command = " ".join(command.split())
        # Matched to the valid commands case-blind: the game takes "take tv remote control" but only
        # "put TV remote control in TV stand".
        command = {a.lower(): a for a in self.game.state.get("validActions", [])}.get(command.lower(), command)
        if not command:
            return error_result("act needs a command, e.g. act(command: 'look around'); call actions() to list them")
        state = self.game.step(command)
        observation = compact(state["observation"])
        info = {"score": float(state.get("score", 0.0))}
        if observation.startswith("Unknown action"):
            return StepResult(f"Error: the game does not know {command[:40]!r}; call actions() to list commands",
                              error=True, info=info)
        self.done = bool(state.get("tasksuccess") or state.get("taskfailure"))
        return StepResult(observation, done=self.done, info=info)

    def _actions(self) -> StepResult:
        return StepResult(format_actions(list(self.game.state.get("validActions", []))))


def _one_game(game: str) -> type:
    """TWXEnv whose generator makes tasks of `game` only, registered as `twx_<game>`."""
    name = f"twx_{game}"

    class OneGame(TWXEnv):
        @staticmethod
        def generate_task(seed: int, difficulty: int) -> Task:
            return make_task(game, seed, difficulty, env=name)

    OneGame.__name__ = OneGame.__qualname__ = f"TWX{game.title()}Env"
    return register_env(name)(OneGame)


ONE_GAME_ENVS = {game: _one_game(game) for game in PARAMS}
