from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory) -> Path:
    """A random 2-layer Qwen2 with a 64-token vocabulary: enough for learner and checkpoint tests."""
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("qwen2") / "tiny"
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    return path
