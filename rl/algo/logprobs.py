"""Log-probs and entropy of sampled tokens, a chunk of positions at a time.

The logits of a long episode are the learner's largest tensor: [T, V] in float32 is 9.7 GB for one
16K-token sequence over Qwen2.5's 151,936-token vocabulary, before its gradient and the softmax
that the backward pass builds. Here the output head runs on `chunk_tokens` positions at a time and
each chunk's logits are freed once its log-probs are taken; under autograd a chunk is recomputed in
the backward pass (activation checkpointing of the head alone), so neither pass ever holds more than
one chunk of logits. The result equals the one-shot computation: each position's log-softmax only
reads its own logits.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def _chunk(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module,
           temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    logsumexp = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logsumexp
    with torch.no_grad():  # a metric: no gradient, and nothing kept for the backward pass
        # H = logsumexp - sum(p * logits): one [N, V] temporary (p), the product summed in place.
        probs = (logits - logsumexp.unsqueeze(-1)).exp_()
        entropy = logsumexp - torch.linalg.vecdot(probs, logits)
    return picked, entropy


def sampled_logprobs(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, temperature: float = 1.0,
                     chunk_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """log softmax(head(hidden) / temperature)[targets] and the distribution's entropy, in float32.

    hidden: [N, H] (the last hidden state at each scored position); targets: [N] long, the token
    that followed each position -> (logprobs [N], entropy [N], the latter without gradient).
    chunk_tokens > 0 bounds the logits held at once to [chunk_tokens, V]; 0 takes all N at once.
    """
    if hidden.shape[:1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} must have one row "
                         "per position")
    if chunk_tokens <= 0 or hidden.shape[0] <= chunk_tokens:
        return _chunk(hidden, targets, head, temperature)
    recompute = torch.is_grad_enabled()
    logprobs, entropies = [], []
    for h, t in zip(hidden.split(chunk_tokens), targets.split(chunk_tokens), strict=True):
        if recompute:
            lp, ent = checkpoint(_chunk, h, t, head, temperature, use_reentrant=False)
        else:
            lp, ent = _chunk(h, t, head, temperature)
        logprobs.append(lp)
        entropies.append(ent)
    return torch.cat(logprobs), torch.cat(entropies)
