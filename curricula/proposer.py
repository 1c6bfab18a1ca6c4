"""The LLM task proposer: failed tasks go into a prompt as examples, new tasks come back as JSON.

The model is any completion client (rollout/completion.py): an OpenAI-compatible endpoint or a
local engine, e.g. the tiny task writer that `turnrl proposer train` makes. An environment takes
part by giving its tasks a JSON form: `task_to_json(task, parent=None) -> dict` and
`task_from_json(obj, parent=None) -> Task`, which raises ValueError when the task does not fit the
environment (kbsearch: the world's seed and a question over it; a proposal that names no world is
asked in its parent's, the failed task shown first in the prompt). Every answer that is not such
a task is counted by its reason and skipped: `empty`, `no_json` (no JSON object in it), `bad_json`
(one that does not parse),
`invalid_task` (the environment rejects it), `error` (the call failed or timed out). The tasks
that remain go through the same filters as procedural ones (curricula/generate.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from jinja2.sandbox import SandboxedEnvironment

from curricula.pool import PoolTask
from rollout.completion import CompletionClient
from rollout.envs import get_env
from rollout.types import Task

log = logging.getLogger(__name__)

# One failed task in, one new task out: short enough for the tiny writer's context, and what it
# was trained on. A stronger model may get several examples (`examples`) and a custom template.
DEFAULT_PROMPT = """Write a new task for the {{ env }} environment, close to these tasks that the agent failed.
{% for example in examples %}Failed: {{ example }}
{% endfor %}New:"""


@dataclass
class ProposerSettings:
    base_url: str = ""  # an OpenAI-compatible endpoint serving `model`; "": a local engine on `model_path`
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    model_path: str = ""  # the local model; "": ${cache_dir}/models/tiny-task-writer (`turnrl proposer train`)
    engine: str = "hf"  # the local engine: hf | vllm
    prompt: str = ""  # a Jinja template file (env, examples: the failed tasks' JSON); "": the built-in one
    examples: int = 1  # failed tasks shown per prompt
    samples: int = 2  # new tasks asked per prompt
    temperature: float = 1.0
    max_tokens: int = 96
    timeout_s: float = 120.0
    # `turnrl proposer train`: the tiny task writer, trained from the policy (model.path) on pairs (failed
    # task -> variant) made by the environment's own generator.
    writer_pairs: int = 6000
    writer_epochs: int = 4
    writer_lr: float = 2e-3
    writer_batch_size: int = 32


class MalformedProposal(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_proposal(text: str) -> dict:
    """The first JSON object in a model's answer; MalformedProposal(empty | no_json | bad_json)."""
    if not text or not text.strip():
        raise MalformedProposal("empty")
    start = text.find("{")
    if start < 0:
        raise MalformedProposal("no_json")
    try:
        obj, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError:
        raise MalformedProposal("bad_json") from None
    return obj


def task_json(task: Task) -> str:
    """A task as the proposer's prompt shows it."""
    return json.dumps(get_env(task.env).task_to_json(task))


class LLMProposer:
    def __init__(self, client: CompletionClient, settings: ProposerSettings) -> None:
        self.client, self.s = client, settings
        template = Path(settings.prompt).read_text() if settings.prompt else DEFAULT_PROMPT
        self.template = SandboxedEnvironment(autoescape=False).from_string(template)

    def render(self, env_name: str, parents: list[Task]) -> str:
        return self.template.render(env=env_name, examples=[task_json(t) for t in parents])

    async def propose(self, parents: list[PoolTask], step: int) -> tuple[list[PoolTask], Counter]:
        """New tasks from the failed `parents` (each prompt shows `examples` of them; the new tasks'
        parent is the prompt's first), and the count of answers skipped, by reason."""
        counts: Counter = Counter()
        chunks = [parents[i:i + self.s.examples] for i in range(0, len(parents), self.s.examples)]
        answers = await asyncio.gather(*(self._ask(chunk) for chunk in chunks))
        out = []
        for chunk, texts in zip(chunks, answers, strict=True):
            if texts is None:
                counts["error"] += self.s.samples
                continue
            parent = chunk[0]
            env_cls = get_env(parent.task.env)
            for text in texts:
                try:
                    task = env_cls.task_from_json(parse_proposal(text), parent.task)
                except MalformedProposal as err:
                    counts[err.reason] += 1
                    continue
                except (ValueError, TypeError, KeyError) as err:
                    log.debug("proposal rejected by %s: %s (%r)", parent.task.env, err, text[:200])
                    counts["invalid_task"] += 1
                    continue
                task = replace(task, id=f"{task.id}-llm-from-{parent.task.id}", parent_id=parent.task.id,
                               origin="llm")
                out.append(PoolTask(task, generation_step=step, depth=parent.depth + 1))
        return out, counts

    async def _ask(self, chunk: list[PoolTask]) -> list[str] | None:
        prompt = self.render(chunk[0].task.env, [p.task for p in chunk])
        try:
            async with asyncio.timeout(self.s.timeout_s):
                return await self.client.complete(prompt, self.s.samples, self.s.temperature, self.s.max_tokens)
        except Exception as err:  # a broken proposer costs its proposals, not the run
            log.warning("task proposer call failed: %r", err)
            return None
