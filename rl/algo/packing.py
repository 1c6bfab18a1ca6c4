"""Sequence packing and token-budget micro-batches for the learner.

Agentic trajectories have long-tailed lengths: a micro-batch of right-padded rows spends most of
its compute on padding when one episode is ten times longer than the rest. Two remedies, used
together or apart (`algo.pack_sequences`, `algo.micro_batch_tokens`):

- micro-batches cut by a token budget instead of a row count (verl's dynamic batch size), so a
  micro-batch of long episodes holds few and one of short episodes many;
- packing: the rows of a micro-batch are concatenated into one row, each keeping its own
  positions (`position_ids` restart at 0) and attending only to itself (a block-diagonal causal
  mask), so no padding is computed at all. The logits are scattered back to the padded layout,
  so the loss code downstream is unchanged and the result equals the padded forward.

The block-diagonal mask goes to PyTorch's scaled-dot-product attention (transformers' `sdpa`, the
default): exact on every device, but its cost grows with the square of the packed length.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_rows(token_rows: Sequence[Sequence[int]], pad_id: int, *value_rows: Sequence[Sequence[float]]
             ) -> tuple[torch.Tensor, ...]:
    """Right-padded rows: (input_ids [N, T] long, attention_mask [N, T] long (1 on real tokens), and
    one float32 [N, T] tensor per `value_rows`, each row aligned with its tokens and 0 after them)."""
    n, width = len(token_rows), max(len(r) for r in token_rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    values = [torch.zeros((n, width), dtype=torch.float32) for _ in value_rows]
    for i, tokens in enumerate(token_rows):
        k = len(tokens)
        input_ids[i, :k] = torch.tensor(tokens, dtype=torch.long)
        attention_mask[i, :k] = 1
        for out, rows in zip(values, value_rows, strict=True):
            out[i, :k] = torch.tensor(rows[i], dtype=torch.float32)
    return input_ids, attention_mask, *values


def micro_batches(lengths: list[int], max_rows: int, max_tokens: int, packed: bool) -> list[list[int]]:
    """Row indices cut into micro-batches, longest rows first.

    max_tokens = 0: `max_rows` rows each. Otherwise as many rows as fit in `max_tokens`: counted as
    the sum of lengths when `packed`, else rows x the longest length (what padding computes); a row
    longer than the budget goes alone.
    """
    order = sorted(range(len(lengths)), key=lambda r: -lengths[r])
    if max_tokens <= 0:
        return [order[i:i + max_rows] for i in range(0, len(order), max_rows)]
    chunks: list[list[int]] = []
    for row in order:
        if chunks:
            chunk = chunks[-1]
            cost = sum(lengths[r] for r in chunk) + lengths[row] if packed else (len(chunk) + 1) * lengths[chunk[0]]
            if cost <= max_tokens:
                chunk.append(row)
                continue
        chunks.append([row])
    return chunks


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Right-padded rows [B, T] as one packed row.

    Returns packed_ids [1, L], position_ids [1, L], a boolean block-diagonal causal mask [1, 1, L, L]
    (True: may attend) and the flat indices [L] of the packed tokens in the [B * T] layout.
    """
    lengths = attention_mask.sum(1)
    flat = attention_mask.reshape(-1).nonzero().squeeze(-1)  # right padding: each row's tokens in order
    packed_ids = input_ids.reshape(-1)[flat].unsqueeze(0)
    seq = torch.repeat_interleave(torch.arange(len(lengths), device=input_ids.device), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    positions = torch.arange(len(flat), device=input_ids.device) - starts[seq]
    length = len(flat)
    causal = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()
    mask = causal & (seq[:, None] == seq[None, :])
    return packed_ids, positions.unsqueeze(0), mask[None, None], flat


def packed_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The logits [B, T, V] of `model` on right-padded rows, computed on one packed row (zeros at padding)."""
    packed_ids, positions, mask, flat = pack(input_ids, attention_mask)
    logits = model(input_ids=packed_ids, position_ids=positions, attention_mask=mask).logits[0]  # [L, V]
    b, t = input_ids.shape
    out = logits.new_zeros(b * t, logits.shape[-1])
    return out.index_copy(0, flat, logits).view(b, t, -1)
