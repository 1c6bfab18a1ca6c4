"""The learner's user-facing settings, in a module of their own so the config schema can extend
them without importing the learner's heavy dependencies (transformers, DeepSpeed)."""

from __future__ import annotations

from dataclasses import dataclass

from rl.algo.losses import IMPORTANCE_WEIGHT_LEVELS, LOSS_AGGREGATIONS

DTYPES = ("float32", "bfloat16")  # the learner's (model.dtype); CPU trains in float32


@dataclass
class LearnerSettings:
    """The learner's settings that a user sets as `algo.*` keys (AlgoConfig extends this class)."""

    lr: float = 2e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0 disables clipping
    clip_eps: float = 0.2
    kl_coef: float = 0.0  # > 0 adds a k3 KL penalty to a frozen reference (the starting policy)
    # token-mean | seq-mean-token-mean | seq-mean-token-sum-norm (normalised by loss_agg_norm_length,
    # 0: rollout.max_total_tokens)
    loss_agg: str = "token-mean"
    loss_agg_norm_length: int = 0
    # Off-policy correction: none | token | sequence. Other than none, the learner recomputes the
    # log-probs of the batch before its first update (the proximal policy), clips against them
    # (decoupled PPO) and weights tokens by the truncated ratio proximal / behaviour (TIS), capped
    # at is_cap, per token or per sequence.
    importance_weights: str = "none"
    is_cap: float = 2.0
    micro_batch_size: int = 16  # sequences per forward/backward on one rank
    # Long-tailed episode lengths (rl/algo/packing.py): > 0 cuts micro-batches by this many tokens
    # instead of micro_batch_size rows; pack_sequences runs each micro-batch as one packed row (no padding).
    micro_batch_tokens: int = 0
    pack_sequences: bool = False
    zero_stage: int = 2
    # Memory (rl/algo/logprobs.py): the output head runs on as many scored positions at a time as
    # keep their float32 logits within this many MiB (151,936-token vocabulary: 441 positions at
    # 256), recomputing each chunk in the backward pass; 0: all positions at once, no recomputation.
    logits_chunk_mb: float = 256.0
    activation_checkpointing: bool = False  # recompute each layer in the backward pass instead of storing it
    peak_tflops: float = 0.0  # per learner rank, for perf/mfu; 0: a known GPU's data sheet, else measured

    def check(self) -> None:
        """Raise ValueError naming the field of a value no learner can run with."""
        for name, value, allowed in [("loss_agg", self.loss_agg, LOSS_AGGREGATIONS),
                                     ("importance_weights", self.importance_weights, IMPORTANCE_WEIGHT_LEVELS),
                                     ("zero_stage", self.zero_stage, (0, 1, 2, 3))]:
            if value not in allowed:
                raise ValueError(f"{name}={value!r} must be one of {allowed}")
        for name, value, low, strict in [("lr", self.lr, 0, True), ("clip_eps", self.clip_eps, 0, True),
                                         ("weight_decay", self.weight_decay, 0, False),
                                         ("grad_clip", self.grad_clip, 0, False), ("kl_coef", self.kl_coef, 0, False),
                                         ("micro_batch_size", self.micro_batch_size, 1, False)]:
            if value < low or (strict and value == low):
                raise ValueError(f"{name}={value} must be {'>' if strict else '>='} {low}")
        if self.is_cap < 1:
            raise ValueError(f"is_cap={self.is_cap} must be >= 1 (it truncates importance weights from above)")
        for name, value, zero in [("logits_chunk_mb", self.logits_chunk_mb, "all positions at once"),
                                  ("peak_tflops", self.peak_tflops, "a data-sheet or measured peak")]:
            if value < 0:
                raise ValueError(f"{name}={value} must be >= 0 (0: {zero})")
        if self.micro_batch_tokens < 0:
            raise ValueError(f"micro_batch_tokens={self.micro_batch_tokens} must be >= 0 (0: micro-batches of "
                             f"micro_batch_size={self.micro_batch_size} sequences)")
