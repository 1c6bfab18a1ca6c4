"""SFT warm start: teach the base model the tool-call format from the expert's demonstrations.

The loss is on the expert's (assistant) tokens only; demonstrations are laid out by the real agent
loop (`rollout.demos`), so SFT sees exactly the token layout RL will produce.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from rl.algo.packing import pad_rows
from rl.learner.learner import init_distributed
from rollout.chat import ChatFormat
from rollout.demos import expert_trajectory
from rollout.envs import get_env
from rollout.types import Task, Trajectory

log = logging.getLogger(__name__)

# SFT demonstrations draw seeds from their own range, apart from RL training and held-out tasks.
SFT_SEED_BASE = 20_000_000


@dataclass
class SFTResult:
    num_demos: int
    num_tokens: int
    final_loss: float
    out_dir: Path


def sample_demo_tasks(env_name: str, num: int, difficulty_weights: dict[int, float], seed: int) -> list[Task]:
    env_cls = get_env(env_name)
    rng = random.Random(seed)
    levels = sorted(difficulty_weights)
    weights = [difficulty_weights[d] for d in levels]
    return [env_cls.generate_task(SFT_SEED_BASE + seed * 1_000_000 + i, rng.choices(levels, weights)[0])
            for i in range(num)]


def pad_batch(trajs: list[Trajectory], pad_id: int, max_turns: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids [B,T], attention_mask [B,T], loss_mask [B,T]); the loss mask keeps
    only the first `max_turns` assistant turns when given."""
    masks = []
    for traj in trajs:
        mask = [0.0] * len(traj.token_ids)
        for turn in traj.turns[:max_turns]:
            mask[turn.action_start:turn.action_end] = [1.0] * (turn.action_end - turn.action_start)
        masks.append(mask)
    return pad_rows([t.token_ids for t in trajs], pad_id, masks)


def sft_loss(model, ids: torch.Tensor, attn: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-mean cross-entropy on positions with mask 1 (token t predicted from logits at t-1)."""
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
    targets = ids[:, 1:]
    weights = mask[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                            reduction="none").view_as(weights)
    return (nll * weights).sum() / weights.sum().clamp(min=1.0)


def sft_step(trained, model, optimizer, schedule, ids: torch.Tensor, attn: torch.Tensor,
             mask: torch.Tensor) -> torch.Tensor:
    """One optimizer step on `sft_loss` (forward through `trained`, e.g. its DDP wrapper; gradients
    of `model` clipped at 1); returns the loss."""
    loss = sft_loss(trained, ids, attn, mask)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    return loss


def run_sft(base_path: str, out_dir: str, env_name: str, num_demos: int, difficulty_weights: dict[int, float],
            epochs: int, lr: float, batch_size: int, seed: int, first_turn_epochs: int = 0) -> SFTResult:
    """Train `base_path` on expert demonstrations and write the policy to `out_dir` (HF format).

    Under torchrun (WORLD_SIZE > 1) the ranks split every batch and average gradients (DDP, gloo on
    CPU); rank 0 writes the model. After every epoch rank 0 writes a checkpoint beside `out_dir`
    (`<out_dir>.partial/`); a run with the same settings that finds one goes on from it, exactly as
    if it had not been stopped, and the finished run removes it."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    ranks = Ranks.join()
    settings = {"base_path": str(Path(base_path).resolve()), "env": env_name, "num_demos": num_demos,
                "difficulty_weights": {str(k): v for k, v in sorted(difficulty_weights.items())}, "epochs": epochs,
                "lr": lr, "batch_size": batch_size, "seed": seed, "first_turn_epochs": first_turn_epochs,
                "world_size": ranks.world}
    checkpoint = SFTCheckpoint(Path(out_dir).with_name(Path(out_dir).name + ".partial"), settings)
    chat = ChatFormat(tokenizer, get_env(env_name).tools)
    tasks = sample_demo_tasks(env_name, num_demos, difficulty_weights, seed)
    demos = [expert_trajectory(chat, t) for t in tqdm(tasks, desc="demos", unit="demo", leave=False)]
    log.info("SFT on %d demonstrations (%d tokens, %d supervised)", len(demos),
             sum(len(d.token_ids) for d in demos), sum(d.num_generated_tokens for d in demos))

    # Turn curriculum: the first turn alone first, where the only name in context is the one to
    # copy, so a model from random weights learns that copy before the later turns' harder ones (a
    # value picked by key among several) pull it towards a "likely name" prior; the full-episode
    # stage then builds on it.
    rng = random.Random(seed)
    resumed = checkpoint.load()
    loss = torch.tensor(float("nan"))
    stages = [("sft (first turns)", first_turn_epochs, 1, False), ("sft", epochs, None, True)]
    for index, (desc, stage_epochs, max_turns, decay) in enumerate(stages):
        if stage_epochs <= 0 or (resumed is not None and index < resumed["stage"]):
            continue
        stage_state = resumed if resumed is not None and index == resumed["stage"] else None
        if stage_state is not None:
            model.load_state_dict(stage_state["model"])
            rng.setstate(stage_state["rng"])
            log.info("SFT resumed from %s: %s, after epoch %d of %d", checkpoint.dir, desc, stage_state["epoch"],
                     stage_epochs)

        def save(epoch: int, optimizer, schedule, epoch_loss: torch.Tensor, stage: int = index) -> None:
            if ranks.rank == 0:
                checkpoint.save({"stage": stage, "epoch": epoch, "model": model.state_dict(),
                                 "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                                 "rng": rng.getstate(), "loss": epoch_loss.item()})
            ranks.barrier()

        loss = train_stage(model, demos, tokenizer.pad_token_id, stage_epochs, lr, batch_size, rng, max_turns,
                           decay, desc, ranks, stage_state, save)
    if resumed is not None and loss.isnan():  # stopped after its last epoch, before the model was written
        loss = torch.tensor(resumed["loss"])
    if ranks.rank == 0:
        save_model(model, tokenizer, Path(out_dir))
        checkpoint.clear()
    ranks.barrier()
    return SFTResult(len(demos), sum(len(d.token_ids) for d in demos), float(loss.item()), Path(out_dir))


class SFTCheckpoint:
    """The state of an unfinished SFT run after its last complete epoch, in `dir`/state.pt, with the
    settings it was made with: a run with other settings starts over (and says so)."""

    def __init__(self, dir: Path, settings: dict) -> None:
        self.dir = dir
        self.settings = settings

    def load(self) -> dict | None:
        path = self.dir / "state.pt"
        if not path.exists():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # a torn file from a kill mid-write: nothing to resume
            log.warning("SFT checkpoint %s is unreadable (%r); starting over", path, err)
            return None
        if state.get("settings") != self.settings:
            log.warning("SFT checkpoint %s was made with other settings (%s); starting over", path,
                        state.get("settings"))
            return None
        return state

    def save(self, state: dict) -> None:
        """Written beside, then renamed over: a kill mid-write leaves the previous epoch's."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "state.pt.tmp"
        torch.save({**state, "settings": self.settings}, tmp)
        tmp.replace(self.dir / "state.pt")

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Ranks:
    """This process's place among torchrun's ranks (one rank without a launcher)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def join(cls) -> Ranks:
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:
            return cls()
        init_distributed()
        return cls(dist.get_rank(), dist.get_world_size())

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def train_stage(model, demos: list[Trajectory], pad_id: int, epochs: int, lr: float, batch_size: int,
                rng: random.Random, max_turns: int | None, decay: bool, desc: str, ranks: Ranks,
                resumed: dict | None = None, on_epoch: Callable[..., None] | None = None) -> torch.Tensor:
    """Epochs of AdamW over `demos`, supervising the first `max_turns` assistant turns (all if None);
    with `decay`, a 10% warm-up then linear decay to 0, else a constant learning rate. With several
    ranks each takes every world-th row of a batch, and DDP averages the gradients. `resumed`: the
    optimizer and schedule state after epoch `resumed["epoch"]`, to go on from; `on_epoch(epoch,
    optimizer, schedule, loss)` after each epoch (a checkpoint)."""
    trained = model
    if ranks.world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    steps_per_epoch = (len(demos) + batch_size - 1) // batch_size
    total = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / max(1, total // 10)) * max(0.0, 1 - s / total) if decay else 1.0,
    )
    first_epoch = 0
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        schedule.load_state_dict(resumed["schedule"])
        first_epoch = resumed["epoch"]
    model.train()
    loss = torch.tensor(float("nan"))
    with tqdm(total=total, initial=first_epoch * steps_per_epoch, desc=desc, unit="step",
              disable=ranks.rank != 0) as bar:
        for epoch in range(first_epoch, epochs):
            order = list(range(len(demos)))
            rng.shuffle(order)  # the same order on every rank (the same seed)
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                if len(rows) < ranks.world:  # a last batch too small to give every rank a row
                    continue
                batch = [demos[i] for i in rows[ranks.rank :: ranks.world]]
                loss = sft_step(trained, model, optimizer, schedule, *pad_batch(batch, pad_id, max_turns))
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update()
            if on_epoch is not None:
                on_epoch(epoch + 1, optimizer, schedule, loss)
    return loss


def save_model(model, tokenizer, out_dir: Path) -> None:
    """Write an HF model directory atomically: into a sibling temp dir, then rename over."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
