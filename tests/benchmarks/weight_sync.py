"""Weight-sync time against model size, per backend, next to one plain copy of the same weights.

    python tests/benchmarks/weight_sync.py [--sizes 128x2 256x4 512x8 1024x8] [--workers 2] [--repeats 5]

For each tiny-model shape (hidden x layers), side by side:
- plain copy: `clone()` of every tensor in memory, the floor any sync pays;
- object_store / broadcast: `RolloutPool.update_weights` to `--workers` Ray rollout workers with
  the HF engine (whose load is one in-place copy), so the time is the transport: one `ray.put`
  read by every worker, or the gloo broadcast from the learner in 256 MB buckets;
- vllm_in_place: one in-process vLLM engine's in-place update (serialise, `collective_rpc`,
  `reload_weights` with the CPU repacking, prefix-cache reset): what each vLLM worker adds.
Writes tests/benchmarks/results/weight_sync.json.
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
    from rl.recipes.model_init import TinyModelConfig, build_tiny_model
    from rollout.demos import corpus_texts

    heads = max(1, hidden // 64)
    shape = TinyModelConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                            num_key_value_heads=max(1, heads // 2), intermediate_size=3 * hidden)
    return build_tiny_model(root / f"tiny-{hidden}x{layers}", list(corpus_texts("kbsearch", 100)), shape)


async def pool_sync_seconds(model_dir: Path, state: dict, backend: str, workers: int, repeats: int) -> float:
    from rl.build import start_rollout
    from rl.config import load_config

    cfg = load_config(["rollout=hf", f"model.path={model_dir}", f"rollout.num_workers={workers}",
                       f"rollout.weight_sync={backend}", "rollout.cpus_per_worker=0"])
    pool = await start_rollout(cfg)
    try:
        await pool.update_weights(state, version=1)  # forms the broadcast group; not timed
        return await median_seconds(lambda i: pool.update_weights(state, version=2 + i), repeats)
    finally:
        await pool.shutdown()


async def median_seconds(call, repeats: int) -> float:
    """The median time of `await call(i)` for i in range(repeats)."""
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        await call(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def measure(model_dir: Path, workers: int, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from rl.build import engine_spec
    from rl.config import load_config

    state = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()
    megabytes = sum(t.numel() * t.element_size() for t in state.values()) / 2**20

    async def plain_copy(i: int) -> None:
        {k: v.clone() for k, v in state.items()}

    copy_s = await median_seconds(plain_copy, repeats)
    engine = engine_spec(load_config(), str(model_dir), kind="vllm").build()
    try:
        vllm_s = await median_seconds(lambda i: engine.update_weights(state, version=1 + i), repeats)
    finally:
        await engine.shutdown()
    row = {"model": model_dir.name, "megabytes": megabytes, "plain_copy_s": copy_s, "vllm_in_place_s": vllm_s}
    for backend in ("object_store", "broadcast"):
        row[f"{backend}_s"] = await pool_sync_seconds(model_dir, state, backend, workers, repeats)
        row[f"{backend}_over_copy"] = row[f"{backend}_s"] / max(copy_s, 1e-9)
    row["broadcast_over_object_store"] = row["broadcast_s"] / row["object_store_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["128x2", "256x4", "512x8", "1024x8"], help="hidden x layers")
    parser.add_argument("--workers", type=int, default=2, help="Ray rollout workers the backends sync to")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import ray

    ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", configure_logging=False,
             log_to_driver=False)
    root = Path(tempfile.mkdtemp())
    rows = []
    for size in args.sizes:
        hidden, layers = (int(x) for x in size.split("x"))
        rows.append(asyncio.run(measure(build(hidden, layers, root), args.workers, args.repeats)))
        r = rows[-1]
        print(f"{r['model']:>14} {r['megabytes']:7.1f} MB: plain copy {r['plain_copy_s'] * 1000:6.1f} ms | "
              f"object store {r['object_store_s'] * 1000:7.1f} ms ({r['object_store_over_copy']:.0f}x) | "
              f"broadcast {r['broadcast_s'] * 1000:7.1f} ms ({r['broadcast_over_copy']:.0f}x; "
              f"{r['broadcast_over_object_store']:.2f}x object store) | vLLM in place "
              f"{r['vllm_in_place_s'] * 1000:7.1f} ms")
    report = {"benchmark": "weight_sync", "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "workers": args.workers, "results": rows,
              "command": f"python tests/benchmarks/weight_sync.py --sizes {' '.join(args.sizes)} "
                         f"--workers {args.workers}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
