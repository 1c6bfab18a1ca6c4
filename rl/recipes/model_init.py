"""The embedded default policy, made locally: a byte-level BPE tokenizer trained on environment text,
a ChatML chat template with tool calls, and a random-weight Qwen2-architecture model.

Nothing is downloaded. The same texts and `TinyModelConfig` give byte-identical files, and the
directory loads unchanged in `transformers` (`AutoTokenizer`, `AutoModelForCausalLM`) and in vLLM.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from jinja2 import Template
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from tqdm import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from rl.config import PretrainConfig
from rl.recipes.pretrain import pretrain
from rl.recipes.sft import save_model
from rollout.demos import corpus_texts

log = logging.getLogger(__name__)

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # end of turn, the eos the engine stops on
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, IM_END]
# Tool-call tags are single tokens (a tiny model need not learn to spell them) but, as in Qwen2.5,
# not "special": they survive `decode(..., skip_special_tokens=True)` because they are content.
TOOL_CALL_TOKENS = ["<tool_call>", "</tool_call>"]
# transformers >= 5 loads every `qwen2` model's tokenizer as `Qwen2Tokenizer`, which rebuilds the
# pipeline (NFC, this split regex, byte-level) around tokenizer.json's vocab and merges. Training
# with the very same pipeline keeps tokenizer.json, transformers and vLLM in agreement.
QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2.5-style ChatML. Tools are listed as one-line signatures, not JSON schemas: a tiny model
# re-reads the system prompt in every sequence, and the schemas would triple its length. Tool calls
# render exactly as `json.dumps({"name": ..., "arguments": ...})` (default separators, ASCII
# escapes) because the rollout code formats and parses them that way.
# `arguments` may also be a JSON string (OpenAI wire format); it is then inserted as given.
CHAT_TEMPLATE = r"""{%- set has_system = messages and messages[0].role == 'system' %}
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if has_system %}{{- messages[0].content }}{%- else %}{{- 'You are a helpful agent.' }}{%- endif %}
    {{- '\n\n# Tools\n' }}
    {%- for tool in tools %}
        {%- set fn = tool.function if tool.function is defined else tool %}
        {{- '- ' + fn.name + '(' }}
        {%- for name, prop in (fn.parameters.properties or {}).items() %}
            {{- name + ': ' + (prop.type | default('any')) }}{%- if not loop.last %}{{- ', ' }}{%- endif %}
        {%- endfor %}
        {{- '): ' + fn.description + '\n' }}
    {%- endfor %}
    {{- 'Call exactly one tool per turn: <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call><|im_end|>\n' }}
{%- elif has_system %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if loop.first and has_system %}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant\n' }}
        {%- if message.content %}{{- message.content }}{%- endif %}
        {%- for call in message.tool_calls or [] %}
            {%- set fn = call.function if call.function is defined else call %}
            {%- if fn.arguments is string %}{%- set args = fn.arguments %}
            {%- else %}{%- set args = fn.arguments | tojson(ensure_ascii=True) %}{%- endif %}
            {{- '<tool_call>\n{"name": ' + fn.name | tojson(ensure_ascii=True)
                + ', "arguments": ' + args + '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# The template's own text, counted in tokenizer training about as often as real episodes show it,
# so role headers and the tools preamble get compact tokens.
_FRAME_MESSAGES = [
    {"role": "user", "content": "Find it."},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "search", "arguments": {"query": "x"}}}]},
    {"role": "tool", "content": "x"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "answer", "arguments": {"answer": "x"}}}]},
]
_FRAME_TOOLS = [{"type": "function", "function": {
    "name": "search", "description": "Search.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}]


@dataclass
class TinyModelConfig:
    """Shape of the tiny model. head_dim = hidden_size / num_attention_heads (64 by default, which
    vLLM's CPU attention supports)."""

    vocab_size: int = 4096  # target tokenizer size (the trainer stops early on a small corpus)
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 768
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True
    seed: int = 0


@functools.cache
def _template() -> Template:
    # HF's environment settings and its `tojson` (which, unlike jinja's, does not HTML-escape).
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, ensure_ascii=False: json.dumps(x, ensure_ascii=ensure_ascii)
    return env.from_string(CHAT_TEMPLATE)


def render_chat(
    messages: list[dict], tools: list[dict] | None = None, add_generation_prompt: bool = False
) -> str:
    """CHAT_TEMPLATE rendered without a tokenizer (as `apply_chat_template(..., tokenize=False)` does),
    e.g. to build tokenizer training text from whole conversations."""
    return _template().render(messages=messages, tools=tools, add_generation_prompt=add_generation_prompt)


# Whole-word tokens, matched before BPE: every number below 1000 (longer numbers then split into
# 3-digit groups, as cl100k does) and the proper names that recur in the corpus (entity names).
# With BPE alone a name becomes one of several token sequences depending on the character before
# it (' Taga', '"Taga', '=Taga') and numbers split into single digits, so copying a name or a
# number from an observation takes a multi-token induction circuit a tiny model learns only after
# thousands of steps; as one token it is a single attention lookup.
_PROPER_NAME = re.compile(r"\b[A-Z][a-z]+\b")


def whole_words(texts: list[str], min_count: int = 2) -> list[str]:
    """Numbers 0-999 and the capitalised words seen at least `min_count` times in `texts`."""
    counts = Counter(word for text in texts for word in _PROPER_NAME.findall(text))
    names = sorted(word for word, n in counts.items() if n >= min_count)
    return [str(n) for n in range(1000)] + names


def _training_segments(texts: list[str], added: list[str]) -> Iterator[str]:
    """Training text with the added tokens cut out: they are matched before BPE, so merges
    spent on spelling them would be wasted."""
    words = sorted(added, key=len, reverse=True)  # longest first, as the added-token matcher does
    split = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS + TOOL_CALL_TOKENS + words))
    frame = render_chat(_FRAME_MESSAGES, _FRAME_TOOLS, add_generation_prompt=True)
    for text in texts + [frame] * max(1, len(texts) // 4):
        yield from (segment for segment in split.split(text) if segment)


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, model_max_length: int = 2048
) -> PreTrainedTokenizerFast:
    """Byte-level BPE tokenizer with the ChatML special tokens and CHAT_TEMPLATE.

    Any NFC-normalized text (all ASCII text) round-trips exactly through encode/decode; like every
    Qwen2 tokenizer, other text comes back NFC-normalized. Ids: `<|endoftext|>`=0 (pad),
    `<|im_start|>`=1, `<|im_end|>`=2 (eos), then the byte alphabet and merges, then
    `<tool_call>` and `</tool_call>` last; `len(tokenizer) <= vocab_size`. No BOS is added.
    """
    texts = list(texts)
    words = whole_words(texts)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=max(512, vocab_size - len(TOOL_CALL_TOKENS) - len(words)),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_segments(texts, words), trainer=trainer)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_CALL_TOKENS + words])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,  # exact round trip: never rewrite " ." etc.
    )


def _model_config(tokenizer: PreTrainedTokenizerFast, cfg: TinyModelConfig) -> Qwen2Config:
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    return Qwen2Config(
        vocab_size=-(-len(tokenizer) // 64) * 64,  # rounded up: friendlier matmul shapes
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=pad_id,  # no BOS is ever added; Qwen2.5 also points it at <|endoftext|>
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad_id,
        dtype="float32",
    )


def build_tiny_model(out_dir: str | Path, texts: Iterable[str], cfg: TinyModelConfig | None = None) -> Path:
    """Train the tokenizer on `texts`, build a random Qwen2 model and save both to `out_dir`.

    The directory appears complete or not at all (written beside it, then renamed; a previous
    directory at `out_dir` is replaced). Same texts and cfg give byte-identical files.
    """
    cfg = cfg or TinyModelConfig()
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(texts, cfg.vocab_size, model_max_length=cfg.max_position_embeddings)
    config = _model_config(tokenizer, cfg)
    with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's RNG
        torch.manual_seed(cfg.seed)
        model = Qwen2ForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex}"
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex}"
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("tiny model: %d tokens, vocab %d, %.1fM parameters -> %s",
             len(tokenizer), config.vocab_size, n_params / 1e6, out_dir)
    return out_dir


# The tokenizer learns the built-in environments' text, and the configured environment's if it is
# another one (an adapter: env=twx), not every adapter's: their packages are optional.
BUILTIN_ENVS = ("kbsearch", "craft")


def init_model(out_dir: str | Path, env_name: str, vocab_size: int, hidden_size: int, num_layers: int,
               seed: int, pretraining: PretrainConfig | None = None, exclude: frozenset[str] = frozenset(),
               corpus_episodes: int = 1500) -> Path:
    """`turnrl model init`: the tiny model and its tokenizer, trained on `corpus_episodes` expert
    episodes' text of each built-in environment and of `env_name`; then, with `pretraining`,
    synthetic pretraining (rl/recipes/pretrain.py) that never asks a question in `exclude`."""
    texts: list[str] = []
    for env in dict.fromkeys([*BUILTIN_ENVS, env_name]):
        with tqdm(total=corpus_episodes, desc=f"tokenizer corpus ({env})", unit="episode") as bar:
            texts += corpus_texts(env, corpus_episodes, seed, on_episode=bar.update)
    heads = max(1, hidden_size // 64)  # head_dim 64
    shape = TinyModelConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                            num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                            intermediate_size=3 * hidden_size, seed=seed)
    path = build_tiny_model(Path(out_dir), texts, shape)
    if pretraining is not None and pretraining.episodes > 0:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        torch.manual_seed(seed)
        loss = pretrain(model, tokenizer, pretraining, seed, exclude)
        save_model(model, tokenizer, path)
        log.info("pretrained on %d synthetic episodes (final loss %.4f)", pretraining.episodes, loss)
    return path
