"""Tests for rl/algo/packing.py: token-budget micro-batches and packed forward passes."""

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rl.algo.packing import micro_batches, pack, packed_logits


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


def test_pack_restarts_positions_and_keeps_sequences_apart():
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    packed, positions, attend, flat = pack(ids, mask)
    assert packed.tolist() == [[5, 6, 7, 8, 9]] and positions.tolist() == [[0, 1, 2, 0, 1]]
    assert flat.tolist() == [0, 1, 2, 3, 4]
    expected = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]])
    assert torch.equal(attend[0, 0], expected.bool())


def test_packed_logits_equal_the_padded_forward():
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    lengths = torch.tensor([9, 3, 6])
    mask = (torch.arange(9) < lengths[:, None]).long()
    ids = torch.randint(1, 64, (3, 9)).masked_fill(mask == 0, 0)
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask).logits
        packed = packed_logits(model, ids, mask)
    real = mask.bool()
    torch.testing.assert_close(packed[real], padded[real], rtol=1e-5, atol=1e-5)
    assert torch.all(packed[~real] == 0)
