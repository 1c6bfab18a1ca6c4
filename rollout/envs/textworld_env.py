"""textworld: Microsoft TextWorld games, generated locally per seed, as a turnrl environment.

An adapter over the `textworld` package (`pip install 'turnrl[envs]'`). Each task is a game that
TextWorld's own generator makes from (seed, rooms, objects, quest length) and compiles to a
Z-machine file (Inform 7 ships with the package; Jericho plays it). The game's own signals decide
the episode: it ends when TextWorld reports the quest `won` or `lost`, and `verify()` is `won`.

The agent plays with one tool, `act`, that sends one text command ("go east", "take key").
A command the game's parser does not understand ("That's not a verb I recognise.") is an error
observation; a command it understands but that fails in the world ("You can't go that way.") is
an ordinary observation. Observations are the game's text without the banner and status line.

Difficulty 1-4 sets world size and quest length (`SHAPES`), so the walkthrough grows from one
command to six; the expert solution is the game's own walkthrough. Making and compiling a game
takes about half a second, so compiled games are cached on disk by their parameters
(`$TURNRL_TEXTWORLD_CACHE`, default `~/.cache/turnrl/textworld`); a step takes a few ms.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollout.env import register_env
from rollout.envs.extras import require
from rollout.tools import dispatch, episode_over, error_result, string_argument
from rollout.types import StepResult, Task, ToolCall, ToolSpec

MAX_OBSERVATION_CHARS = 700
# What Inform 7's parser answers when it did not understand the command at all.
PARSER_ERRORS = (
    "That's not a verb I recognise",
    "I didn't understand that sentence",
    "You can't see any such thing",
    "I only understood you as far as",
    "You seem to have said too little",
    "That noun did not make sense",
    "What do you want to",  # a command missing its object: "take"
)


@dataclass(frozen=True)
class Shape:
    rooms: int
    objects: int
    quest_length: int


SHAPES = {1: Shape(2, 3, 1), 2: Shape(3, 6, 2), 3: Shape(5, 10, 4), 4: Shape(8, 15, 6)}


def cache_dir() -> Path:
    return Path(os.environ.get("TURNRL_TEXTWORLD_CACHE", Path.home() / ".cache" / "turnrl" / "textworld"))


def game_file(seed: int, shape: Shape) -> Path:
    """The compiled game (.z8, with its .json beside it) of (seed, shape), made on first use."""
    textworld = require("textworld", "textworld", "textworld")
    generator = require("textworld.generator", "textworld", "textworld")
    directory = cache_dir()
    path = directory / f"s{seed}-r{shape.rooms}-o{shape.objects}-q{shape.quest_length}.z8"
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    options = textworld.GameOptions()
    options.seeds = seed
    options.nb_rooms, options.nb_objects, options.quest_length = shape.rooms, shape.objects, shape.quest_length
    with tempfile.TemporaryDirectory(dir=directory) as scratch:  # compile aside, then move in whole
        options.path = str(Path(scratch) / "game.z8")
        compiled = Path(generator.compile_game(generator.make_game(options), options))
        os.replace(compiled.with_suffix(".json"), path.with_suffix(".json"))
        os.replace(compiled, path)  # last: the .z8 existing means the game is complete
    return path


def clean(text: str, limit: int = MAX_OBSERVATION_CHARS) -> str:
    """The game's text as one line: without the prompt and status line after it, cut to `limit`."""
    text = re.split(r"\n>|Would you like to RESTART", text)[0].replace("*** The End ***", "")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _params_shape(params: dict[str, Any]) -> Shape:
    return Shape(params["rooms"], params["objects"], params["quest_length"])


@register_env("textworld")
class TextWorldEnv:
    """Play a generated TextWorld game with text commands until its quest is won or lost."""

    tools = [
        ToolSpec("act", "Do one text command in the game, e.g. 'go east', 'take key', 'open box', 'look'.",
                 string_argument("command")),
    ]
    difficulties = tuple(SHAPES)
    reset_shows_instruction = True  # reset() begins with the task's instruction

    def __init__(self, task: Task) -> None:
        textworld = require("textworld", "textworld", "textworld")
        self.task = task
        infos = textworld.EnvInfos(won=True, lost=True, score=True, max_score=True, feedback=True,
                                   description=True)
        path = game_file(task.params["seed"], _params_shape(task.params))
        with warnings.catch_warnings():  # Jericho cannot read TextWorld's score; TextWorld's own logic does
            warnings.filterwarnings("ignore", message=".*is not fully supported")
            self.game = textworld.start(str(path), request_infos=infos)
        self.state = self.game.reset()
        self.done = False

    @staticmethod
    def generate_task(seed: int, difficulty: int) -> Task:
        if difficulty not in SHAPES:
            raise ValueError(f"textworld difficulty must be one of {tuple(SHAPES)}, got {difficulty}")
        textworld = require("textworld", "textworld", "textworld")
        shape = SHAPES[difficulty]
        game = textworld.Game.load(str(game_file(seed, shape).with_suffix(".json")))
        return Task(id=f"textworld-d{difficulty}-s{seed}", env="textworld", instruction=clean(game.objective),
                    params={"seed": seed, "rooms": shape.rooms, "objects": shape.objects,
                            "quest_length": shape.quest_length, "difficulty": difficulty},
                    difficulty=difficulty)

    @staticmethod
    def expert_solution(task: Task) -> list[ToolCall]:
        textworld = require("textworld", "textworld", "textworld")
        path = game_file(task.params["seed"], _params_shape(task.params)).with_suffix(".json")
        return [ToolCall("act", {"command": command}) for command in textworld.Game.load(str(path)).walkthrough]

    def reset(self) -> str:
        return f"{self.task.instruction}\n{clean(self.state['description'])}"

    def step(self, call: ToolCall) -> StepResult:
        if self.done:
            return episode_over()
        return dispatch(call, self.tools, {"act": self._act})

    def verify(self) -> bool:
        return bool(self.state["won"])

    def close(self) -> None:
        self.game.close()

    def _act(self, command: str) -> StepResult:
        command = " ".join(command.split())
        if not command:
            return error_result("act needs a command, e.g. act(command: 'look')")
        self.state, score, _ = self.game.step(command)
        observation = clean(self.state["feedback"])
        info = {"score": score, "max_score": self.state["max_score"]}
        if observation.startswith(PARSER_ERRORS):
            return StepResult(f"Error: the game did not understand {command[:40]!r}: {observation}",
                              error=True, info=info)
        self.done = bool(self.state["won"] or self.state["lost"])
        return StepResult(observation, done=self.done, info=info)
