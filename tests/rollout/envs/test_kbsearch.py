"""kbsearch: the expert solves every difficulty, bad calls are error observations, tasks are seeded."""

import random

import pytest

from curricula.generate import feasible
from rollout.env import Env
from rollout.envs import get_env
from rollout.envs.kbsearch import BadQuestion, KBSearchEnv, build, chain_variants
from rollout.types import ToolCall

SEEDS = range(150)


def run(env, calls):
    return [env.step(call) for call in calls]


def test_registered_under_its_name_and_follows_the_protocol():
    assert get_env("kbsearch") is KBSearchEnv
    assert isinstance(KBSearchEnv(KBSearchEnv.generate_task(0, 1)), Env)
    assert KBSearchEnv.difficulties == (1, 2, 3, 4)


@pytest.mark.parametrize("difficulty", KBSearchEnv.difficulties)
def test_expert_solves_every_task(difficulty):
    for seed in SEEDS:
        task = KBSearchEnv.generate_task(seed, difficulty)
        env = KBSearchEnv(task)
        assert env.reset() == task.instruction
        results = run(env, KBSearchEnv.expert_solution(task))
        assert not any(r.error for r in results)
        assert [r.done for r in results] == [False] * (len(results) - 1) + [True]
        assert env.verify(), task.id


@pytest.mark.parametrize("difficulty", KBSearchEnv.difficulties)
def test_expert_opens_one_entity_per_hop(difficulty):
    arithmetic = 0
    for seed in SEEDS:
        calls = KBSearchEnv.expert_solution(KBSearchEnv.generate_task(seed, difficulty))
        names = [c.name for c in calls]
        assert names.count("open") == difficulty and names[-1] == "answer"
        arithmetic += "calculate" in names
        assert len(calls) == difficulty + 1 + ("calculate" in names)
    if difficulty == 1:
        assert arithmetic == 0
    else:  # about a third of the questions need arithmetic
        assert 0.2 * len(SEEDS) < arithmetic < 0.5 * len(SEEDS)


def test_questions_and_observations_are_short_single_lines():
    for difficulty in KBSearchEnv.difficulties:
        for seed in range(30):
            task = KBSearchEnv.generate_task(seed, difficulty)
            assert "\n" not in task.instruction and len(task.instruction.split()) <= 40
            env = KBSearchEnv(task)
            for call in KBSearchEnv.expert_solution(task):
                obs = env.step(call).observation
                assert "\n" not in obs and len(obs) <= 80


def test_world_has_persons_cities_and_companies_with_two_syllable_names():
    world, _, _ = build(seed=7, difficulty=2)
    assert 8 <= len(world) <= 12
    assert {e.kind for e in world.values()} == {"person", "city", "company"}
    assert all(name[0].isupper() and name[1:].islower() and 4 <= len(name) <= 6 for name in world)


def test_wrong_or_missing_answer_fails_verification():
    task = KBSearchEnv.generate_task(3, 2)
    env = KBSearchEnv(task)
    assert not env.verify()  # no answer yet
    calls = KBSearchEnv.expert_solution(task)
    run(env, calls[:-1])
    assert not env.verify()
    result = env.step(ToolCall("answer", {"text": "Nobody"}))
    assert result.done and not env.verify()


def test_numeric_answers_are_compared_as_numbers():
    for seed in range(40):
        task = KBSearchEnv.generate_task(seed, 1)
        gold = task.params["answer"]
        if gold.lstrip("-").isdigit():
            for text in (f" {gold} ", f"{gold}.0", f"{gold}."):
                env = KBSearchEnv(task)
                env.step(ToolCall("answer", {"text": text}))
                assert env.verify(), text
            env = KBSearchEnv(task)
            env.step(ToolCall("answer", {"text": str(int(gold) + 1)}))
            assert not env.verify()
            return
    pytest.fail("no numeric question among the seeds")


def test_name_answers_ignore_case_and_spaces():
    for seed in range(40):
        task = KBSearchEnv.generate_task(seed, 1)
        if task.params["answer"].isalpha():
            env = KBSearchEnv(task)
            env.step(ToolCall("answer", {"text": f"  {task.params['answer'].upper()} "}))
            assert env.verify()
            return
    pytest.fail("no name question among the seeds")


@pytest.mark.parametrize(
    "call, fragment",
    [
        (ToolCall("lookup", {"entity": "x"}), "unknown tool 'lookup'; tools: search(query: string)"),
        (ToolCall("open", {}), "missing argument 'entity'"),
        (ToolCall("open", {"entity": "x", "depth": 2}), "unexpected argument 'depth'"),
        (ToolCall("open", {"name": "x"}), "unexpected argument 'name'"),
        (ToolCall("open", {"entity": 5}), "must be a string"),
        (ToolCall("answer", {"text": 42}), "must be a string"),
        (ToolCall("open", {"entity": "A" * 201}), "at most 200"),
        (ToolCall("search", {"query": "q" * 500}), "at most 200"),
        (ToolCall("open", "Tavon"), "must be a JSON object"),
        (ToolCall("open", {"entity": "Qqqq"}), "no entity named 'Qqqq'"),
        (ToolCall("search", {"query": "  ?! "}), "search needs words"),
        (ToolCall("calculate", {"expression": "age + 1"}), "name 'age'"),
        (ToolCall("calculate", {"expression": "2 ** 1000"}), "exponent"),
        (ToolCall("calculate", {"expression": "1 / 0"}), "division by zero"),
    ],
)
def test_bad_calls_are_error_observations(call, fragment):
    env = KBSearchEnv(KBSearchEnv.generate_task(0, 2))
    result = env.step(call)
    assert result.error and not result.done
    assert result.observation.startswith("Error: ") and fragment in result.observation
    # the episode goes on: the expert's calls still solve it
    assert run(env, KBSearchEnv.expert_solution(env.task))[-1].done and env.verify()


def test_unknown_entity_error_reveals_no_names():
    env = KBSearchEnv(KBSearchEnv.generate_task(0, 2))
    observation = env.step(ToolCall("open", {"entity": "Nobody"})).observation
    assert not any(name in observation for name in env.world)


def test_calls_after_the_answer_are_errors():
    task = KBSearchEnv.generate_task(1, 1)
    env = KBSearchEnv(task)
    run(env, KBSearchEnv.expert_solution(task))
    for call in (ToolCall("answer", {"text": "x"}), ToolCall("open", {"entity": "x"})):
        result = env.step(call)
        assert result.error and "episode is over" in result.observation
    assert env.verify()  # a late wrong answer does not overwrite the recorded one


def test_search_matches_names_types_and_facts():
    env = KBSearchEnv(KBSearchEnv.generate_task(5, 2))
    person = next(e for e in env.world.values() if e.kind == "person")
    assert env.step(ToolCall("search", {"query": person.name.lower()})).observation.startswith(
        f"Results: {person.name} (person)")
    persons = env.step(ToolCall("search", {"query": "person"})).observation
    assert persons.count("(person)") == min(5, sum(e.kind == "person" for e in env.world.values()))
    city = person.facts["birthplace"]
    hits = env.step(ToolCall("search", {"query": f"{city} city"})).observation
    assert hits.startswith(f"Results: {city} (city)")  # two words match; linked entities match one
    assert env.step(ToolCall("search", {"query": "zzzz"})).observation == "Results: none"


def test_open_ignores_case_and_shows_all_facts():
    env = KBSearchEnv(KBSearchEnv.generate_task(2, 1))
    entity = next(iter(env.world.values()))
    observation = env.step(ToolCall("open", {"entity": f" {entity.name.upper()} "})).observation
    assert observation.startswith(f"{entity.name}: type={entity.kind}; ")
    assert all(f"{k}={v}" in observation for k, v in entity.facts.items())


def test_calculate_answers_with_the_number():
    env = KBSearchEnv(KBSearchEnv.generate_task(2, 1))
    assert env.step(ToolCall("calculate", {"expression": "34 + 51"})).observation == "85"
    assert env.step(ToolCall("calculate", {"expression": "10 / 4"})).observation == "2.5"


def test_tasks_are_deterministic_in_the_seed():
    for difficulty in KBSearchEnv.difficulties:
        a, b = KBSearchEnv.generate_task(11, difficulty), KBSearchEnv.generate_task(11, difficulty)
        assert a == b and a.id == f"kbsearch-d{difficulty}-s11"
        assert a.params["seed"] == 11 and a.params["difficulty"] == difficulty == a.difficulty
        assert KBSearchEnv(a).world == KBSearchEnv(b).world
        assert KBSearchEnv.expert_solution(a) == KBSearchEnv.expert_solution(b)
    instructions = {KBSearchEnv.generate_task(s, 3).instruction for s in range(50)}
    assert len(instructions) > 45


def test_unknown_difficulty_is_rejected():
    with pytest.raises(ValueError, match="difficulty"):
        KBSearchEnv.generate_task(0, 5)


def test_a_task_survives_the_proposer_json_round_trip_with_the_same_answer():
    for seed in range(20):
        for difficulty in KBSearchEnv.difficulties:
            task = KBSearchEnv.generate_task(seed, difficulty)
            again = KBSearchEnv.task_from_json(KBSearchEnv.task_to_json(task))
            assert (again.instruction, again.params["answer"], again.difficulty) == \
                (task.instruction, task.params["answer"], task.difficulty)


@pytest.mark.parametrize("obj, why", [
    ({"world": 1, "question": "What is the age of Nobody?"}, "no entity named 'Nobody'"),
    ({"world": 1}, "a kbsearch task is"),
    ("What is the age of X?", "a kbsearch task is"),
    ({"world": "1", "question": "What is the age of X?"}, "a kbsearch task is"),
    ({"world": 1, "question": "Tell me the age"}, "a question reads"),
])
def test_malformed_proposals_are_rejected_with_the_reason(obj, why):
    with pytest.raises(BadQuestion, match=why):
        KBSearchEnv.task_from_json(obj)


def test_proposals_with_links_or_facts_the_entity_lacks_are_rejected():
    world, _, _ = build(3, 1)
    person = next(e.name for e in world.values() if e.kind == "person")
    city = next(e.name for e in world.values() if e.kind == "city")
    with pytest.raises(BadQuestion, match="a person has no link 'hq'"):
        KBSearchEnv.task_from_json({"world": 3, "question": f"What is the age of the hq of {person}?"})
    with pytest.raises(BadQuestion, match="a city has no number fact 'mayor'"):  # arithmetic needs numbers
        KBSearchEnv.task_from_json({"world": 3, "question": f"What is the mayor of {city} plus the age of {person}?"})
    task = KBSearchEnv.task_from_json({"world": 3, "question": f"What is the age of the mayor of {city.lower()}?"})
    mayor = world[city].facts["mayor"]
    assert task.params["answer"] == str(world[str(mayor)].facts["age"]) and task.difficulty == 2
    assert city in task.instruction  # the canonical spelling


def test_chain_variants_are_one_hop_fewer_same_and_one_more_in_the_same_world_and_solvable():
    rng = random.Random(0)
    single = [t for t in (KBSearchEnv.generate_task(s, 2) for s in range(30)) if "plus" not in t.instruction
              and "minus" not in t.instruction]
    for task in single:
        variants = chain_variants(task, rng)
        assert [v.difficulty for v in variants] == [1, 2, 3]
        assert all(v.params["seed"] == task.params["seed"] and feasible(v) for v in variants)
        start = task.instruction.rstrip("?").split(" of ")[-1]
        assert all(v.instruction.endswith(f" of {start}?") for v in variants)
