"""kbsearch: answer a multi-hop question over a small, procedurally generated knowledge base.

Each task's world is 8-12 made-up entities (persons, cities, companies), every one with a few
numbers and a few links, all drawn from `random.Random(seed)`. A question of difficulty d names one
entity and a chain of d-1 links to follow, then the fact to read ("What is the population of the
birthplace of Tavon?"), so the natural solution opens d entities. At d >= 2 about a third of the
questions combine the ends of two shorter chains with plus/minus, which needs `calculate`.
Questions use the link names exactly as `open` prints them, so a tiny model can match the two.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field

from rollout.calculator import format_number
from rollout.env import register_env
from rollout.tools import calculator_tool, dispatch, episode_over, error_result, made_up_names, string_argument
from rollout.types import StepResult, Task, ToolCall, ToolSpec

MAX_SEARCH_RESULTS = 5
ARITHMETIC_SHARE = 1 / 3  # of questions at difficulty >= 2
_WALK_TRIES = 200

# kind -> link name -> kind it points to; every entity has every link of its kind
LINKS = {
    "person": {"birthplace": "city", "employer": "company"},
    "city": {"mayor": "person"},
    "company": {"hq": "city", "ceo": "person"},
}
# kind -> number name -> inclusive range
# Numbers and names come from small fixed sets. A world is random (which names, which facts,
# which links), but a tiny policy learns to copy a name or a number from an observation only
# when it has seen each such token often; 800 names or 4-digit years would make that the
# bottleneck of learning instead of the multi-hop search the environment is about.
NUMBERS = {
    "person": {"age": (18, 80)},
    "city": {"population": (10, 99)},
    "company": {"offices": (10, 99), "employees": (10, 99)},
}
NAME_POOL = tuple(sorted(n.capitalize() for n in made_up_names(random.Random(0), 48)))


@dataclass
class Entity:
    name: str
    kind: str
    facts: dict[str, int | str] = field(default_factory=dict)  # in the order `open` shows them

    def describe(self) -> str:
        return f"{self.name}: type={self.kind}; " + "; ".join(f"{k}={v}" for k, v in self.facts.items())


@dataclass
class Chain:
    """`start` and the links followed from it, then `fact` read on the last entity reached."""

    start: str
    links: list[str]
    fact: str

    def phrase(self) -> str:
        words = [f"the {self.fact} of"] + [f"the {link} of" for link in reversed(self.links)]
        return " ".join(words + [self.start])


@dataclass
class Question:
    chains: list[Chain]  # one, or two combined by `op`
    op: str | None  # "plus" | "minus" | None

    def text(self) -> str:
        if self.op is None:
            return f"What is {self.chains[0].phrase()}?"
        return f"What is {self.chains[0].phrase()} {self.op} {self.chains[1].phrase()}?"


def build_world(rng: random.Random) -> dict[str, Entity]:
    """The entities of one world by name, in generation order (persons, cities, companies)."""
    counts = {"person": rng.randint(4, 6), "city": rng.randint(2, 3), "company": rng.randint(2, 3)}
    names = iter(rng.sample(NAME_POOL, sum(counts.values())))
    by_kind = {kind: [next(names) for _ in range(n)] for kind, n in counts.items()}
    world: dict[str, Entity] = {}
    for kind, members in by_kind.items():
        for name in members:
            facts: dict[str, int | str] = {}
            for number, (low, high) in NUMBERS[kind].items():
                facts[number] = rng.randint(low, high)
            for link, target_kind in LINKS[kind].items():
                facts[link] = rng.choice(by_kind[target_kind])
            world[name] = Entity(name, kind, facts)
    return world


def _walk(
    rng: random.Random, world: dict[str, Entity], opens: int, numeric: bool, avoid: set[str]
) -> Chain | None:
    """A chain that opens `opens` distinct entities outside `avoid`, ending on a number if `numeric`;
    None if random walks keep running into visited entities."""
    for _ in range(_WALK_TRIES):
        start = rng.choice([n for n in world if n not in avoid])
        path, links = [start], []
        while len(path) < opens:
            here = world[path[-1]]
            options = [link for link in LINKS[here.kind] if here.facts[link] not in path + list(avoid)]
            if not options:
                break
            link = rng.choice(options)
            links.append(link)
            path.append(str(here.facts[link]))
        if len(path) == opens:
            last = world[path[-1]]
            facts = list(NUMBERS[last.kind]) + ([] if numeric else list(LINKS[last.kind]))
            return Chain(start, links, rng.choice(facts))
    return None


def _follow(world: dict[str, Entity], chain: Chain) -> list[Entity]:
    """The entities the chain opens, in order."""
    path = [world[chain.start]]
    for link in chain.links:
        path.append(world[str(path[-1].facts[link])])
    return path


def build(seed: int, difficulty: int) -> tuple[dict[str, Entity], Question, str]:
    """The world, the question and its gold answer for (seed, difficulty); pure in its arguments."""
    rng = random.Random(seed)
    world = build_world(rng)
    if difficulty >= 2 and rng.random() < ARITHMETIC_SHARE:
        first = rng.randint(1, difficulty - 1)
        a = _walk(rng, world, first, numeric=True, avoid=set())
        seen = {e.name for e in _follow(world, a)} if a else set()
        b = a and _walk(rng, world, difficulty - first, numeric=True, avoid=seen)
        if a and b:  # else fall through to a single chain
            va, vb = (int(_follow(world, c)[-1].facts[c.fact]) for c in (a, b))
            op = rng.choice(["plus", "minus"])
            return world, Question([a, b], op), str(va + vb if op == "plus" else va - vb)
    chain = _walk(rng, world, difficulty, numeric=False, avoid=set())
    if chain is None:
        raise RuntimeError(f"kbsearch seed {seed}: no {difficulty}-hop chain in this world")
    return world, Question([chain], None), str(_follow(world, chain)[-1].facts[chain.fact])


class BadQuestion(ValueError):
    """A question text that does not name a valid chain in its world."""


def parse_question(world: dict[str, Entity], text: str) -> tuple[Question, str]:
    """The question a text asks in `world` ("What is the age of the ceo of Acme?", or two such
    phrases joined by plus/minus) and its gold answer; BadQuestion says what does not fit."""
    body = text.strip()
    if not (body.startswith("What is ") and body.endswith("?")):
        raise BadQuestion("a question reads 'What is the <fact> of ... <entity>?'")
    body = body[len("What is "):-1]
    op = next((o for o in ("plus", "minus") if f" {o} " in body), None)
    phrases = body.split(f" {op} ") if op else [body]
    if len(phrases) > 2:
        raise BadQuestion("at most two phrases joined by one plus or minus")
    by_name = {name.lower(): entity for name, entity in world.items()}
    chains, values = [], []
    for phrase in phrases:
        parts = phrase.split(" of ")
        if len(parts) < 2 or not all(p.startswith("the ") for p in parts[:-1]):
            raise BadQuestion(f"{phrase!r} is not 'the <fact> of ... <entity>'")
        entity = by_name.get(parts[-1].strip().lower())
        if entity is None:
            raise BadQuestion(f"no entity named {parts[-1].strip()!r} in this world")
        words = [p[len("the "):] for p in parts[:-1]]
        chain = Chain(entity.name, list(reversed(words[1:])), words[0])
        here = entity
        for link in chain.links:
            if link not in LINKS[here.kind]:
                raise BadQuestion(f"a {here.kind} has no link {link!r} (links: {sorted(LINKS[here.kind])})")
            here = world[str(here.facts[link])]
        allowed = list(NUMBERS[here.kind]) + ([] if op else list(LINKS[here.kind]))
        if chain.fact not in allowed:
            raise BadQuestion(f"a {here.kind} has no {'number ' if op else ''}fact {chain.fact!r} (allowed: {allowed})")
        chains.append(chain)
        values.append(here.facts[chain.fact])
    if op is None:
        return Question(chains, None), str(values[0])
    a, b = (int(v) for v in values)
    return Question(chains, op), str(a + b if op == "plus" else a - b)


def opens(question: Question) -> int:
    """Entities a solution opens: the question's difficulty."""
    return sum(len(c.links) + 1 for c in question.chains)


def load(params: dict) -> tuple[dict[str, Entity], Question, str]:
    """World, question and gold answer of a task: generated from (seed, difficulty), or, for a
    proposed task, the question text in `params["question"]` asked in the seed's world."""
    if "question" not in params:
        return build(params["seed"], params["difficulty"])
    world = build_world(random.Random(params["seed"]))  # build() draws the world first: the same one
    question, gold = parse_question(world, params["question"])
    return world, question, gold


def chain_variants(task: Task, rng: random.Random) -> list[Task]:
    """Same-world variants of a single-chain task, each derived from its question alone: one hop
    fewer (the last link becomes the fact), another fact of the same entity, and one hop more."""
    world, question, _ = load(task.params)
    if question.op is not None:
        return []
    chain = question.chains[0]
    end = _follow(world, chain)[-1]
    candidates = []
    if chain.links:
        candidates.append(Chain(chain.start, chain.links[:-1], chain.links[-1]))
    others = [f for f in (*NUMBERS[end.kind], *LINKS[end.kind]) if f != chain.fact]
    candidates.append(Chain(chain.start, chain.links, rng.choice(others)))
    link = rng.choice(sorted(LINKS[end.kind]))
    target = world[str(end.facts[link])]
    candidates.append(Chain(chain.start, [*chain.links, link], rng.choice([*NUMBERS[target.kind],
                                                                           *LINKS[target.kind]])))
    out = []
    for variant in candidates:
        text = Question([variant], None).text()
        if 1 <= len(variant.links) + 1 <= max(KBSearchEnv.difficulties):
            out.append(KBSearchEnv.task_from_json({"world": task.params["seed"], "question": text}))
    return out


def _normalise(text: str) -> str:
    text = text.strip().lower().rstrip(".")
    try:
        return format_number(float(text.replace(",", "")))
    except ValueError:
        return text


@register_env("kbsearch")
class KBSearchEnv:
    """Look facts up with `search`/`open`, combine them with `calculate`, end with `answer`."""

    tools = [
        ToolSpec("search", "Find entities matching words.", string_argument("query")),
        ToolSpec("open", "Show an entity's facts.", string_argument("entity")),
        ToolSpec("calculate", "Evaluate arithmetic.", string_argument("expression")),
        ToolSpec("answer", "Give the final answer.", string_argument("text")),
    ]
    difficulties = (1, 2, 3, 4)
    reset_shows_instruction = True  # reset() begins with the task's instruction

    def __init__(self, task: Task) -> None:
        self.task = task
        self.world, self.question, self.gold = load(task.params)
        self.answer: str | None = None
        self.done = False

    @staticmethod
    def generate_task(seed: int, difficulty: int) -> Task:
        if difficulty not in KBSearchEnv.difficulties:
            raise ValueError(f"kbsearch difficulty must be in {KBSearchEnv.difficulties}, got {difficulty}")
        _, question, gold = build(seed, difficulty)
        return Task(id=f"kbsearch-d{difficulty}-s{seed}", env="kbsearch", instruction=question.text(),
                    params={"seed": seed, "difficulty": difficulty, "answer": gold}, difficulty=difficulty)

    # Same-world variants derivable from a task's JSON alone: the pairs the tiny task writer learns from.
    task_variants = staticmethod(chain_variants)

    @staticmethod
    def task_to_json(task: Task, parent: Task | None = None) -> dict:
        """A task as an LLM proposer reads and writes it (curricula/proposer.py): its world and question;
        relative to `parent`, the world is left out where it is the parent's (a proposal inherits it)."""
        if parent is not None and parent.params["seed"] == task.params["seed"]:
            return {"question": task.instruction}
        return {"world": task.params["seed"], "question": task.instruction}

    @staticmethod
    def task_from_json(obj: dict, parent: Task | None = None) -> Task:
        """A proposed task, checked against its world (the parent's unless it names one); ValueError
        (BadQuestion) says what is wrong."""
        if isinstance(obj, dict) and "world" not in obj and parent is not None:
            obj = {"world": parent.params["seed"], **obj}
        if not (isinstance(obj, dict) and isinstance(obj.get("world"), int) and isinstance(obj.get("question"), str)):
            raise BadQuestion('a kbsearch task is {"world": <int>, "question": "What is ...?"}')
        world = build_world(random.Random(obj["world"]))
        question, gold = parse_question(world, obj["question"])
        difficulty = opens(question)
        if difficulty not in KBSearchEnv.difficulties:
            raise BadQuestion(f"the question opens {difficulty} entities; difficulties are {KBSearchEnv.difficulties}")
        text = question.text()  # canonical spelling of names
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        return Task(id=f"kbsearch-d{difficulty}-s{obj['world']}-q{digest}", env="kbsearch", instruction=text,
                    params={"seed": obj["world"], "difficulty": difficulty, "question": text, "answer": gold},
                    difficulty=difficulty)

    @staticmethod
    def expert_solution(task: Task) -> list[ToolCall]:
        world, question, gold = load(task.params)
        calls = [ToolCall("open", {"entity": e.name}) for c in question.chains for e in _follow(world, c)]
        if question.op is not None:
            a, b = (_follow(world, c)[-1].facts[c.fact] for c in question.chains)
            sign = "+" if question.op == "plus" else "-"
            calls.append(ToolCall("calculate", {"expression": f"{a} {sign} {b}"}))
        return calls + [ToolCall("answer", {"text": gold})]

    def reset(self) -> str:
        return self.task.instruction

    def step(self, call: ToolCall) -> StepResult:
        if self.done:
            return episode_over()
        return dispatch(call, self.tools, {"search": self._search, "open": self._open,
                                           "calculate": calculator_tool, "answer": self._answer})

    def verify(self) -> bool:
        return self.answer is not None and _normalise(self.answer) == _normalise(self.gold)

    def close(self) -> None:
        pass

    def _search(self, query: str) -> StepResult:
        words = set(re.findall(r"[a-z0-9]+", query.lower()))
        if not words:
            return error_result("search needs words, e.g. search(query: 'person Tavon')")
        scored = []
        for order, entity in enumerate(self.world.values()):
            text = {entity.name.lower(), entity.kind}
            text |= {k for k in entity.facts} | {str(v).lower() for v in entity.facts.values()}
            score = len(words & text)
            if score:
                scored.append((-score, order, entity))
        hits = [f"{e.name} ({e.kind})" for _, _, e in sorted(scored)[:MAX_SEARCH_RESULTS]]
        return StepResult("Results: " + (", ".join(hits) if hits else "none"))

    def _open(self, entity: str) -> StepResult:
        found = next((e for e in self.world.values() if e.name.lower() == entity.strip().lower()), None)
        if found is None:
            return error_result(f"no entity named {entity.strip()[:40]!r}; use search to find names")
        return StepResult(found.describe())

    def _answer(self, text: str) -> StepResult:
        self.answer = text
        self.done = True
        return StepResult("Answer recorded.", done=True)
