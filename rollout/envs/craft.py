"""craft: a long-horizon crafting task in the spirit of TextCraft.

Each task is a seeded recipe tree: the goal item is crafted from ingredients, which are crafted
in turn, down to base items that can only be gathered. The agent looks recipes up, gathers, and
crafts bottom-up; the episode ends when the goal is in the inventory. Difficulty is the depth of
the tree, drawn so that the expert's episode takes about 8, 14, 20 and 28 turns.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from rollout.env import register_env
from rollout.tools import dispatch, episode_over, error_result, made_up_names, string_argument
from rollout.types import StepResult, Task, ToolCall, ToolSpec

# difficulty -> (tree depth, inclusive range of expert turns a drawn tree must need)
SHAPES = {1: (1, (7, 9)), 2: (2, (12, 16)), 3: (3, (18, 22)), 4: (4, (25, 30))}
_MAX_DRAWS = 10_000


@dataclass
class World:
    target: str
    recipes: dict[str, list[tuple[str, int]]]  # crafted item -> [(ingredient, count)]
    bases: list[str]  # items that can only be gathered

    def is_base(self, item: str) -> bool:
        return item in self.bases


def _draw_tree(rng: random.Random, depth: int) -> World:
    """One random tree of exactly `depth` crafting levels; crafted items appear once each."""
    names = iter(made_up_names(rng, 48))  # the largest depth-4 tree has 44 items
    bases = [next(names) for _ in range(rng.randint(3, 4))]
    recipes: dict[str, list[tuple[str, int]]] = {}

    def make(level: int) -> str:
        item = next(names)
        recipes[item] = []  # reserve the name before the children take theirs
        ingredients: dict[str, int] = {}
        # the first ingredient keeps the depth exact; the rest are bases or shallower items
        if level > 1:
            ingredients[make(level - 1)] = 1
        for _ in range(rng.randint(1, 2) if level > 1 else rng.randint(2, 3)):
            if level > 1 and rng.random() < 0.3:
                ingredients[make(rng.randint(1, level - 1))] = 1
            else:
                base = rng.choice(bases)
                ingredients[base] = ingredients.get(base, 0) + rng.randint(1, 2)
        recipes[item] = list(ingredients.items())
        return item

    target = make(depth)
    used = {i for ings in recipes.values() for i, _ in ings}
    return World(target, recipes, [b for b in bases if b in used])


def expert_turns(world: World) -> int:
    """How many calls the expert makes: a lookup per item, a gather per base unit, a craft per recipe."""
    gathers = sum(n for ings in world.recipes.values() for i, n in ings if world.is_base(i))
    return 2 * len(world.recipes) + len(world.bases) + gathers


def build(seed: int, difficulty: int) -> World:
    """The recipe world of (seed, difficulty): the first drawn tree whose expert length fits the shape."""
    depth, (low, high) = SHAPES[difficulty]
    rng = random.Random(seed)
    for _ in range(_MAX_DRAWS):
        world = _draw_tree(rng, depth)
        if low <= expert_turns(world) <= high:
            return world
    raise RuntimeError(f"craft seed {seed}: no tree of depth {depth} needs {low}-{high} turns")


@register_env("craft")
class CraftEnv:
    """Craft the goal item: look up `recipe`s, `gather` base items, `craft` bottom-up."""

    tools = [
        ToolSpec("recipe", "Show what an item is made of.", string_argument("item")),
        ToolSpec("gather", "Gather one base item.", string_argument("item")),
        ToolSpec("craft", "Craft one item from the inventory.", string_argument("item")),
        ToolSpec("inventory", "Show the inventory.", {"type": "object", "properties": {}, "required": []}),
    ]
    difficulties = (1, 2, 3, 4)
    reset_shows_instruction = True  # reset() begins with the task's instruction

    def __init__(self, task: Task) -> None:
        self.task = task
        self.world = build(task.params["seed"], task.params["difficulty"])
        self.inventory: Counter[str] = Counter()
        self.done = False

    @staticmethod
    def generate_task(seed: int, difficulty: int) -> Task:
        if difficulty not in CraftEnv.difficulties:
            raise ValueError(f"craft difficulty must be one of {CraftEnv.difficulties}, got {difficulty}")
        world = build(seed, difficulty)
        return Task(id=f"craft-d{difficulty}-s{seed}", env="craft", instruction=f"Craft {world.target}.",
                    params={"seed": seed, "difficulty": difficulty, "target": world.target},
                    difficulty=difficulty)

    @staticmethod
    def expert_solution(task: Task) -> list[ToolCall]:
        world = build(task.params["seed"], task.params["difficulty"])
        calls: list[ToolCall] = []
        seen: set[str] = set()

        def solve(item: str) -> None:  # depth first: everything an item needs, then the item
            calls.append(ToolCall("recipe", {"item": item}))
            for ingredient, count in world.recipes[item]:
                if not world.is_base(ingredient):
                    solve(ingredient)
                    continue
                if ingredient not in seen:
                    seen.add(ingredient)
                    calls.append(ToolCall("recipe", {"item": ingredient}))
                calls.extend(ToolCall("gather", {"item": ingredient}) for _ in range(count))
            calls.append(ToolCall("craft", {"item": item}))

        solve(world.target)
        return calls

    def reset(self) -> str:
        return self.task.instruction

    def step(self, call: ToolCall) -> StepResult:
        if self.done:
            return episode_over()
        return dispatch(call, self.tools, {"recipe": self._recipe, "gather": self._gather,
                                           "craft": self._craft, "inventory": self._inventory})

    def verify(self) -> bool:
        return self.inventory[self.world.target] >= 1

    def close(self) -> None:
        pass

    def _known(self, item: str) -> str | None:
        item = item.strip().lower()
        return item if item in self.world.recipes or self.world.is_base(item) else None

    def _unknown(self, item: str) -> StepResult:
        return error_result(f"unknown item {item.strip()[:40]!r}; look up the recipe of {self.world.target}")

    def _recipe(self, item: str) -> StepResult:
        name = self._known(item)
        if name is None:
            return self._unknown(item)
        if self.world.is_base(name):
            return StepResult(f"{name} is a base item: gather it")
        return StepResult(f"{name}: " + ", ".join(f"{n} {i}" for i, n in self.world.recipes[name]))

    def _gather(self, item: str) -> StepResult:
        name = self._known(item)
        if name is None:
            return self._unknown(item)
        if not self.world.is_base(name):
            return error_result(f"{name} is not a base item: craft it (see recipe {name})")
        self.inventory[name] += 1
        return StepResult(f"gathered {name}; have {name}={self.inventory[name]}")

    def _craft(self, item: str) -> StepResult:
        name = self._known(item)
        if name is None:
            return self._unknown(item)
        if self.world.is_base(name):
            return error_result(f"{name} is a base item: gather it")
        needs = self.world.recipes[name]
        missing = [(i, n - self.inventory[i]) for i, n in needs if self.inventory[i] < n]
        if missing:
            return error_result(f"cannot craft {name}; missing " + ", ".join(f"{i}={n}" for i, n in missing))
        for ingredient, count in needs:
            self.inventory[ingredient] -= count
        self.inventory[name] += 1
        if name == self.world.target:
            self.done = True
            return StepResult(f"crafted {name}; goal done", done=True)
        return StepResult(f"crafted {name}; have {name}={self.inventory[name]}")

    def _inventory(self) -> StepResult:
        items = [f"{i}={n}" for i, n in sorted(self.inventory.items()) if n > 0]
        return StepResult("inventory: " + (", ".join(items) if items else "empty"))
