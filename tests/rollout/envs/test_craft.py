"""craft: the expert crafts the goal at every depth in the stated turn ranges; mistakes are errors."""

import statistics

import pytest

from rollout.env import Env
from rollout.envs import get_env
from rollout.envs.craft import SHAPES, CraftEnv, build, expert_turns
from rollout.types import ToolCall

SEEDS = range(150)
TARGET_TURNS = {1: 8, 2: 14, 3: 20, 4: 28}


def run(env, calls):
    return [env.step(call) for call in calls]


def test_registered_under_its_name_and_follows_the_protocol():
    assert get_env("craft") is CraftEnv
    assert isinstance(CraftEnv(CraftEnv.generate_task(0, 1)), Env)
    assert CraftEnv.difficulties == (1, 2, 3, 4) == tuple(SHAPES)


@pytest.mark.parametrize("difficulty", CraftEnv.difficulties)
def test_expert_crafts_the_goal(difficulty):
    for seed in SEEDS:
        task = CraftEnv.generate_task(seed, difficulty)
        env = CraftEnv(task)
        assert env.reset() == task.instruction == f"Craft {task.params['target']}."
        results = run(env, CraftEnv.expert_solution(task))
        assert not any(r.error for r in results), task.id
        assert [r.done for r in results] == [False] * (len(results) - 1) + [True]
        assert env.verify()


@pytest.mark.parametrize("difficulty", CraftEnv.difficulties)
def test_expert_turns_grow_with_difficulty(difficulty):
    depth, (low, high) = SHAPES[difficulty]
    turns = []
    for seed in SEEDS:
        task = CraftEnv.generate_task(seed, difficulty)
        calls = CraftEnv.expert_solution(task)
        assert len(calls) == expert_turns(build(seed, difficulty))
        turns.append(len(calls))
    assert low <= min(turns) and max(turns) <= high and 6 <= low and high <= 30
    assert abs(statistics.mean(turns) - TARGET_TURNS[difficulty]) <= 2


@pytest.mark.parametrize("difficulty", CraftEnv.difficulties)
def test_recipe_tree_has_the_difficulty_as_depth(difficulty):
    world = build(3, difficulty)

    def depth(item):
        if world.is_base(item):
            return 0
        return 1 + max(depth(i) for i, _ in world.recipes[item])

    assert depth(world.target) == SHAPES[difficulty][0]


def test_crafting_without_ingredients_names_what_is_missing():
    task = CraftEnv.generate_task(4, 1)
    env = CraftEnv(task)
    target = task.params["target"]
    result = env.step(ToolCall("craft", {"item": target}))
    assert result.error and not result.done and f"cannot craft {target}; missing " in result.observation
    for ingredient, count in env.world.recipes[target]:
        assert f"{ingredient}={count}" in result.observation
    assert not env.verify()


def test_incomplete_or_wrong_sequences_do_not_verify():
    task = CraftEnv.generate_task(9, 2)
    calls = CraftEnv.expert_solution(task)
    env = CraftEnv(task)
    run(env, calls[:-1])  # everything but the final craft
    assert not env.verify()
    env = CraftEnv(task)
    without_gathers = [c for c in calls if c.name != "gather"]
    results = run(env, without_gathers)
    assert not env.verify() and any(r.error for r in results) and not any(r.done for r in results)


def test_craft_consumes_ingredients_and_gather_adds_one():
    task = CraftEnv.generate_task(5, 1)
    env = CraftEnv(task)
    target = task.params["target"]
    for ingredient, count in env.world.recipes[target]:
        for i in range(count + 1):  # one spare
            assert env.step(ToolCall("gather", {"item": ingredient})).observation == \
                f"gathered {ingredient}; have {ingredient}={i + 1}"
    assert env.step(ToolCall("craft", {"item": target})).done
    assert all(env.inventory[i] == 1 for i, _ in env.world.recipes[target])
    assert env.verify()


def test_recipe_and_inventory_observations():
    task = CraftEnv.generate_task(6, 2)
    env = CraftEnv(task)
    target = task.params["target"]
    recipe = env.step(ToolCall("recipe", {"item": f" {target.upper()} "})).observation
    assert recipe == f"{target}: " + ", ".join(f"{n} {i}" for i, n in env.world.recipes[target])
    base = env.world.bases[0]
    assert env.step(ToolCall("recipe", {"item": base})).observation == f"{base} is a base item: gather it"
    assert env.step(ToolCall("inventory", {})).observation == "inventory: empty"
    env.step(ToolCall("gather", {"item": base}))
    assert env.step(ToolCall("inventory", {})).observation == f"inventory: {base}=1"


@pytest.mark.parametrize(
    "make_call, fragment",
    [
        (lambda w: ToolCall("mine", {"item": "x"}), "unknown tool 'mine'; tools: recipe(item: string)"),
        (lambda w: ToolCall("gather", {}), "missing argument 'item'"),
        (lambda w: ToolCall("gather", {"item": w.bases[0], "count": 3}), "unexpected argument 'count'"),
        (lambda w: ToolCall("inventory", {"item": "x"}), "unexpected argument 'item'"),
        (lambda w: ToolCall("craft", {"item": ["x"]}), "must be a string"),
        (lambda w: ToolCall("recipe", {"item": "z" * 201}), "at most 200"),
        (lambda w: ToolCall("recipe", None), "must be a JSON object"),
        (lambda w: ToolCall("recipe", {"item": "qqqq"}), "unknown item 'qqqq'"),
        (lambda w: ToolCall("gather", {"item": "qqqq"}), "unknown item 'qqqq'"),
        (lambda w: ToolCall("craft", {"item": "qqqq"}), "unknown item 'qqqq'"),
        (lambda w: ToolCall("gather", {"item": w.target}), "is not a base item: craft it"),
        (lambda w: ToolCall("craft", {"item": w.bases[0]}), "is a base item: gather it"),
        (lambda w: ToolCall("craft", {"item": w.target}), "missing"),
    ],
)
def test_bad_calls_are_error_observations(make_call, fragment):
    task = CraftEnv.generate_task(0, 2)
    env = CraftEnv(task)
    result = env.step(make_call(env.world))
    assert result.error and not result.done
    assert result.observation.startswith("Error: ") and fragment in result.observation
    assert sum(env.inventory.values()) == 0  # a bad call changes nothing
    assert run(env, CraftEnv.expert_solution(task))[-1].done and env.verify()


def test_calls_after_the_goal_are_errors():
    task = CraftEnv.generate_task(1, 1)
    env = CraftEnv(task)
    run(env, CraftEnv.expert_solution(task))
    result = env.step(ToolCall("inventory", {}))
    assert result.error and "episode is over" in result.observation


def test_tasks_are_deterministic_in_the_seed():
    for difficulty in CraftEnv.difficulties:
        a, b = CraftEnv.generate_task(13, difficulty), CraftEnv.generate_task(13, difficulty)
        assert a == b and a.id == f"craft-d{difficulty}-s13" and a.difficulty == difficulty
        assert a.params["seed"] == 13 and a.params["difficulty"] == difficulty
        assert CraftEnv(a).world == CraftEnv(b).world
        assert CraftEnv.expert_solution(a) == CraftEnv.expert_solution(b)
    worlds = {str(build(s, 2).recipes) for s in range(50)}
    assert len(worlds) == 50


def test_unknown_difficulty_is_rejected():
    with pytest.raises(ValueError, match="difficulty"):
        CraftEnv.generate_task(0, 0)
