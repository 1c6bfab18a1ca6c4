"""Peak memory of one learner step on a long sequence at a real vocabulary size, with and without
log-probs in chunks (rl/algo/logprobs.py), and where the step's time goes.

    python tests/benchmarks/learner_memory.py [--tokens 8192] [--limit-gib 20]

The model is Qwen2.5-0.5B's shape with random weights (hidden 896, 24 layers, 14 query and 2
key/value heads, MLP 4864, vocabulary 151,936, tied embeddings: 494M parameters), trained in
float32 on the CPU with activation checkpointing (`algo.activation_checkpointing`) in both arms,
ZeRO stage 0 (one rank: ZeRO would shard nothing and adds flat copies of its own), AdamW. Each arm
runs in its own process under an address-space limit (`--limit-gib`), so an arm that needs more
fails with an allocation error instead of taking the machine down; a background thread samples
the process's resident memory every 20 ms through the measured step. Resident memory also counts
what glibc's allocator keeps after torch frees it, so the chunked arm runs twice: with glibc's
defaults and with its mmap threshold fixed at 1 MiB (`MALLOC_MMAP_THRESHOLD_`).

The bound checked is the one of the issue: the step's peak within 3 GiB of the process's memory
before the model was built plus weights, gradients and AdamW's two moments (16 bytes a parameter).
The first arm also times the proximal policy's log-prob pass (a forward without gradient).
Writes tests/benchmarks/results/learner_memory.json (or `--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "learner_memory.json"
GIB = 2**30
QWEN25_05B = {"vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
              "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
              "rope_theta": 1000000.0, "tie_word_embeddings": True}
# glibc keeps freed blocks under its dynamic mmap threshold (up to 32 MiB) in its heap, where they
# fragment: resident memory then counts blocks torch has freed. With the threshold fixed at 1 MiB
# every large tensor is its own mapping, returned to the system when freed.
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": str(2**20)}
ARMS = {"chunked (logits_chunk_mb=256, the default)": ({"logits_chunk_mb": 256.0}, {}),
        "chunked, glibc mmap threshold 1 MiB": ({"logits_chunk_mb": 256.0}, FIXED_MMAP),
        "unchunked (logits_chunk_mb=0), glibc mmap threshold 1 MiB": ({"logits_chunk_mb": 0.0}, FIXED_MMAP)}


def rss() -> int:
    """This process's resident memory in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakSampler:
    """The highest resident memory seen while the `with` block runs."""

    def __enter__(self) -> PeakSampler:
        self.peak, self._stop = rss(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def batch(tokens: int, prompt: int, vocab: int, seed: int = 0):
    import torch

    from rl.learner.learner import TrainBatch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, tokens), generator=g)
    attention = torch.ones(1, tokens, dtype=torch.long)
    loss_mask = (torch.arange(tokens) >= prompt).float().unsqueeze(0)
    return TrainBatch(ids, attention, loss_mask, -11.9 * loss_mask, torch.tensor([1.0]))


def child(model_dir: str, arm: str, tokens: int) -> dict:
    """One arm, in this process: build the learner, a short warm-up step (AdamW's state exists after
    it), then the measured step."""

    from rl.learner.learner import Learner, LearnerConfig

    before_model = rss()
    cfg = LearnerConfig(lr=1e-6, zero_stage=0, micro_batch_size=1, activation_checkpointing=True,
                        peak_tflops=0.0, **ARMS[arm][0])
    learner = Learner(model_dir, cfg)
    params = sum(p.numel() for p in learner.model.parameters())
    vocab = learner.shape.vocab
    learner.train_step(batch(256, 64, vocab, seed=1))
    out = {"arm": arm, "parameters": params, "rss_before_model_gib": before_model / GIB,
           "state_gib": 16 * params / GIB, "rss_after_warmup_gib": rss() / GIB, "tokens": tokens}
    step = batch(tokens, 512, vocab)
    try:
        with PeakSampler() as sampler:
            metrics = learner.train_step(step)
    except (RuntimeError, MemoryError) as e:  # torch's allocator says RuntimeError
        return out | {"ok": False, "error": str(e).splitlines()[0][:300], "peak_before_failure_gib": sampler.peak / GIB}
    out |= {"ok": True, "step_peak_gib": sampler.peak / GIB,
            "timing_s": {k: metrics[k] for k in ("step_s", "forward_s", "backward_s", "optimizer_s")},
            "mfu": metrics["model_flops"] / metrics["step_s"] / learner.peak_flops,
            "peak_tflops": learner.peak_flops / 1e12, "tokens_per_s": tokens / metrics["step_s"]}
    if arm == next(iter(ARMS)):  # once
        started = time.perf_counter()
        learner.proximal_logprobs(step)
        out["timing_s"]["proximal_logprobs_s"] = time.perf_counter() - started
    bound = before_model + 16 * params + 3 * GIB
    return out | {"bound_gib": bound / GIB, "within_bound": sampler.peak <= bound,
                  "over_state_gib": (sampler.peak - before_model - 16 * params) / GIB}


def run_arm(model_dir: Path, arm: str, tokens: int, limit_gib: float) -> dict:
    limit = int(limit_gib * GIB)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.run([sys.executable, __file__, "--child", arm, "--model", str(model_dir), "--tokens",
                           str(tokens)], preexec_fn=cap, capture_output=True, text=True,
                          env=os.environ | ARMS[arm][1])
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line) | {"address_space_limit_gib": limit_gib, "environment": ARMS[arm][1]}
    return {"arm": arm, "ok": False, "address_space_limit_gib": limit_gib,
            "error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--limit-gib", type=float, default=20.0, help="address-space limit of each arm's process")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.child, args.tokens)), flush=True)
        return

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model_dir = Path(tempfile.mkdtemp()) / "qwen2.5-0.5b-shape"
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(**QWEN25_05B)).save_pretrained(model_dir)
    rows = []
    for arm in ARMS:
        rows.append(run_arm(model_dir, arm, args.tokens, args.limit_gib))
        row = rows[-1]
        if row["ok"]:
            print(f"{arm:>44}: step peak {row['step_peak_gib']:.2f} GiB ({row['over_state_gib']:+.2f} over the "
                  f"process + weights/grads/AdamW {row['rss_before_model_gib'] + row['state_gib']:.2f}); "
                  f"{row['timing_s']}")
        else:
            print(f"{arm:>44}: failed: {row['error']}")
    report = {"benchmark": "learner_memory", "model": "Qwen2.5-0.5B shape, random weights", "config": QWEN25_05B,
              "dtype": "float32", "device": "cpu", "tokens": args.tokens, "prompt_tokens": 512,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "memory_gib": os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GIB},
              "results": rows,
              "command": f"python tests/benchmarks/learner_memory.py --tokens {args.tokens} "
                         f"--limit-gib {args.limit_gib}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
