"""The GRPO learner: one DeepSpeed engine holding the policy, one optimizer step per batch.

`Learner.train_step` is the whole algorithm step: shard the batch over ranks, run micro-batches,
each contributing its share of one token-mean clipped surrogate (plus an optional k3 KL to a frozen
reference), then a single optimizer step. Works on CPU (gloo, DeepSpeed's CPU accelerator) and GPU.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

from rl.algo.logprobs import sampled_logprobs
from rl.algo.losses import importance_weights, kl_k3, loss_units, masked_mean, policy_loss
from rl.algo.packing import ATTENTION, hidden_states, micro_batches, pad_rows
from rl.cluster.ray_env import free_port, tcp_store
from rl.errors import TurnRLError
from rl.learner.flops import ModelShape, peak_flops, train_flops
from rl.learner.settings import DTYPES, LearnerSettings
from rollout.types import Trajectory

log = logging.getLogger(__name__)


class NonFiniteError(TurnRLError, RuntimeError):
    """A learner step met a NaN or inf loss or gradient; the message names which and where."""


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # the torch dtype of each of DTYPES


@dataclass
class LearnerConfig(LearnerSettings):
    """Everything a Learner is built with: the user's settings and what the run fixes."""

    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    # The rollout's sampling temperature: log-probs are taken of softmax(logits / temperature), the
    # distribution the engine sampled from, so the ratio to the behaviour log-probs starts at 1.
    temperature: float = 1.0
    clip_eps_high: float | None = None  # None: symmetric clipping
    seed: int = 0
    dtype: str = "float32"  # "bfloat16" on GPU (DeepSpeed keeps fp32 master weights); CPU is float32
    dist_backend: str | None = None  # None: gloo on CPU, the accelerator's own (nccl) elsewhere

    def check(self) -> None:
        super().check()
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype={self.dtype!r} must be one of {DTYPES}")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be > 0 (greedy rollouts have no policy gradient)")


@dataclass
class TrainBatch:
    """One learner step's data; N sequences right-padded to T.

    input_ids: [N, T] long; attention_mask: [N, T] (1 on real tokens); loss_mask: [N, T] (1 on
    policy tokens; the loss for token t uses the logits at t-1, so loss_mask[:, 0] is ignored);
    old_logprobs: [N, T] behaviour log-probs (the engine's) of the tokens at the same positions;
    advantages: [N] (one per sequence) or [N, T] (per token, from GAE); proximal_logprobs: optional
    [N, T] log-probs under the learner's weights before this batch's first update
    (`Learner.proximal_logprobs`), the clip anchor of decoupled PPO.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    old_logprobs: torch.Tensor
    advantages: torch.Tensor
    proximal_logprobs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        shape = tuple(self.input_ids.shape)
        for name in ("attention_mask", "loss_mask", "old_logprobs", "proximal_logprobs"):
            if getattr(self, name) is not None and tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"TrainBatch.{name} has shape {tuple(getattr(self, name).shape)}, "
                                 f"input_ids has {shape}")
        if tuple(self.advantages.shape) not in (shape[:1], shape):
            raise ValueError(f"TrainBatch.advantages has shape {tuple(self.advantages.shape)}, "
                             f"expected ({shape[0]},) or {shape}")

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: torch.Tensor) -> TrainBatch:
        """The rows in `index` ([n] long), trimmed to their longest sequence."""
        length = max(int(self.attention_mask[index].sum(1).max().item()), 1) if len(index) else 1
        prox = None if self.proximal_logprobs is None else self.proximal_logprobs[index, :length]
        return TrainBatch(self.input_ids[index, :length], self.attention_mask[index, :length],
                          self.loss_mask[index, :length], self.old_logprobs[index, :length],
                          self.advantages[index] if self.advantages.dim() == 1 else self.advantages[index, :length],
                          prox)

    def to(self, device: torch.device) -> TrainBatch:
        return TrainBatch(*(None if t is None else t.to(device) for t in (
            self.input_ids, self.attention_mask, self.loss_mask, self.old_logprobs, self.advantages,
            self.proximal_logprobs)))


def make_train_batch(trajectories: Sequence[Trajectory], advantages: torch.Tensor | Sequence[float],
                     pad_id: int | None) -> TrainBatch:
    """Right-pad trajectories (token_ids, loss_mask, logprobs as the engine made them) into a TrainBatch."""
    input_ids, attention_mask, loss_mask, old_logprobs = pad_rows(
        [t.token_ids for t in trajectories], 0 if pad_id is None else pad_id, [t.loss_mask for t in trajectories],
        [t.logprobs for t in trajectories])
    adv = torch.as_tensor(advantages, dtype=torch.float32).flatten()
    return TrainBatch(input_ids, attention_mask, loss_mask, old_logprobs, adv)


def split_mini_batches(batch: TrainBatch, num: int, generator: torch.Generator | None = None) -> list[TrainBatch]:
    """`batch` shuffled and cut into `num` mini-batches of near-equal size (one optimizer step each)."""
    if not 1 <= num <= len(batch):
        raise ValueError(f"cannot cut a batch of {len(batch)} sequences into {num} mini-batches")
    order = torch.randperm(len(batch), generator=generator)
    return [batch.select(index) for index in order.tensor_split(num)]


def deepspeed_config(micro_batch_size: int, world_size: int, grad_clip: float, zero_stage: int,
                     bf16: bool = False) -> dict:
    """The DeepSpeed config of a model trained by `train_step`-style loops (policy and critic)."""
    # The loops drive accumulation themselves (a batch's micro-batch count varies), so DeepSpeed's
    # nominal batch is one micro-batch per rank and the boundary is set by hand.
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": micro_batch_size * world_size,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage},
        "zero_allow_untested_optimizer": True,  # torch AdamW: runs on every accelerator, CPU included
        "bf16": {"enabled": bf16},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def init_distributed(backend: str | None = None) -> None:
    """Join (or, without a launcher, create) the process group. Under torchrun/deepspeed the env
    vars are set; a bare `python` gets a world of one on a free local port."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if "RANK" not in os.environ:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port("127.0.0.1")), RANK="0", WORLD_SIZE="1",
                          LOCAL_RANK="0")
    accel = get_accelerator()
    if backend is None:
        backend = "gloo" if accel.device_name() == "cpu" else accel.communication_backend_name()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if "TORCHELASTIC_RUN_ID" not in os.environ and not dist.is_initialized():
        # Our own rendezvous (not torchrun's, whose agent serves it): its store listens on
        # MASTER_ADDR only, where torch's env:// one would listen on every interface. Every rank
        # joins through the same kind of store, so all see the same keys.
        store = tcp_store(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, rank == 0,
                          timedelta(minutes=30))
        dist.init_process_group(backend, store=store, rank=rank, world_size=world)
    deepspeed.init_distributed(dist_backend=backend)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Learner:
    """The policy under DeepSpeed (ZeRO stage `cfg.zero_stage`) and, when kl_coef > 0, a frozen reference."""

    def __init__(self, model_path: str | Path, cfg: LearnerConfig) -> None:
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        cfg.check()
        self.cfg = cfg
        init_distributed(cfg.dist_backend)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        _seed_everything(cfg.seed)
        accel = get_accelerator()
        self.device = torch.device(accel.device_name(int(os.environ.get("LOCAL_RANK", 0))))
        if cfg.dtype != "float32" and self.device.type == "cpu":
            raise ValueError(f"LearnerConfig.dtype={cfg.dtype!r} needs a GPU; CPU training is float32")

        # Packed rows need attention that keeps their sequences apart (rl/algo/packing.py).
        attention = {"attn_implementation": ATTENTION} if cfg.pack_sequences else {}
        # Loaded in float32: DeepSpeed casts the module for bf16 and keeps fp32 master weights itself.
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, **attention)
        model.config.use_cache = False
        if cfg.activation_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.shape = ModelShape.of(model.config)
        # Scored positions per chunk of logits (rl/algo/logprobs.py); 0: all at once.
        self.chunk_tokens = 0
        if cfg.logits_chunk_mb:
            self.chunk_tokens = max(1, int(cfg.logits_chunk_mb * 2**20 / (4 * self.shape.vocab)))
        self.ref_model = None
        if cfg.kl_coef > 0:
            # A full copy on every rank: fine up to ZeRO-2 sizes; ZeRO-3-scale models want it sharded too.
            self.ref_model = AutoModelForCausalLM.from_pretrained(model_path, dtype=_DTYPES[cfg.dtype], **attention)
            self.ref_model.to(self.device).eval().requires_grad_(False)

        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.adam_eps,
                                      weight_decay=cfg.weight_decay)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                                 config=deepspeed_config(
            cfg.micro_batch_size, self.world_size, cfg.grad_clip, cfg.zero_stage, bf16=cfg.dtype == "bfloat16"))
        if self.world_size == 1 and cfg.zero_stage == 0:
            # Nothing to reduce over one rank, and DeepSpeed's stage-0 reduction first copies every
            # gradient into a flat buffer: as much memory again as the gradients, for nothing.
            self.engine.enable_backward_allreduce = False
        self.step = 0
        self.peak_flops = peak_flops(self.device, _DTYPES[cfg.dtype], cfg.peak_tflops)

    @property
    def model(self) -> torch.nn.Module:
        """The HF model inside the engine."""
        return self.engine.module

    def _shard(self, n: int) -> list[int]:
        """This rank's rows of a batch of `n`: contiguous blocks of ceil(n / world_size)."""
        per_rank = math.ceil(n / self.world_size)
        return list(range(self.rank * per_rank, min((self.rank + 1) * per_rank, n)))

    def _all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            values = values.to(self.device)
            dist.all_reduce(values)
        return values.cpu()

    def _max_over_ranks(self, value: int) -> int:
        if self.world_size == 1:
            return value
        t = torch.tensor([value], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def _micro_batches(self, batch: TrainBatch, rows: list[int]) -> list[list[int]]:
        lengths = batch.attention_mask.sum(1)
        cut = micro_batches([int(lengths[r]) for r in rows], self.cfg.micro_batch_size, self.cfg.micro_batch_tokens,
                            self.cfg.pack_sequences)
        return [[rows[i] for i in chunk] for chunk in cut]

    def _micro_batch(self, batch: TrainBatch, rows: list[int | None]) -> TrainBatch:
        # Padding rows (None) reuse row 0 with an empty loss mask: they run forward/backward but add nothing.
        index = torch.tensor([0 if r is None else r for r in rows], dtype=torch.long)
        mb = batch.select(index)
        dummy = torch.tensor([r is None for r in rows])
        mb.loss_mask = mb.loss_mask.masked_fill(dummy.unsqueeze(-1), 0.0)
        return mb.to(self.device)

    def _scored_logprobs(self, model: torch.nn.Module, mb: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs and entropies [B, T-1] of `model` for the policy tokens 1.. of `mb` (0 elsewhere), at
        the rollout temperature; the output head runs on those positions only, in chunks."""
        hidden = hidden_states(model, mb.input_ids, mb.attention_mask, self.cfg.pack_sequences)[:, :-1]
        scored = (mb.loss_mask[:, 1:] > 0).reshape(-1).nonzero().squeeze(-1)
        head = (model.module if model is self.engine else model).get_output_embeddings()
        logprobs, entropy = sampled_logprobs(hidden.reshape(-1, hidden.shape[-1])[scored], head,
                                             mb.input_ids[:, 1:].reshape(-1)[scored], self.cfg.temperature,
                                             self.chunk_tokens)
        b, t = hidden.shape[:2]
        return (logprobs.new_zeros(b * t).index_copy(0, scored, logprobs).view(b, t),
                entropy.new_zeros(b * t).index_copy(0, scored, entropy).view(b, t))

    @torch.no_grad()
    def proximal_logprobs(self, batch: TrainBatch) -> torch.Tensor:
        """Log-probs [N, T] of `batch`'s policy tokens under the current weights (at the rollout
        temperature; 0 at other positions), aligned like `old_logprobs`: the clip anchor of decoupled
        PPO. Every rank scores the whole batch (a forward pass, no collectives). Under ZeRO-3 the
        forward gathers parameters, so call it on every rank."""
        self.engine.eval()
        out = torch.zeros_like(batch.old_logprobs)
        for rows in self._micro_batches(batch, list(range(len(batch)))):
            mb = self._micro_batch(batch, rows)
            scored, _ = self._scored_logprobs(self.engine, mb)
            out[rows, 1:scored.shape[1] + 1] = scored.cpu()
        return out

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        """One optimizer step on `batch` (every rank passes the same whole batch and takes its shard).

        The loss is aggregated over the whole batch (`loss_agg`: its tokens or its sequences), across
        micro-batches and ranks. With `importance_weights` other than "none" the batch must carry
        `proximal_logprobs`.
        """
        cfg = self.cfg
        started = self._clock()
        off_policy = cfg.importance_weights != "none"
        if off_policy and batch.proximal_logprobs is None:
            raise ValueError(f"importance_weights={cfg.importance_weights!r} needs batch.proximal_logprobs: "
                             "score the batch with Learner.proximal_logprobs before its first update")
        self.engine.train()
        local = self._shard(len(batch))
        # Micro-batches of similar lengths pad less (each is cut to its longest row); the loss is
        # aggregated over the whole batch, so the grouping does not change the update. Every rank
        # runs as many micro-batches as the busiest (ZeRO's reductions are collectives); the extra
        # ones are a dummy row with an empty loss mask.
        chunks = self._micro_batches(batch, local)
        chunks += [[None]] * (self._max_over_ranks(len(chunks)) - len(chunks))
        mask_rows = batch.loss_mask[local, 1:] if local else torch.zeros(0, 1)
        lengths = [int(n) for n in batch.attention_mask[local].sum(1)]
        scored = int((mask_rows > 0).sum())
        local_counts = torch.tensor([float(mask_rows.sum()), float(loss_units(mask_rows, cfg.loss_agg)),
                                     float(sum(lengths)), train_flops(self.shape, lengths, scored)],
                                    dtype=torch.float64)
        total_tokens, total_units, all_tokens, flops = (float(x) for x in self._all_reduce_sum(local_counts))
        if total_tokens == 0:
            log.warning("train_step: the batch has no policy tokens; the step only decays/moves by momentum")
        # DeepSpeed averages gradients over ranks; multiplying by world_size makes that a plain sum.
        scale = self.world_size / max(total_units, 1.0)
        norm_length = cfg.loss_agg_norm_length or None

        # Sums over the batch: the loss (per unit), then token-weighted clipfrac, approx_kl, ratio,
        # kl_ref, entropy, importance weight.
        sums = torch.zeros(7, dtype=torch.float64)
        forward_s = backward_s = 0.0
        for i, chunk in enumerate(chunks):
            self.engine.set_gradient_accumulation_boundary(i == len(chunks) - 1)
            mb = self._micro_batch(batch, chunk)
            t0 = self._clock()
            logprobs, entropies = self._scored_logprobs(self.engine, mb)
            mask = mb.loss_mask[:, 1:]
            behavior = mb.old_logprobs[:, 1:]
            anchor, weights = behavior, None
            if off_policy:
                anchor = mb.proximal_logprobs[:, 1:]
                weights = importance_weights(anchor, behavior, mask, cfg.importance_weights, cfg.is_cap)
            advantages = mb.advantages if mb.advantages.dim() == 1 else mb.advantages[:, 1:]
            pg_loss, pg_metrics = policy_loss(logprobs, anchor, advantages, mask, cfg.clip_eps,
                                              cfg.clip_eps_high, weights, cfg.loss_agg, norm_length)
            loss = pg_loss
            kl_ref = torch.zeros(())
            if self.ref_model is not None:
                with torch.no_grad():
                    ref_logprobs, _ = self._scored_logprobs(self.ref_model, mb)
                kl_ref = kl_k3(logprobs, ref_logprobs, mask)
                loss = loss + cfg.kl_coef * kl_ref
            n_tokens, n_units = float(mask.sum()), float(loss_units(mask, cfg.loss_agg))
            t1 = self._clock()
            # A micro-batch's mean times its share of the batch's units sums to the batch mean.
            self.engine.backward(loss * (n_units * scale), scale_wrt_gas=False)
            forward_s, backward_s = forward_s + t1 - t0, backward_s + self._clock() - t1
            entropy = masked_mean(entropies, mask).item()
            mean_weight = masked_mean(weights, mask).item() if weights is not None else 1.0
            sums += torch.tensor([loss.item() * n_units] + [n_tokens * v for v in (
                pg_metrics["clipfrac"].item(), pg_metrics["approx_kl"].item(), pg_metrics["ratio_mean"].item(),
                kl_ref.item(), entropy, mean_weight)], dtype=torch.float64)
        # ZeRO stages 1-3 report the pre-clip norm after step(); stage 0 does not, so measure it here.
        grad_norm = self._grad_norm() if cfg.zero_stage == 0 else None
        sums = self._all_reduce_sum(sums)  # every rank sees the same loss, so all stop or none
        loss_mean = sums[0].item() / max(total_units, 1.0)
        for what, value in (("loss", loss_mean), ("gradient norm", grad_norm)):
            if value is not None and not math.isfinite(value):
                raise NonFiniteError(f"optimizer step {self.step + 1}: the {what} is {value}; no step was taken "
                                     f"and nothing is saved (lr={cfg.lr}: a learning rate too high, or weights "
                                     "from a damaged checkpoint, give this)")
        t2 = self._clock()
        self.engine.step()
        self.step += 1
        optimizer_s = self._clock() - t2
        if grad_norm is None:
            grad_norm = self.engine.get_global_grad_norm()
            if grad_norm is not None and not math.isfinite(float(grad_norm)):
                raise NonFiniteError(f"optimizer step {self.step}: the gradient norm is {float(grad_norm)}; the "
                                     "weights may now hold NaN, and no checkpoint of them will be saved")

        sums = sums / max(total_tokens, 1.0)
        return {
            "loss": loss_mean,
            "pg_clipfrac": sums[1].item(),
            "approx_kl": sums[2].item(),
            "ratio_mean": sums[3].item(),
            "kl_ref": sums[4].item(),
            "entropy": sums[5].item(),
            "is_weight_mean": sums[6].item(),
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "tokens": total_tokens,
            # Summed by the caller into perf/ metrics (rl/learner/update.py).
            "model_flops": flops,
            "all_tokens": all_tokens,
            "step_s": time.perf_counter() - started,
            "forward_s": forward_s,
            "backward_s": backward_s,
            "optimizer_s": optimizer_s,
        }

    def _clock(self) -> float:
        """Seconds, after the device has finished its queued work (a GPU runs asynchronously)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _grad_norm(self) -> float:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0

    def state_dict_for_inference(self) -> dict[str, torch.Tensor]:
        """Full HF-named weights on CPU (gathered under ZeRO-3; a collective then: call on every rank)."""
        if self.cfg.zero_stage == 3:
            import deepspeed

            keys = set(self.model.state_dict())  # the HF names (tied weights under both names)
            out = {}
            for name, param in self.model.named_parameters(remove_duplicate=False):
                if name in keys:  # one parameter gathered at a time: peak memory is one full tensor
                    with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                        out[name] = param.detach().to("cpu", copy=True)
            for name, buf in self.model.named_buffers(remove_duplicate=False):
                if name in keys:
                    out[name] = buf.detach().to("cpu", copy=True)
            return out
        return {name: t.detach().to("cpu", copy=True) for name, t in self.model.state_dict().items()}

    def save_pretrained(self, path: str | Path) -> None:
        """Write the policy in HF format (safetensors) to `path`; call on every rank, rank 0 writes."""
        state = self.state_dict_for_inference()
        if self.rank == 0:
            self.model.save_pretrained(str(path), state_dict=state)

