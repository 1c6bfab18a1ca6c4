"""Synthetic pretraining: generic skills a pretrained LLM brings, given to the tiny model before any
task (`turnrl model init` with `model.pretrain.episodes > 0`).

Procedural episodes in the chat format, over random worlds of records: each episode has its own
tool schema (tool and argument names drawn from generic pools, some tools never used) and a
question that names a record and a chain of links to follow. The expert looks each record up,
follows the link by copying the linked name out of the record it just read, and answers with a
value copied from the context. So the model practises the tool-call syntax over tools it has not
seen, copying names and numbers from earlier in the context, and following an entity across
turns. None of it is an environment's task or solution: worlds, kinds, fields and tools come from
generic pools, and a question equal to an instruction in `exclude` (the held-out tasks) is never
produced.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rl.config import PretrainConfig
from rl.recipes.sft import Ranks, train_stage
from rollout.chat import ChatFormat, format_tool_call
from rollout.tools import made_up_names, string_argument
from rollout.types import FinishReason, ToolCall, ToolSpec, Trajectory, Turn

KINDS = ("person", "city", "company", "planet", "ship", "team", "river", "school", "book", "farm")
NUMBER_FIELDS = ("age", "population", "offices", "employees", "size", "weight", "height", "score", "price",
                 "rank", "count", "speed", "depth", "length")
LINK_FIELDS = ("birthplace", "employer", "mayor", "hq", "ceo", "owner", "leader", "home", "maker", "partner",
               "rival", "captain")
LOOKUP_TOOLS = ("open", "lookup", "get", "fetch", "read", "show", "inspect", "view")
LOOKUP_ARGS = ("entity", "name", "key", "id", "record", "item")
ANSWER_TOOLS = ("answer", "reply", "submit", "respond", "finish")
ANSWER_ARGS = ("text", "value", "answer", "result")
OTHER_TOOLS = ("search", "calculate", "list", "count", "sort", "note")  # shown, never needed
QUESTIONS = ("What is {}?", "Find {}.", "Tell me {}.", "Look up {}.")
NAME_POOL_SIZE = 300


@dataclass
class SyntheticEpisode:
    """One pretraining episode: its tools, the question, the expert's calls and the observations."""

    tools: list[ToolSpec]
    question: str
    calls: list[ToolCall]
    observations: list[str]  # one per call but the last (the answer ends the episode)
    answer: str


def _record_text(name: str, kind: str, facts: dict[str, str], style: int) -> str:
    if style == 0:
        return f"{name}: type={kind}; " + "; ".join(f"{k}={v}" for k, v in facts.items())
    return f"{name} ({kind}) | " + " | ".join(f"{k}: {v}" for k, v in facts.items())


def synthetic_episode(rng: random.Random, names: list[str], exclude: frozenset[str] = frozenset()
                      ) -> SyntheticEpisode:
    """A random world of 3-8 records and a 1-3 hop question about it, solved by the expert."""
    while True:
        world_names = rng.sample(names, rng.randint(3, 8))
        links = rng.sample(LINK_FIELDS, 3)
        numbers = rng.sample(NUMBER_FIELDS, 3)
        records: dict[str, tuple[str, dict[str, str]]] = {}
        for name in world_names:
            facts = {f: str(rng.randint(10, 99)) for f in rng.sample(numbers, rng.randint(1, 3))}
            others = [n for n in world_names if n != name]
            for link in rng.sample(links, rng.randint(1, 2)):
                facts[link] = rng.choice(others)
            items = list(facts.items())
            rng.shuffle(items)
            records[name] = (rng.choice(KINDS), dict(items))
        hops = rng.randint(0, 2)
        path, current = [], rng.choice(world_names)
        start = current
        for _ in range(hops):  # follow links the records actually have
            kind, facts = records[current]
            options = [k for k in facts if k in LINK_FIELDS]
            if not options:
                break
            link = rng.choice(options)
            path.append(link)
            current = facts[link]
        final_facts = records[current][1]
        field = rng.choice([k for k in final_facts if k not in LINK_FIELDS] or list(final_facts))
        phrase = " ".join([f"the {field} of"] + [f"the {link} of" for link in reversed(path)] + [start])
        question = rng.choice(QUESTIONS).format(phrase)
        if question not in exclude:
            break
    lookup, arg = rng.choice(LOOKUP_TOOLS), rng.choice(LOOKUP_ARGS)
    answer_tool, answer_arg = rng.choice(ANSWER_TOOLS), rng.choice(ANSWER_ARGS)
    tools = [ToolSpec(lookup, "Show a record's facts.", string_argument(arg)),
             ToolSpec(answer_tool, "Give the final answer.", string_argument(answer_arg))]
    tools += [ToolSpec(t, f"The {t} tool.", string_argument(rng.choice(LOOKUP_ARGS)))
              for t in rng.sample(OTHER_TOOLS, rng.randint(0, 2))]
    rng.shuffle(tools)
    style = rng.randint(0, 1)
    calls, observations, current = [], [], start
    for link in [*path, None]:
        calls.append(ToolCall(lookup, {arg: current}))
        kind, facts = records[current]
        observations.append(_record_text(current, kind, facts, style))
        if link is not None:
            current = facts[link]
    answer = records[current][1][field]
    calls.append(ToolCall(answer_tool, {answer_arg: answer}))
    return SyntheticEpisode(tools, question, calls, observations, answer)


def synthetic_episodes(num: int, seed: int, exclude: frozenset[str] = frozenset()) -> list[SyntheticEpisode]:
    """`num` episodes, the same for the same seed; names are made up, capitalised, from a fixed pool."""
    rng = random.Random(seed)
    names = [n.capitalize() for n in made_up_names(random.Random(seed + 1), NAME_POOL_SIZE)]
    return [synthetic_episode(rng, names, exclude) for _ in range(num)]


def episode_trajectory(tokenizer, episode: SyntheticEpisode) -> Trajectory:
    """The episode laid out token for token as the agent loop lays out an episode (assistant turns
    end with eos; observations as tool turns), the loss on the expert's turns."""
    chat = ChatFormat(tokenizer, episode.tools)
    ids = chat.prompt_ids(episode.question)
    prompt_length = len(ids)
    turns = []
    for i, call in enumerate(episode.calls):
        start = len(ids)
        ids = ids + chat.encode(format_tool_call(call)) + [chat.eos_id]
        turn = Turn(action_start=start, action_end=len(ids), observation_end=len(ids))
        if i < len(episode.observations):
            ids = ids + chat.observation_ids(episode.observations[i])
            turn.observation_end = len(ids)
        turns.append(turn)
    mask = [0] * len(ids)
    for turn in turns:
        mask[turn.action_start:turn.action_end] = [1] * (turn.action_end - turn.action_start)
    return Trajectory(task_id="synthetic", group_id="synthetic", token_ids=ids, loss_mask=mask,
                      logprobs=[0.0] * len(ids), versions=[-1] * len(ids), prompt_length=prompt_length, turns=turns,
                      finish_reason=FinishReason.DONE, success=True)


def pretrain(model, tokenizer, settings: PretrainConfig, seed: int, exclude: frozenset[str] = frozenset()) -> float:
    """Train `model` in place on `settings.episodes` synthetic episodes (warm-up, then linear decay),
    none asking a question in `exclude` (the held-out instructions); returns the last batch's loss."""
    s = settings
    episodes = [episode_trajectory(tokenizer, e) for e in synthetic_episodes(s.episodes, seed, exclude)]
    loss = train_stage(model, episodes, tokenizer.pad_token_id, s.epochs, s.lr, s.batch_size, random.Random(seed),
                       None, True, "pretrain (synthetic)", Ranks())
    return float(loss.item())
