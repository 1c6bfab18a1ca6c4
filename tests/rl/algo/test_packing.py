"""Tests for rl/algo/packing.py: token-budget micro-batches and packed forward passes."""

import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from rl.algo.packing import ATTENTION, hidden_states, micro_batches, pack


def test_micro_batches_by_rows_and_by_token_budget_cover_every_row_once_longest_first():
    lengths = [5, 30, 12, 8, 12, 3]
    assert micro_batches(lengths, 4, 0, packed=False) == [[1, 2, 4, 3], [0, 5]]
    # Padded cost: rows x longest; a row over the budget goes alone.
    assert micro_batches(lengths, 4, 24, packed=False) == [[1], [2, 4], [3, 0, 5]]
    # Packed cost: the sum of lengths.
    assert micro_batches(lengths, 4, 24, packed=True) == [[1], [2, 4], [3, 0, 5]]
    assert micro_batches(lengths, 4, 40, packed=True) == [[1], [2, 4, 3, 0, 5]]  # next fit, in order
    for chunks in (micro_batches(lengths, 2, 0, False), micro_batches(lengths, 1, 17, True)):
        assert sorted(r for c in chunks for r in c) == list(range(len(lengths)))


def test_pack_restarts_positions_and_marks_where_each_sequence_lies():
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    packed, positions, cu_seqlens, flat = pack(ids, mask)
    assert packed.tolist() == [[5, 6, 7, 8, 9]] and positions.tolist() == [[0, 1, 2, 0, 1]]
    assert cu_seqlens.tolist() == [0, 3, 5] and cu_seqlens.dtype == torch.int32
    assert flat.tolist() == [0, 1, 2, 3, 4]


def _model(tmp_path, packed: bool):
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(tmp_path)
    return AutoModelForCausalLM.from_pretrained(tmp_path, **({"attn_implementation": ATTENTION} if packed else {}))


def test_packed_hidden_states_equal_the_padded_forward(tmp_path):
    padded_model, packed_model = _model(tmp_path, False).eval(), _model(tmp_path, True).eval()
    lengths = torch.tensor([9, 3, 6])
    mask = (torch.arange(9) < lengths[:, None]).long()
    ids = torch.randint(1, 64, (3, 9)).masked_fill(mask == 0, 0)
    with torch.no_grad():
        padded = padded_model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        packed = hidden_states(packed_model, ids, mask, packed=True)
        unpacked = hidden_states(packed_model, ids, mask, packed=False)  # the same model, sdpa without packing
    real = mask.bool()
    torch.testing.assert_close(packed[real], padded[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unpacked[real], padded[real])
    assert torch.all(packed[~real] == 0)


def test_segment_attention_runs_each_sequence_alone_and_builds_no_packed_mask(monkeypatch, tmp_path):
    # Its cost is the sum of the squared lengths: every attention call sees one sequence, and no
    # [L, L] mask is ever passed.
    model = _model(tmp_path, True).eval()
    calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        calls.append((q.shape[2], attn_mask))
        return real_sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    mask = (torch.arange(9) < torch.tensor([9, 3, 6])[:, None]).long()
    with torch.no_grad():
        hidden_states(model, torch.randint(1, 64, (3, 9)) * mask, mask, packed=True)
    assert [length for length, _ in calls] == [9, 3, 6] * 2  # 2 layers
    assert all(m is None for _, m in calls)
