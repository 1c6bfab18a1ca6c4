"""Model FLOPs of a learner step and the device's peak, for `perf/mfu`.

Counted as verl's `perf/mfu/actor` and the PaLM paper count them, so the numbers compare: 6 FLOPs
per weight per token in the matrix multiplies (2 forward, 4 backward), and 12 x layers x heads x
head_dim per pair of positions within a sequence for attention's two products, over the full square
(causal masking's saved half not subtracted). The output head is counted on the positions it runs
on: the learner scores policy tokens only (rl/algo/logprobs.py). Embedding look-ups, norms and
activations are not counted; recomputation (activation checkpointing) is not model FLOPs either.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, matched on the device name.
# Checked in this order ("GB200" before "B200").
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0,
                   "A10G": 70.0, "GB200": 2500.0, "B200": 2250.0}


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs of a decoder-only transformer's config."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def of(cls, config) -> ModelShape:
        """From a Hugging Face config (Llama/Qwen2-style names)."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(config.hidden_size, config.num_hidden_layers, heads,
                   getattr(config, "num_key_value_heads", None) or heads, head_dim, config.intermediate_size,
                   config.vocab_size)

    @property
    def layer_matmul_weights(self) -> int:
        """Weights in one layer's matrix multiplies: q, k, v, o and the gated MLP's three."""
        attn = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        return attn + 3 * self.hidden * self.intermediate


def train_flops(shape: ModelShape, sequence_lengths: Sequence[int], scored_tokens: int) -> float:
    """FLOPs of one forward and backward pass over sequences of these lengths, the output head on
    `scored_tokens` positions."""
    tokens = sum(sequence_lengths)
    dense = 6 * shape.layers * shape.layer_matmul_weights * tokens + 6 * shape.hidden * shape.vocab * scored_tokens
    attention = 12 * shape.layers * shape.heads * shape.head_dim * sum(n * n for n in sequence_lengths)
    return float(dense + attention)


def measured_matmul_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.5) -> float:
    """FLOP/s of a square matrix multiply on `device`, timed for about `seconds`."""
    size = 2048
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * size**3 * n / (time.perf_counter() - start)


def peak_flops(device: torch.device, dtype: torch.dtype, peak_tflops: float = 0.0) -> float:
    """The peak FLOP/s that `perf/mfu` divides by, per learner rank: `peak_tflops` when set, else the
    data-sheet bf16 peak of a known GPU, else (CPUs, other GPUs or float32) a measured matmul rate."""
    if peak_tflops > 0:
        return peak_tflops * 1e12
    if device.type == "cuda" and dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(device)
        for key, tflops in GPU_PEAK_TFLOPS.items():
            if key in name:
                log.info("perf/mfu: against %s's dense bf16 peak, %.0f TFLOP/s (algo.peak_tflops sets another)",
                         name, tflops)
                return tflops * 1e12
    rate = measured_matmul_flops(device, dtype)
    log.info("perf/mfu: against a measured %s matmul rate on %s, %.2f TFLOP/s (no data-sheet peak known; "
             "algo.peak_tflops sets one)", str(dtype).removeprefix("torch."), device, rate / 1e12)
    return rate
