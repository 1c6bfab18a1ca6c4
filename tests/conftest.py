"""Shared fixtures: the tiny model is built once per test session, locally, like `turnrl model init`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random-weight tiny Qwen2 model whose tokenizer is trained on both built-in environments."""
    from rl.recipes.model_init import TinyModelConfig, build_tiny_model
    from rollout.demos import corpus_texts

    texts = [t for env in ("kbsearch", "craft") for t in corpus_texts(env, num_tasks=60)]
    out = tmp_path_factory.mktemp("models") / "tiny-base"
    return build_tiny_model(out, texts, TinyModelConfig(hidden_size=128, num_hidden_layers=2,
                                                        num_attention_heads=2, num_key_value_heads=1,
                                                        intermediate_size=256, vocab_size=1024))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)
