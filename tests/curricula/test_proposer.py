"""Tests for curricula/proposer.py: every kind of bad proposer answer is counted and skipped, good
ones become tasks with their lineage, and the curriculum adds them to its pool through the filters."""

from __future__ import annotations

import asyncio
import json

import pytest

from curricula.curriculum import Curriculum, CurriculumSettings
from curricula.pool import PoolTask, TaskPool
from curricula.proposer import LLMProposer, MalformedProposal, ProposerSettings, parse_proposal
from rollout.envs import get_env
from rollout.envs.kbsearch import build

KB = get_env("kbsearch")


class ScriptedClient:
    """Answers every prompt with the next scripted answers; records the prompts."""

    def __init__(self, answers: list[str] | Exception, delay_s: float = 0.0) -> None:
        self.answers, self.delay_s, self.prompts = answers, delay_s, []

    async def complete(self, prompt: str, n: int, temperature: float, max_tokens: int) -> list[str]:
        self.prompts.append(prompt)
        await asyncio.sleep(self.delay_s)
        if isinstance(self.answers, Exception):
            raise self.answers
        out, self.answers = self.answers[:n], self.answers[n:]
        return out


def person_of(seed: int) -> str:
    world, _, _ = build(seed, 1)
    return next(e.name for e in world.values() if e.kind == "person")


@pytest.mark.parametrize("text, reason", [("", "empty"), ("   \n", "empty"), ("a new task: none", "no_json"),
                                          ('{"question": "What is', "bad_json"), ("{'single': 'quotes'}", "bad_json")])
def test_parse_proposal_names_what_is_wrong(text, reason):
    with pytest.raises(MalformedProposal) as err:
        parse_proposal(text)
    assert err.value.reason == reason


def test_parse_proposal_takes_the_first_json_object_amid_other_text():
    assert parse_proposal('Sure! {"question": "What is the age of X?"} and {"other": 1}') == \
        {"question": "What is the age of X?"}


def test_bad_answers_are_counted_by_reason_and_good_ones_become_children_of_the_failed_task():
    parent = PoolTask(KB.generate_task(11, 2), generation_step=0, depth=1)
    name = person_of(11)
    good = json.dumps({"question": f"What is the age of {name}?"})  # no world: the parent's
    other_world = json.dumps({"world": 12, "question": f"What is the age of {person_of(12)}?"})
    answers = [good, "", "no json here", '{"question": ', json.dumps({"question": "What is the age of Nobody?"}),
               json.dumps({"world": "eleven", "question": "What is the age of X?"}), other_world]
    proposer = LLMProposer(ScriptedClient(answers), ProposerSettings(samples=len(answers)))
    tasks, skipped = asyncio.run(proposer.propose([parent], step=7))
    assert skipped == {"empty": 1, "no_json": 1, "bad_json": 1, "invalid_task": 2}
    assert [t.task.params["seed"] for t in tasks] == [11, 12]
    for t in tasks:
        assert t.task.parent_id == parent.task.id and t.task.origin == "llm"
        assert (t.generation_step, t.depth) == (7, 2) and t.task.difficulty == 1
    assert tasks[0].task.params["answer"] == str(build(11, 1)[0][name].facts["age"])
    # The prompt shows the failed task in the same JSON form.
    assert json.dumps(KB.task_to_json(parent.task)) in proposer.client.prompts[0]


def test_a_failing_or_hanging_proposer_costs_its_proposals_not_the_run():
    parents = [PoolTask(KB.generate_task(s, 2), 0, 0) for s in (1, 2)]
    broken = LLMProposer(ScriptedClient(ConnectionError("refused")), ProposerSettings(samples=3))
    assert asyncio.run(broken.propose(parents, step=1)) == ([], {"error": 6})
    slow = LLMProposer(ScriptedClient(["{}"] * 9, delay_s=5.0), ProposerSettings(samples=3, timeout_s=0.01))
    assert asyncio.run(slow.propose(parents, step=1)) == ([], {"error": 6})


def test_several_failed_tasks_per_prompt_with_a_custom_template(tmp_path):
    template = tmp_path / "prompt.j2"
    template.write_text("{{ env }}: {% for e in examples %}[{{ e }}]{% endfor %}")
    parents = [PoolTask(KB.generate_task(s, 2), 0, 0) for s in (1, 2, 3)]
    client = ScriptedClient(["{}"] * 4)
    asyncio.run(LLMProposer(client, ProposerSettings(prompt=str(template), examples=2, samples=2))
                .propose(parents, step=1))
    assert len(client.prompts) == 2 and client.prompts[0].startswith("kbsearch: [") and \
        client.prompts[0].count("[") == 2 and client.prompts[1].count("[") == 1


def test_curriculum_adds_proposed_tasks_through_the_filters_with_their_lineage(tmp_path):
    settings = CurriculumSettings(initial_tasks=4, generate_every=1, generators=["llm"])
    pool = TaskPool(tmp_path / "tasks.sqlite")
    seeds = [21, 22, 23, 24]
    pool.add([PoolTask(KB.generate_task(s, 2), 0, 0) for s in seeds])
    answers = [json.dumps({"question": f"What is the age of {person_of(s)}?"}) for s in seeds for _ in range(2)]
    curriculum = Curriculum(pool, settings, seed=0, seed_limit=10**6, proposer=LLMProposer(ScriptedClient(answers),
                                                                         ProposerSettings(samples=2)))
    outcomes = [(t.task.id, False) for t in pool.all()]
    metrics = asyncio.run(curriculum.after_step(outcomes, step=1))
    # Each failed task got the same question twice: one is accepted, its repeat is a duplicate.
    assert metrics["curriculum/proposed"] == 8 and metrics["curriculum/accepted"] == 4
    assert metrics["curriculum/rejected_duplicate"] == 4 and len(pool) == 8
    for child in (t for t in pool.all() if t.task.origin == "llm"):
        lineage = pool.lineage(child.task.id)
        assert [p.depth for p in lineage] == [0, 1] and lineage[0].task.params["seed"] == child.task.params["seed"]
