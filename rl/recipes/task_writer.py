"""`turnrl proposer train`: make the tiny task writer that serves as the LLM task proposer on CPU.

Training pairs come from the environment's own generator: a task the writer sees as a failed
example (the proposer's prompt, curricula/proposer.py) and one of its variants as the answer, in
the JSON form the proposer parses (`task_to_json`). Variants come from the environment's
`task_variants(task, rng)`, which makes only variants that can be derived from the task's JSON
(kbsearch: one hop fewer, another fact, one hop more, in the same world), so a small model can
learn the mapping. The loss is on the answer's tokens only. The writer starts from the policy
(`model.path`, the SFT model): it has already learned to copy names out of a question, which a
randomly initialised tiny model does not learn from these pairs (3.5% valid tasks after 752 steps,
nearly all failures a made-up entity name). Plain AdamW in this process (the model is a few MB).
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from curricula.generate import feasible
from curricula.pool import PoolTask
from curricula.proposer import LLMProposer, ProposerSettings
from rl.algo.packing import pad_rows
from rl.recipes.sft import save_model, sft_step
from rollout.completion import chat_prompt_ids
from rollout.envs import get_env
from rollout.types import Task

log = logging.getLogger(__name__)


@dataclass
class WriterExample:
    prompt_ids: list[int]
    answer_ids: list[int]  # the variant's JSON, then end-of-sequence


def writer_pairs(env_name: str, num: int, difficulties: list[int], seed_limit: int,
                 seed: int) -> list[tuple[Task, Task]]:
    """`num` (failed task, variant) pairs from the environment's generator and `task_variants`."""
    env_cls = get_env(env_name)
    if not hasattr(env_cls, "task_variants"):
        raise ValueError(f"environment {env_name!r} has no task_variants(task, rng) to make task-writer pairs from")
    rng = random.Random(seed)
    pairs: list[tuple[Task, Task]] = []
    while len(pairs) < num:
        parent = env_cls.generate_task(rng.randrange(seed_limit), rng.choice(difficulties))
        pairs += [(parent, variant) for variant in env_cls.task_variants(parent, rng)]
    rng.shuffle(pairs)
    return pairs[:num]


def encode(tokenizer, proposer: LLMProposer, parent: Task, variant: Task) -> WriterExample:
    """The pair laid out as the proposer's engine client will see it: chat prompt, then the answer."""
    prompt = proposer.render(parent.env, [parent])
    answer = json.dumps(get_env(variant.env).task_to_json(variant, parent))  # what it inherits is left out
    return WriterExample(chat_prompt_ids(tokenizer, prompt),
                         tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id])


def _batch(examples: list[WriterExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, loss_mask): the loss on the answer only."""
    return pad_rows([e.prompt_ids + e.answer_ids for e in examples], pad_id,
                    [[0.0] * len(e.prompt_ids) + [1.0] * len(e.answer_ids) for e in examples])


def train_writer(base_path: str, out_dir: str, env_name: str, difficulties: list[int], seed_limit: int,
                 settings: ProposerSettings, seed: int) -> dict[str, float]:
    """Train the task writer from `base_path` and save it (HF format) to `out_dir`; returns metrics."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    proposer = LLMProposer(client=None, settings=settings)
    pairs = writer_pairs(env_name, settings.writer_pairs, difficulties, seed_limit, seed)
    examples = [encode(tokenizer, proposer, parent, variant) for parent, variant in pairs]
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.writer_lr, weight_decay=0.0)
    steps = settings.writer_epochs * -(-len(examples) // settings.writer_batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0 - i / max(steps, 1))
    rng = random.Random(seed)
    model.train()
    loss = torch.tensor(float("nan"))
    with tqdm(total=steps, desc="task writer", unit="step") as bar:
        for _ in range(settings.writer_epochs):
            rng.shuffle(examples)
            for i in range(0, len(examples), settings.writer_batch_size):
                ids, attn, mask = _batch(examples[i:i + settings.writer_batch_size], tokenizer.pad_token_id)
                loss = sft_step(model, model, optimizer, schedule, ids, attn, mask)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update()
    save_model(model, tokenizer, Path(out_dir))
    log.info("task writer: %d pairs, %d steps, final loss %.4f -> %s", len(examples), steps, loss.item(), out_dir)
    return {"pairs": float(len(examples)), "steps": float(steps), "final_loss": float(loss.item())}


async def eval_proposer(proposer: LLMProposer, env_name: str, difficulties: list[int], num_parents: int,
                        seed_limit: int, seed: int) -> dict[str, float]:
    """Ask the proposer for tasks from `num_parents` fresh generator tasks (standing in for failed
    ones): the share of answers that are tasks, feasible ones, and how their difficulty relates to
    the parent's."""
    env_cls = get_env(env_name)
    rng = random.Random(seed)
    parents = [PoolTask(env_cls.generate_task(rng.randrange(seed_limit), rng.choice(difficulties)), 0, 0)
               for _ in range(num_parents)]
    proposed, skipped = await proposer.propose(parents, step=0)
    by_id = {p.task.id: p.task for p in parents}
    asked = len(proposed) + sum(skipped.values())
    relation = Counter()
    for p in proposed:
        delta = p.task.difficulty - by_id[p.task.parent_id].difficulty
        relation["easier" if delta < 0 else "same" if delta == 0 else "harder"] += 1
    ok = [p for p in proposed if feasible(p.task)]
    return {"answers": float(asked), "task_share": len(proposed) / asked, "feasible_share": len(ok) / asked,
            "distinct_share": len({p.task.instruction for p in ok}) / asked,
            **{f"skipped_{k}_share": v / asked for k, v in skipped.items()},
            **{f"{k}_share": v / max(len(proposed), 1) for k, v in relation.items()}}
