"""Sequence packing and token-budget micro-batches for the learner.

Agentic trajectories have long-tailed lengths: a micro-batch of right-padded rows spends most of
its compute on padding when one episode is ten times longer than the rest. Two remedies, used
together or apart (`algo.pack_sequences`, `algo.micro_batch_tokens`):

- micro-batches cut by a token budget instead of a row count (verl's dynamic batch size), so a
  micro-batch of long episodes holds few and one of short episodes many;
- packing: the rows of a micro-batch are concatenated into one row, each keeping its own
  positions (`position_ids` restart at 0) and attending only to itself, so no padding is computed
  at all. The hidden states are scattered back to the padded layout, so the loss code downstream
  is unchanged and the result equals the padded forward.

Packed rows go through `segment_attention`, registered with transformers as the attention
implementation "turnrl_segments": causal scaled-dot-product attention run on each sequence's span
of the packed row, so its cost grows with the sum of the squared lengths, not the square of the
packed length, and no [L, L] mask is built. The model is loaded with it (`attn_implementation=
ATTENTION`); without the packing arguments it is transformers' own sdpa attention.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask


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


ATTENTION = "turnrl_segments"  # the attn_implementation name of `segment_attention`


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Right-padded rows [B, T] as one packed row.

    Returns packed_ids [1, L], position_ids [1, L] (restarting at 0 in each sequence), the
    cumulative sequence lengths [B + 1] (int32, flash-attention's cu_seqlens: sequence i is
    packed[cu[i]:cu[i + 1]]) and the flat indices [L] of the packed tokens in the [B * T] layout.
    """
    lengths = attention_mask.sum(1)
    flat = attention_mask.reshape(-1).nonzero().squeeze(-1)  # right padding: each row's tokens in order
    packed_ids = input_ids.reshape(-1)[flat].unsqueeze(0)
    seq = torch.repeat_interleave(torch.arange(len(lengths), device=input_ids.device), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    positions = torch.arange(len(flat), device=input_ids.device) - starts[seq]
    cu_seqlens = torch.nn.functional.pad(torch.cumsum(lengths, 0), (1, 0)).to(torch.int32)
    return packed_ids, positions.unsqueeze(0), cu_seqlens, flat


def segment_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      cu_seq_lens_q: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """Causal attention within each packed sequence (transformers' attention-function signature).

    query: [1, heads, L, D], key and value: [1, kv_heads, L, D], cu_seq_lens_q: [S + 1] ->
    ([1, L, heads, D], None). Without cu_seq_lens_q (an unpacked call) it is transformers' sdpa.
    """
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    bounds = cu_seq_lens_q.tolist()
    gqa = query.shape[1] != key.shape[1]
    parts = [torch.nn.functional.scaled_dot_product_attention(
        query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], dropout_p=dropout, is_causal=True, scale=scaling,
        enable_gqa=gqa) for s, e in zip(bounds[:-1], bounds[1:], strict=True) if e > s]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, segment_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the mask of unpacked calls, as for sdpa


def hidden_states(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  packed: bool) -> torch.Tensor:
    """The last hidden states [B, T, H] of a causal LM on right-padded rows (zeros at padding when
    `packed`: then the rows run as one packed row through `segment_attention`).

    The output head runs on one position only (`logits_to_keep=1`): the caller applies it to the
    positions it scores (rl/algo/logprobs.py). Through the model's own forward, so DeepSpeed's
    ZeRO-3 hooks on the whole model fire as in any forward.
    """
    if not packed:
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1)
        return out.hidden_states[-1]
    packed_ids, positions, cu_seqlens, flat = pack(input_ids, attention_mask)
    longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    # A dict of masks is taken as already built: no [L, L] mask is made for the packed row.
    out = model(input_ids=packed_ids, position_ids=positions,
                attention_mask={"full_attention": None, "sliding_attention": None}, output_hidden_states=True,
                logits_to_keep=1, cu_seq_lens_q=cu_seqlens, cu_seq_lens_k=cu_seqlens, max_length_q=longest,
                max_length_k=longest)
    hidden = out.hidden_states[-1][0]  # [L, H]
    b, t = input_ids.shape
    return hidden.new_zeros(b * t, hidden.shape[-1]).index_copy(0, flat, hidden).view(b, t, -1)
