"""Tests for rl/recipes/model_init.py: tokenizer, chat template, model files, determinism, vLLM loading."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from rl.recipes.model_init import (
    CHAT_TEMPLATE,
    TinyModelConfig,
    build_tiny_model,
    render_chat,
    train_tokenizer,
)

SMALL = TinyModelConfig(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        num_key_value_heads=1, intermediate_size=256, max_position_embeddings=1024)

def _tool(name: str, description: str, arg: str) -> dict:
    parameters = {"type": "object", "properties": {arg: {"type": "string"}}, "required": [arg]}
    function = {"name": name, "description": description, "parameters": parameters}
    return {"type": "function", "function": function}


TOOLS = [
    _tool("lookup", "Facts about one entity.", "entity"),
    _tool("answer", "Give the final answer.", "answer"),
]


def _call(name: str, arguments: dict) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def _conversation(rng: random.Random) -> list[dict]:
    """A kbsearch-like episode: look up a person, then answer where they were born."""
    syll = ["ta", "von", "kel", "mar", "ri", "do", "sa", "len", "or", "bis"]
    name = "".join(rng.choice(syll) for _ in range(2)).capitalize()
    city = "".join(rng.choice(syll) for _ in range(2)).capitalize()
    age = rng.randint(18, 90)
    return [
        {"role": "system", "content": "You answer questions with tools."},
        {"role": "user", "content": f"Where was {name} born?"},
        {"role": "assistant", "content": "", "tool_calls": [_call("lookup", {"entity": name})]},
        {"role": "tool", "content": f"{name}: type=person; age={age}; born_in={city}"},
        {"role": "assistant", "content": "", "tool_calls": [_call("answer", {"answer": city})]},
        {"role": "tool", "content": "correct"},
    ]


def _corpus(n: int = 40, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [render_chat(_conversation(rng), TOOLS) for _ in range(n)]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", _corpus(), SMALL)


@pytest.fixture(scope="module")
def tokenizer(built):
    return AutoTokenizer.from_pretrained(built)


def test_saved_dir_loads_in_transformers_with_matching_vocab(built, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(built)
    assert model.config.vocab_size % 64 == 0 and model.config.vocab_size >= len(tokenizer)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert model.config.eos_token_id == tokenizer.eos_token_id == im_end
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert tokenizer.pad_token == "<|endoftext|>"
    assert model.dtype == torch.float32
    ids = torch.tensor([tokenizer.encode("Tavon: type=person; age=34", add_special_tokens=False)])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_chat_text_round_trips_exactly(tokenizer):
    texts = _corpus(5, seed=1) + ["  odd\tspacing\n\n ünïcödé ✓ 🙂 {\"a\": [1, 2]} <tool_call>x</tool_call>"]
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids, skip_special_tokens=False) == text
    assert tokenizer.encode("hi", add_special_tokens=True) == tokenizer.encode("hi", add_special_tokens=False)


def test_transformers_tokenizes_exactly_like_the_saved_tokenizer_json(built, tokenizer):
    # transformers 5 rebuilds Qwen2 tokenizers from vocab+merges with its own pipeline; the trained
    # tokenizer must use that same pipeline or training-time and load-time token ids disagree.
    raw = Tokenizer.from_file(str(built / "tokenizer.json"))
    for text in _corpus(5, seed=2) + ["x  y\n\n  12345 it's  <tool_call>\n{\"a\": 1}"]:
        expected = raw.encode(text, add_special_tokens=False).ids
        assert tokenizer.encode(text, add_special_tokens=False) == expected


def test_markup_tokens_are_single_tokens(tokenizer):
    for tok in ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>", "</tool_call>"]:
        assert len(tokenizer.encode(tok, add_special_tokens=False)) == 1, tok
    # Tool-call tags are content, not control tokens: they survive skipping special tokens.
    ids = tokenizer.encode('<tool_call>\n{"name": "a"}\n</tool_call><|im_end|>', add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == '<tool_call>\n{"name": "a"}\n</tool_call>'


def test_chat_template_renders_tools_calls_and_observations_exactly(tokenizer):
    messages = [
        {"role": "user", "content": "Where was Tavon born?"},
        {"role": "assistant", "content": "Let me look.",
         "tool_calls": [_call("lookup", {"entity": "Tavon Reed"})]},
        {"role": "tool", "content": "Tavon: type=person; age=34; born_in=Kelmar"},
        {"role": "assistant", "content": None, "tool_calls": [_call("answer", {"answer": "Kelmar", "n": 3})]},
    ]
    got = tokenizer.apply_chat_template(messages, tools=TOOLS[:1], tokenize=False, add_generation_prompt=True)
    expected = (
        "<|im_start|>system\nYou are a helpful agent.\n\n# Tools\n"
        "- lookup(entity: string): Facts about one entity.\n"
        "Call exactly one tool per turn: <tool_call>\n"
        '{"name": ..., "arguments": {...}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nWhere was Tavon born?<|im_end|>\n"
        "<|im_start|>assistant\nLet me look.<tool_call>\n"
        '{"name": "lookup", "arguments": {"entity": "Tavon Reed"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>tool\nTavon: type=person; age=34; born_in=Kelmar<|im_end|>\n"
        "<|im_start|>assistant\n<tool_call>\n"
        '{"name": "answer", "arguments": {"answer": "Kelmar", "n": 3}}\n</tool_call><|im_end|>\n'
        "<|im_start|>assistant\n"
    )
    assert got == expected
    assert render_chat(messages, TOOLS[:1], add_generation_prompt=True) == expected


def test_chat_template_system_message_with_and_without_tools(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    plain = tokenizer.apply_chat_template(messages, tokenize=False)
    assert plain == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
    assert tokenizer.apply_chat_template(messages[1:], tokenize=False) == "<|im_start|>user\nhi<|im_end|>\n"
    with_tools = tokenizer.apply_chat_template(messages, tools=TOOLS, tokenize=False)
    assert with_tools.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n- ")
    assert with_tools.count("<|im_start|>system") == 1
    assert with_tools.endswith("</tool_call><|im_end|>\n<|im_start|>user\nhi<|im_end|>\n")


@pytest.mark.parametrize("arguments", [
    {"query": "who was born in Kelmar"},
    {"entity": "Tavon", "limit": 3, "ok": True, "x": None, "f": 1.5, "list": [1, "a b"]},
    {"text": 'quote " and \\ backslash, ünïcödé'},
    {},
])
def test_rendered_tool_call_equals_json_dumps(tokenizer, arguments):
    messages = [{"role": "assistant", "content": "", "tool_calls": [_call("search", arguments)]}]
    got = tokenizer.apply_chat_template(messages, tokenize=False)
    call = json.dumps({"name": "search", "arguments": arguments})
    assert got == f"<|im_start|>assistant\n<tool_call>\n{call}\n</tool_call><|im_end|>\n"


def test_tool_call_arguments_given_as_json_string_are_inserted_verbatim(tokenizer):
    messages = [{"role": "assistant", "content": "", "tool_calls": [_call("search", '{"query": "x"}')]}]
    got = tokenizer.apply_chat_template(messages, tokenize=False)
    assert '{"name": "search", "arguments": {"query": "x"}}' in got


def test_chat_template_is_saved_with_the_tokenizer(tokenizer):
    assert tokenizer.chat_template == CHAT_TEMPLATE


def test_tokenizer_training_is_deterministic_and_respects_vocab_size():
    texts = _corpus(20)
    a, b = train_tokenizer(texts, 1600), train_tokenizer(iter(texts), 1600)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert len(a) <= 1600
    assert a.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_texts_and_config_give_identical_files(tmp_path, built):
    again = build_tiny_model(tmp_path / "again", _corpus(), SMALL)
    for name in ["model.safetensors", "tokenizer.json", "config.json", "tokenizer_config.json"]:
        assert _digest(again / name) == _digest(built / name), name
    other_seed = build_tiny_model(tmp_path / "seed1", _corpus(), dataclasses.replace(SMALL, seed=1))
    assert _digest(other_seed / "model.safetensors") != _digest(built / "model.safetensors")


def test_build_replaces_an_existing_dir_and_leaves_no_temp_dirs(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    build_tiny_model(out, _corpus(10), SMALL)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_numbers_and_recurring_names_are_single_tokens_wherever_they_stand():
    texts = _corpus(20) + ["What is the age of Tavon? Tavon: age=34; born_in=Kelmar"] * 2
    tok = train_tokenizer(texts, 1600)
    for text, word in [("age of Tavon?", "Tavon"), ('{"entity": "Tavon"}', "Tavon"), ("born_in=Kelmar", "Kelmar"),
                       ("age=34;", "34"), ("population 895", "895")]:
        pieces = [tok.decode([i]) for i in tok.encode(text)]
        assert word in pieces, pieces
        assert tok.decode(tok.encode(text)) == text
    assert [tok.decode([i]) for i in tok.encode("1895")] == ["189", "5"]


def test_model_init_plays_model_corpus_episodes_of_each_environment(tmp_path, monkeypatch):
    import rl.recipes.model_init as model_init
    from rl.cli import main

    played: dict[str, int] = {}
    real = model_init.corpus_texts

    def counting(env_name, num_tasks, seed=0, on_episode=None):
        def count():
            played[env_name] = played.get(env_name, 0) + 1
            on_episode()

        return real(env_name, num_tasks, seed, on_episode=count)

    monkeypatch.setattr(model_init, "corpus_texts", counting)
    monkeypatch.setenv("TURNRL_CACHE", str(tmp_path / "cache"))
    main(["model", "init", f"model.base_path={tmp_path / 'base'}", "model.hidden_size=64", "model.num_layers=1",
          "model.vocab_size=1024", "model.corpus_episodes=12", "env.name=craft"])
    assert played == {"kbsearch": 12, "craft": 12}
    assert (tmp_path / "base" / "config.json").exists()
