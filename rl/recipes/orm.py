"""`turnrl orm train` and `turnrl orm eval`: the outcome reward model from stored trajectories.

Training: the records of trajectory stores (`rollout/store.py`, a run's `trajectories.jsonl`),
labelled by the verifier (`success`, or any boolean `orm.label_key`), rendered by
`rewards.orm.orm_text`, train a scalar-head model initialised from `orm.base_path` with binary
cross-entropy (with `orm.balance_classes`, both outcomes weighted equally) under DeepSpeed; under
`torchrun` each rank takes its share of every batch. Held out:
`orm.eval_data` stores, or, without them, the tasks whose id hashes into `orm.eval_fraction`
(so no task is on both sides). The model, its tokenizer and `orm_meta.json` go to `orm.path`.
"""

from __future__ import annotations

import json
import logging
import random
import zlib
from pathlib import Path

import torch
from tqdm import tqdm

from rewards.orm import OrmScorer, classification_metrics, orm_text, reliability_bins
from rl.config import OrmConfig
from rl.learner.learner import deepspeed_config, init_distributed
from rollout.store import read_trajectories

log = logging.getLogger(__name__)


def load_examples(paths: list[str], cfg: OrmConfig) -> tuple[list[str], list[bool], list[dict]]:
    """(texts, labels, records) of the records whose source is in `orm.sources`."""
    if not paths:
        raise ValueError("no trajectory stores given: set orm.data=[runs/<run>/trajectories.jsonl, ...]")
    records = [r for r in read_trajectories(paths) if r.get("source") in cfg.sources]
    missing = [r for r in records if cfg.label_key not in r]
    if missing:
        raise ValueError(f"{len(missing)} record(s) lack the label orm.label_key={cfg.label_key!r}")
    if not records:
        raise ValueError(f"no records with source in orm.sources={cfg.sources} in {paths}")
    return [orm_text(r, cfg.input) for r in records], [bool(r[cfg.label_key]) for r in records], records


def _held_out(task_id: str, fraction: float) -> bool:
    return zlib.crc32(task_id.encode()) % 1000 < fraction * 1000


def split_examples(cfg: OrmConfig):
    texts, labels, records = load_examples(cfg.data, cfg)
    if cfg.eval_data:
        return (texts, labels), load_examples(cfg.eval_data, cfg)[:2]
    held = [_held_out(r["task"]["id"], cfg.eval_fraction) for r in records]
    pick = lambda keep: ([t for t, h in zip(texts, held, strict=True) if h == keep],  # noqa: E731
                         [y for y, h in zip(labels, held, strict=True) if h == keep])
    return pick(False), pick(True)


def positive_weight(labels: list[bool]) -> float:
    """The weight of a successful example that makes both outcomes count equally: failures / successes."""
    successes = sum(labels)
    if successes == 0 or successes == len(labels):
        raise ValueError(f"orm.balance_classes needs both outcomes in the training data ({successes} of "
                         f"{len(labels)} successful)")
    return (len(labels) - successes) / successes


def train_orm(cfg: OrmConfig) -> dict:
    import deepspeed
    import torch.distributed as dist
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(cfg.seed)
    (texts, labels), (eval_texts, eval_labels) = split_examples(cfg)
    log.info("ORM: %d training and %d held-out trajectories (%.0f%% / %.0f%% successful)", len(texts),
             len(eval_texts), 100 * sum(labels) / max(len(labels), 1),
             100 * sum(eval_labels) / max(len(eval_labels), 1))
    tokenizer = AutoTokenizer.from_pretrained(cfg.base_path)
    tokenizer.truncation_side = "left"
    model = AutoModelForSequenceClassification.from_pretrained(cfg.base_path, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(
        cfg.batch_size, world, 1.0, cfg.zero_stage))
    device = engine.device
    # Successes are rare early in RL: an ORM fitted to that prior rarely says P >= 0.5, even on a
    # later policy that succeeds more often.
    pos_weight = torch.tensor(positive_weight(labels), device=device) if cfg.balance_classes else None
    per_step = cfg.batch_size * world
    order = list(range(len(texts)))
    steps_per_epoch = len(order) // per_step
    if steps_per_epoch == 0:
        raise ValueError(f"{len(texts)} training trajectories are fewer than one batch of {per_step} "
                         "(orm.batch_size x ranks)")
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc="orm train", unit="step", disable=rank != 0)
    losses = []
    for epoch in range(cfg.epochs):
        random.Random(cfg.seed * 1000 + epoch).shuffle(order)
        engine.train()
        for step in range(steps_per_epoch):
            rows = order[step * per_step:(step + 1) * per_step][rank::world]
            enc = tokenizer([texts[i] for i in rows], return_tensors="pt", padding=True, truncation=True,
                            max_length=cfg.max_length).to(device)
            target = torch.tensor([float(labels[i]) for i in rows], device=device)
            logits = engine(**enc).logits.squeeze(-1).float()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
    bar.close()
    out = Path(cfg.path)
    state = {k: v.detach().cpu() for k, v in engine.module.state_dict().items()}
    if rank == 0:
        engine.module.save_pretrained(str(out), state_dict=state)
        tokenizer.save_pretrained(str(out))
    if world > 1:
        dist.barrier()
    metrics = {"train_loss": sum(losses[-steps_per_epoch:]) / steps_per_epoch, "train_count": len(texts),
               "train_base_rate": sum(labels) / len(labels)}
    if eval_texts and rank == 0:
        scorer = OrmScorer(out, cfg.max_length, cfg.batch_size)
        metrics |= {f"heldout_{k}": v for k, v in classification_metrics(scorer.probabilities(eval_texts),
                                                                        eval_labels).items()}
    if rank == 0:
        (out / "orm_meta.json").write_text(json.dumps({"input": cfg.input, "label_key": cfg.label_key,
                                                       "balance_classes": cfg.balance_classes,
                                                       "data": list(cfg.data), "metrics": metrics}, indent=2) + "\n")
        log.info("ORM written to %s: %s", out, {k: round(v, 4) for k, v in metrics.items()})
    return metrics


def eval_orm(cfg: OrmConfig) -> dict:
    """Accuracy, AUC and calibration of the ORM at `orm.path` on `orm.eval_data` (else `orm.data`),
    overall, by the training step that produced the trajectories (how it holds up as the policy
    moves) and by task difficulty (whether it judges each kind of task, or only knows which kinds
    usually fail: overall accuracy and AUC can come from that alone), with the reliability diagram's
    points. `orm.eval_plot` draws them (`rl/report.py`)."""
    paths = list(cfg.eval_data or cfg.data)
    texts, labels, records = load_examples(paths, cfg)
    probs = OrmScorer(cfg.path, cfg.max_length, cfg.batch_size).probabilities(texts)
    report = {"orm": cfg.path, "data": paths, **classification_metrics(probs, labels),
              "reliability": [{"p_mean": p, "success_rate": rate, "count": count}
                              for p, rate, count in reliability_bins(probs, labels)]}
    for name, key in (("by_step", lambda r: r["step"]), ("by_difficulty", lambda r: r["task"]["difficulty"])):
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(records):
            groups.setdefault(key(r), []).append(i)
        report[name] = {value: classification_metrics([probs[i] for i in idx], [labels[i] for i in idx])
                        for value, idx in sorted(groups.items())}
    return report
