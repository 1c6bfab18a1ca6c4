"""The critic of PPO: a value model (the policy's transformer with a scalar head) under its own
DeepSpeed engine, as OpenRLHF and verl keep it, so the policy's weights and inference path stay
untouched. Values are aligned with the policy's log-probs: `values[:, t]` is the value of the state
in which token t is generated, read from the hidden state at t - 1.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModel

from rl.algo.losses import masked_mean
from rl.learner.learner import TrainBatch, deepspeed_config, init_distributed

log = logging.getLogger(__name__)


@dataclass
class CriticConfig:
    lr: float = 1e-4
    value_clip: float = 0.2  # PPO's value clipping around the old values; 0 disables it
    micro_batch_size: int = 16
    grad_clip: float = 1.0
    zero_stage: int = 2
    seed: int = 0


class ValueModel(torch.nn.Module):
    """A transformer trunk and a linear head to one scalar per position."""

    def __init__(self, trunk: torch.nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = torch.nn.Linear(trunk.config.hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)  # start at V = 0 (bias 0): no prior on success
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T] ids -> [B, T] values, values[:, t] read from the hidden state at t - 1 (0 at t = 0)."""
        hidden = self.trunk(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        values = self.head(hidden.float()).squeeze(-1)
        return torch.nn.functional.pad(values[:, :-1], (1, 0))


class Critic:
    """PPO's value model: `values(batch)` and one clipped value-regression step per `train_step`.
    Every rank trains on the whole batch (no sharding yet: the value model is as small as the policy)."""

    def __init__(self, model_path: str | Path, cfg: CriticConfig) -> None:
        import deepspeed
        import torch.distributed as dist
        from deepspeed.accelerator import get_accelerator

        self.cfg = cfg
        init_distributed()
        torch.manual_seed(cfg.seed)
        model = ValueModel(AutoModel.from_pretrained(model_path, dtype=torch.float32))
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
        config = deepspeed_config(cfg.micro_batch_size, dist.get_world_size(), cfg.grad_clip, cfg.zero_stage)
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        self.device = torch.device(get_accelerator().device_name())

    @torch.no_grad()
    def values(self, batch: TrainBatch) -> torch.Tensor:
        """[N, T] values of every position of `batch` (0 on padding)."""
        self.engine.eval()
        out = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        for start in range(0, len(batch), self.cfg.micro_batch_size):
            index = torch.arange(start, min(start + self.cfg.micro_batch_size, len(batch)))
            mb = batch.select(index)
            values = self.engine(mb.input_ids.to(self.device), mb.attention_mask.to(self.device)).cpu()
            out[index, : values.shape[1]] = values * mb.attention_mask
        return out

    def train_step(self, batch: TrainBatch, returns: torch.Tensor, old_values: torch.Tensor) -> dict[str, float]:
        """One optimizer step of clipped value regression to `returns` [N, T] over the policy tokens
        (token-mean); `old_values` [N, T] are the values the advantages were computed with."""
        cfg = self.cfg
        self.engine.train()
        total_tokens = float(batch.loss_mask[:, 1:].sum())
        sums = torch.zeros(2, dtype=torch.float64)
        chunks = list(range(0, len(batch), cfg.micro_batch_size))
        for i, start in enumerate(chunks):
            self.engine.set_gradient_accumulation_boundary(i == len(chunks) - 1)
            index = torch.arange(start, min(start + cfg.micro_batch_size, len(batch)))
            mb = batch.select(index)
            length = mb.input_ids.shape[1]
            target, old = returns[index, :length].to(self.device), old_values[index, :length].to(self.device)
            mask = mb.loss_mask.to(self.device)
            mask[:, 0] = 0  # position 0 has no value (nothing precedes it)
            values = self.engine(mb.input_ids.to(self.device), mb.attention_mask.to(self.device))
            loss_tokens = (values - target) ** 2
            if cfg.value_clip > 0:
                clipped = old + (values - old).clamp(-cfg.value_clip, cfg.value_clip)
                loss_tokens = torch.maximum(loss_tokens, (clipped - target) ** 2)
            n_tokens = float(mask.sum())
            loss = 0.5 * masked_mean(loss_tokens, mask)
            self.engine.backward(loss * (n_tokens / max(total_tokens, 1.0)), scale_wrt_gas=False)
            sums += torch.tensor([loss.item() * n_tokens, masked_mean(values.detach(), mask).item() * n_tokens],
                                 dtype=torch.float64)
        self.engine.step()
        sums /= max(total_tokens, 1.0)
        return {"value_loss": sums[0].item(), "value_mean": sums[1].item()}
