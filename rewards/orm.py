"""The outcome-supervised reward model (ORM): what it reads, how it scores, how it is judged.

The ORM is a causal LM with a scalar head on the last token (`AutoModelForSequenceClassification`
with one label), trained with binary cross-entropy against the verifier's outcome (`rl/recipes/orm.py`,
`turnrl orm train`). A scalar head rather than a generative YES/NO: one forward pass gives a
calibrated P(success) (AUC and calibration come straight from it), and it needs no prompt format
the small policy-sized model would have to learn; it is served by batching forward passes.

Inputs (`orm.input`): `webrl`, WebRL's format (the instruction, the history of actions, the
final observation the agent saw and the environment's answer to its last action), or `full`, the
whole trajectory text with that answer appended. Texts are cut from the left so the end of the
episode (the answer and what the environment said to it) always fits.
"""

from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path

import torch

from rewards.base import GroupRewards
from rollout.store import trajectory_record
from rollout.types import Task, Trajectory

log = logging.getLogger(__name__)

ORM_INPUTS = ("webrl", "full")


def orm_text(record: dict, input_format: str) -> str:
    """The ORM's input for one stored trajectory record (`rollout.store.trajectory_record`)."""
    # What the environment answered to the episode's last action (WebRL's final page: a game's "you
    # take the coin"), which the agent never saw; stores written before it was recorded lack it.
    answer = record.get("final_observation", "").strip()
    answer_line = f"Answer to the last action: {answer}\n" if answer else ""
    if input_format == "full":
        return record["text"] + ("\n" + answer_line if answer else "")
    if input_format != "webrl":
        raise ValueError(f"ORM input format {input_format!r} must be one of {ORM_INPUTS}")
    actions = "\n".join(f"{i + 1}. {t['action'].strip()}" for i, t in enumerate(record["turns"]))
    # The last thing the environment showed the agent: the turn that ends an episode adds no
    # observation to the context (its record has ""), so that is the one before it.
    final = next((t["observation"].strip() for t in reversed(record["turns"]) if t["observation"].strip()), "")
    return (f"Task: {record['task']['instruction']}\nActions:\n{actions}\nFinal observation: {final}\n"
            f"{answer_line}Success?")


class OrmScorer:
    """P(success) for texts, from a saved ORM; concurrent calls are batched into one forward pass."""

    def __init__(self, path: str | Path, max_length: int = 1024, batch_size: int = 32) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.truncation_side = "left"
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
        self.max_length = max_length
        self.batch_size = batch_size
        self._lock = asyncio.Lock()

    @torch.no_grad()
    def probabilities(self, texts: list[str]) -> list[float]:
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                 truncation=True, max_length=self.max_length)
            logits = self.model(**enc).logits.squeeze(-1)
            out += torch.sigmoid(logits.float()).tolist()
        return out

    async def score(self, texts: list[str]) -> list[float]:
        async with self._lock:  # one forward at a time; the event loop stays free meanwhile
            return await asyncio.to_thread(self.probabilities, texts)


class OrmReward:
    """The ORM's judgement as the outcome reward: 1/0 at `threshold` (WebRL), or P(success) when
    `threshold` is None. Reports the ORM's agreement with the verifier when that is known."""

    def __init__(self, scorer: OrmScorer, tokenizer, input_format: str = "webrl",
                 threshold: float | None = 0.5) -> None:
        self.scorer = scorer
        self.tokenizer = tokenizer
        self.input_format = input_format
        self.threshold = threshold

    async def __call__(self, task: Task, trajectories: list[Trajectory]) -> GroupRewards:
        texts = [orm_text(trajectory_record(t, task, self.tokenizer, 0, "score"), self.input_format)
                 for t in trajectories]
        probs = await self.scorer.score(texts)
        outcome = probs if self.threshold is None else [float(p >= self.threshold) for p in probs]
        agree = sum((p >= 0.5) == t.success for p, t in zip(probs, trajectories, strict=True)) / len(probs)
        return GroupRewards(outcome, metrics={"p_success": sum(probs) / len(probs), "verifier_agreement": agree})


def classification_metrics(probs: list[float], labels: list[bool], bins: int = 10) -> dict[str, float]:
    """Accuracy at 0.5, ROC AUC (rank statistic; ties count half), expected calibration error over
    `bins` equal-width bins, Brier score, and the base rate."""
    n = len(probs)
    if n == 0 or n != len(labels):
        raise ValueError(f"classification_metrics needs equal, non-empty probs and labels ({n}, {len(labels)})")
    accuracy = sum((p >= 0.5) == y for p, y in zip(probs, labels, strict=True)) / n
    pos = [p for p, y in zip(probs, labels, strict=True) if y]
    neg = [p for p, y in zip(probs, labels, strict=True) if not y]
    auc = float("nan")
    if pos and neg:
        wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
        auc = wins / (len(pos) * len(neg))
    ece = sum(count / n * abs(confidence - frequency)
              for confidence, frequency, count in reliability_bins(probs, labels, bins))
    brier = sum((p - y) ** 2 for p, y in zip(probs, labels, strict=True)) / n
    return {"accuracy": accuracy, "auc": auc, "ece": ece, "brier": brier, "base_rate": len(pos) / n,
            "majority_accuracy": max(len(pos), len(neg)) / n, "count": float(n),
            "log_loss": -sum(math.log(max(p if y else 1 - p, 1e-12)) for p, y in zip(probs, labels, strict=True)) / n}


def reliability_bins(probs: list[float], labels: list[bool], bins: int = 10) -> list[tuple[float, float, int]]:
    """(mean P(success), observed success rate, count) of each non-empty one of `bins` equal-width
    bins of P: the points of a reliability diagram, which expected calibration error averages."""
    out = []
    for b in range(bins):
        members = [(p, y) for p, y in zip(probs, labels, strict=True)
                   if b / bins <= p < (b + 1) / bins or (b == bins - 1 and p == 1.0)]
        if members:
            out.append((sum(p for p, _ in members) / len(members), sum(y for _, y in members) / len(members),
                        len(members)))
    return out
