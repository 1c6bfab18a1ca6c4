"""Policy-gradient losses and the per-token quantities they need. Pure functions on tensors.

Shapes: B sequences, T positions, V vocabulary. `mask` is 1 on the tokens that count (policy
tokens), 0 elsewhere; every mean here is a token mean over the mask.
"""

from __future__ import annotations

import torch

# exp() of a log-ratio beyond this overflows float32 on garbage positions; clamp before exp.
_MAX_LOG_RATIO = 20.0


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over positions where mask is 1; 0 when the mask is empty. x, mask: same shape."""
    m = mask.to(torch.bool)
    total = torch.where(m, x, torch.zeros_like(x)).sum()
    return total / m.sum().clamp(min=1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[tokens], in float32. logits: [B, T, V], tokens: [B, T] -> [B, T].

    The caller aligns them: to score token t of a sequence pass logits[:, t-1] with tokens[:, t].
    One row at a time through gather - logsumexp, so no [B, T, V] float32 log-softmax is built.
    """
    rows = []
    for row_logits, row_tokens in zip(logits, tokens, strict=True):
        row_logits = row_logits.float()
        picked = row_logits.gather(-1, row_tokens.unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(row_logits, dim=-1))
    return torch.stack(rows)


@torch.no_grad()
def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution at each position (a metric, no grad). [B, T, V] -> [B, T]."""
    rows = []
    for row_logits in logits:
        logp = torch.log_softmax(row_logits.float(), dim=-1)
        rows.append(-(logp.exp() * logp).sum(-1))
    return torch.stack(rows)


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped PPO/GRPO surrogate, token-mean over the mask.

    logprobs: [B, T] under the current policy (with grad); old_logprobs: [B, T] of the policy that
    sampled the tokens; advantages: [B] (one per sequence) or [B, T]; mask: [B, T].
    ratio = exp(logprobs - old_logprobs) is clipped to [1 - clip_eps, 1 + clip_eps_high]
    (clip_eps_high defaults to clip_eps; DAPO's clip-higher sets it larger).
    Returns (loss scalar, metrics) with detached scalar metrics: `clipfrac` (share of tokens where the
    clipped term is the one taken, i.e. clipping removed the gradient), `approx_kl` (k3 estimate of
    KL(old || new): mean of (ratio - 1) - log ratio) and `ratio_mean`.
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
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
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
