"""Learner throughput on long-tailed episode lengths: padded row micro-batches against token-budget
micro-batches and sequence packing (rl/algo/packing.py), side by side on the same batch.

    python tests/benchmarks/learner_packing.py [--size 256x4] [--sequences 64] [--repeats 3] [--dtype bfloat16]

The batch has log-normal lengths (median 200 tokens, sigma 0.8, capped at 1024), as multi-turn
episodes do. Each mode runs `--repeats` learner steps (ZeRO-2, one rank) on the same batch; the
table reports trained tokens per second (padding not counted) and the padding share each mode
computes. On a GPU the learner runs there (DeepSpeed's accelerator); `--dtype bfloat16` is for GPUs
only. Writes tests/benchmarks/results/learner_packing.json (or `--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "learner_packing.json"

MODES = {
    "padded rows (micro_batch_size=8)": {"micro_batch_size": 8},
    "padded rows (micro_batch_size=16, the default)": {"micro_batch_size": 16},
    "token budget, padded (micro_batch_tokens=2048)": {"micro_batch_tokens": 2048},
    "token budget, packed (micro_batch_tokens=2048, pack_sequences)": {"micro_batch_tokens": 2048,
                                                                       "pack_sequences": True},
}


def long_tailed_batch(n: int, vocab: int, seed: int = 0):
    import torch

    from rl.learner.learner import TrainBatch

    rng = random.Random(seed)
    lengths = [min(1024, max(16, int(rng.lognormvariate(5.3, 0.8)))) for _ in range(n)]
    t = max(lengths)
    g = torch.Generator().manual_seed(seed)
    attention_mask = (torch.arange(t) < torch.tensor(lengths).unsqueeze(1)).long()
    input_ids = torch.randint(1, vocab, (n, t), generator=g).masked_fill(attention_mask == 0, 0)
    loss_mask = attention_mask.float() * (torch.arange(t) >= 8).float()
    old = -6.0 * loss_mask
    return TrainBatch(input_ids, attention_mask, loss_mask, old, torch.randn(n, generator=g)), lengths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="256x4", help="hidden x layers of the random Qwen2 model")
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", help="float32, or bfloat16 on a GPU")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rl.algo.packing import micro_batches
    from rl.learner.learner import Learner, LearnerConfig

    hidden, layers = (int(x) for x in args.size.split("x"))
    model_dir = Path(tempfile.mkdtemp()) / f"qwen2-{args.size}"
    Qwen2ForCausalLM(Qwen2Config(vocab_size=4096, hidden_size=hidden, intermediate_size=3 * hidden,
                                 num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                                 num_key_value_heads=max(1, hidden // 128))).save_pretrained(model_dir)
    batch, lengths = long_tailed_batch(args.sequences, 4096)
    real_tokens = sum(lengths)
    rows = []
    for name, cut in MODES.items():
        cfg = LearnerConfig(lr=1e-5, dtype=args.dtype, **cut)
        learner = Learner(model_dir, cfg)
        learner.train_step(batch)  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            flops = learner.train_step(batch)["model_flops"]
            times.append(time.perf_counter() - t0)
        chunks = micro_batches(lengths, cfg.micro_batch_size, cfg.micro_batch_tokens, cfg.pack_sequences)
        computed = sum(sum(lengths[r] for r in c) if cfg.pack_sequences else len(c) * max(lengths[r] for r in c)
                       for c in chunks)
        seconds = statistics.median(times)
        mfu = flops / seconds / learner.peak_flops
        rows.append({"mode": name, "config": cut, "micro_batches": len(chunks), "step_s": seconds,
                     "tokens_per_s": real_tokens / seconds, "padding_share": 1 - real_tokens / computed, "mfu": mfu})
        print(f"{name:>66}: {seconds:6.2f} s/step, {real_tokens / seconds:8.0f} tokens/s, "
              f"{len(chunks):3d} micro-batches, {rows[-1]['padding_share']:.0%} padding computed, MFU {mfu:.1%}")
        learner_peak = learner.peak_flops
        del learner
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["speedup_over_padded_rows"] = row["tokens_per_s"] / base
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    report = {"benchmark": "learner_packing", "model": f"Qwen2 random {args.size}", "dtype": args.dtype,
              "peak_flops": learner_peak,
              "device": device,
              "sequences": args.sequences, "real_tokens": real_tokens,
              "lengths": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "results": rows,
              "command": f"python tests/benchmarks/learner_packing.py --size {args.size} --sequences "
                         f"{args.sequences} --repeats {args.repeats} --dtype {args.dtype}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
