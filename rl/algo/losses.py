"""Policy-gradient losses and the per-token quantities they need. Pure functions on tensors.

Shapes: B sequences, T positions, V vocabulary. `mask` is 1 on the tokens that count (policy
tokens), 0 elsewhere. Metrics are token means over the mask; the loss is aggregated by one of
LOSS_AGGREGATIONS (token-mean by default).
"""

from __future__ import annotations

import math

import torch

# exp() of a log-ratio beyond this overflows float32 on garbage positions; clamp before exp.
_MAX_LOG_RATIO = 20.0


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over positions where mask is 1; 0 when the mask is empty. x, mask: same shape."""
    m = mask.to(torch.bool)
    total = torch.where(m, x, torch.zeros_like(x)).sum()
    return total / m.sum().clamp(min=1)


# How per-token losses [B, T] become one number (the names verl uses):
#   token-mean:               sum over all tokens / number of tokens (long sequences weigh more)
#   seq-mean-token-mean:      mean over sequences of each sequence's token mean (GRPO's paper form)
#   seq-mean-token-sum-norm:  mean over sequences of each sequence's token sum / a constant length
#                             (Dr.GRPO: no length bias in either direction)
LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def loss_units(mask: torch.Tensor, mode: str) -> torch.Tensor:
    """What `mode` averages over: the number of masked tokens, or of sequences with any. mask: [B, T]."""
    m = mask.to(torch.bool)
    if mode == "token-mean":
        return m.sum().to(torch.float32)
    if mode in LOSS_AGGREGATIONS:
        return m.any(-1).sum().to(torch.float32)
    raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {LOSS_AGGREGATIONS}")


def aggregate_loss(token_loss: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean",
                   norm_length: float | None = None) -> torch.Tensor:
    """Sum of `token_loss` [B, T] over the units of `mode` (see LOSS_AGGREGATIONS); divide by
    `loss_units(mask, mode)` for the mean. Summing first lets micro-batches and ranks add up to the
    exact mean of the whole batch. seq-mean-token-sum-norm needs `norm_length` (> 0)."""
    m = mask.to(torch.bool)
    per_token = torch.where(m, token_loss, torch.zeros_like(token_loss))
    if mode == "token-mean":
        return per_token.sum()
    if mode == "seq-mean-token-mean":
        return (per_token.sum(-1) / m.sum(-1).clamp(min=1)).sum()
    if mode == "seq-mean-token-sum-norm":
        if not norm_length or norm_length <= 0:
            raise ValueError("seq-mean-token-sum-norm needs norm_length > 0 (e.g. the token budget)")
        return per_token.sum() / norm_length
    raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {LOSS_AGGREGATIONS}")


# "none": no correction (clip against the behaviour log-probs); else per token or per sequence.
IMPORTANCE_WEIGHT_LEVELS = ("none", "token", "sequence")


def importance_weights(proximal_logprobs: torch.Tensor, behavior_logprobs: torch.Tensor, mask: torch.Tensor,
                       level: str, cap: float) -> torch.Tensor:
    """Truncated importance weights [B, T] (no grad) from the behaviour policy (the engine that
    sampled) to the proximal policy (the learner's weights before this update).

    level "token": min(pi_prox / pi_behav, cap) per token (decoupled PPO, token TIS);
    level "sequence": min(prod over the sequence's masked tokens of pi_prox / pi_behav, cap), one
    weight per sequence broadcast over its tokens (sequence TIS). All inputs [B, T].
    """
    m = mask.to(torch.bool)
    log_ratio = torch.where(m, proximal_logprobs - behavior_logprobs, torch.zeros_like(proximal_logprobs)).detach()
    if level == "token":
        weights = log_ratio.clamp(max=math.log(cap)).exp()
    elif level == "sequence":
        weights = log_ratio.sum(-1, keepdim=True).clamp(max=math.log(cap)).exp().expand_as(log_ratio)
    else:
        raise ValueError(f"importance weight level must be 'token' or 'sequence', got {level!r}")
    return torch.where(m, weights, torch.zeros_like(weights))


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    is_weights: torch.Tensor | None = None,
    agg: str = "token-mean",
    norm_length: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped PPO/GRPO surrogate, aggregated over the mask by `agg` (see LOSS_AGGREGATIONS).

    logprobs: [B, T] under the current policy (with grad); old_logprobs: [B, T] of the policy the
    ratio is clipped against (the sampler's, or the recomputed proximal policy's under decoupled
    PPO); advantages: [B] (one per sequence) or [B, T]; mask: [B, T]; is_weights: optional [B, T]
    truncated importance weights (`importance_weights`) multiplying each token's term.
    ratio = exp(logprobs - old_logprobs) is clipped to [1 - clip_eps, 1 + clip_eps_high]
    (clip_eps_high defaults to clip_eps; DAPO's clip-higher sets it larger).
    Returns (loss scalar, metrics) with detached scalar token-mean metrics: `clipfrac` (share of tokens
    where the clipped term is the one taken, i.e. clipping removed the gradient), `approx_kl` (k3
    estimate of KL(old || new): mean of (ratio - 1) - log ratio) and `ratio_mean`.
    """
    high = clip_eps if clip_eps_high is None else clip_eps_high
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    m = mask.to(torch.bool)
    log_ratio = torch.where(m, logprobs - old_logprobs, torch.zeros_like(logprobs)).clamp(
        -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high)
    token_loss = torch.maximum(unclipped, clipped)
    if is_weights is not None:
        token_loss = token_loss * is_weights
    loss = aggregate_loss(token_loss, mask, agg, norm_length) / loss_units(mask, agg).clamp(min=1)
    with torch.no_grad():
        metrics = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, metrics


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """k3 estimate of KL(policy || reference), token-mean over the mask. All [B, T] -> scalar.

    Per token: exp(d) - d - 1 with d = ref_logprobs - logprobs (unbiased, always >= 0; Schulman's k3).
    Gradients flow through `logprobs` only.
    """
    d = (ref_logprobs.detach() - logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return masked_mean(torch.exp(d) - d - 1.0, mask)
