"""Weight-sync time against model size: the in-place vLLM update next to one plain copy.

    python tests/benchmarks/weight_sync.py [--sizes 128x2 256x4 512x8] [--repeats 5]

For each tiny-model shape (hidden x layers) it starts a vLLM engine, then times
`engine.update_weights` (serialise the learner's state dict, `collective_rpc` into the worker,
`reload_weights` with vLLM's CPU repacking, prefix-cache reset) against one plain in-memory copy of
the same tensors (`clone()` of every tensor): the floor any sync backend pays. Writes
tests/benchmarks/results/weight_sync.json. The Ray object-store and torch.distributed broadcast
backends of DESIGN.md are not built yet; their rows will join this table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).resolve().parent / "results" / "weight_sync.json"


def build(hidden: int, layers: int, root: Path) -> Path:
    from rl.tiny_model import TinyModelConfig, build_tiny_model
    from rollout.demos import corpus_texts

    heads = max(1, hidden // 64)
    shape = TinyModelConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                            num_key_value_heads=max(1, heads // 2), intermediate_size=3 * hidden)
    return build_tiny_model(root / f"tiny-{hidden}x{layers}", list(corpus_texts("kbsearch", 100)), shape)


async def measure(model_dir: Path, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from rl.config import load_config
    from rl.engines import make_engine

    state = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()
    megabytes = sum(t.numel() * t.element_size() for t in state.values()) / 2**20
    copies = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _ = {k: v.clone() for k, v in state.items()}
        copies.append(time.perf_counter() - t0)
    engine = make_engine(load_config(), str(model_dir), kind="vllm")
    try:
        syncs = []
        for version in range(1, repeats + 1):
            t0 = time.perf_counter()
            await engine.update_weights(state, version=version)
            syncs.append(time.perf_counter() - t0)
    finally:
        await engine.shutdown()
    return {"model": model_dir.name, "megabytes": megabytes, "plain_copy_s": statistics.median(copies),
            "vllm_in_place_s": statistics.median(syncs),
            "sync_over_copy": statistics.median(syncs) / max(statistics.median(copies), 1e-9)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["128x2", "256x4", "512x8"], help="hidden x layers")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp())
    rows = []
    for size in args.sizes:
        hidden, layers = (int(x) for x in size.split("x"))
        rows.append(asyncio.run(measure(build(hidden, layers, root), args.repeats)))
        r = rows[-1]
        print(f"{r['model']:>14} {r['megabytes']:7.1f} MB: vLLM in place {r['vllm_in_place_s'] * 1000:7.1f} ms, "
              f"plain copy {r['plain_copy_s'] * 1000:6.1f} ms ({r['sync_over_copy']:.1f}x)")
    report = {"benchmark": "weight_sync", "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "results": rows, "command": "python tests/benchmarks/weight_sync.py --sizes " + " ".join(args.sizes)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
