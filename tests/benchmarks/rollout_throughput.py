"""Generated tokens/s of the vLLM engine against the HF engine: same model, same episodes.

    python tests/benchmarks/rollout_throughput.py [--model DIR] [--episodes 64]

Runs the same seeded kbsearch episodes (sampling at temperature 1, the training setting) through
each engine in turn, side by side in one run, and writes the numbers to
tests/benchmarks/results/rollout_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).resolve().parent / "results" / "rollout_throughput.json"


async def measure(kind: str, model: str, episodes: int, max_turns: int) -> dict:
    from transformers import AutoTokenizer

    from curricula.tasks import heldout_tasks
    from rl.build import engine_spec, episode_limits
    from rl.config import load_config
    from rollout.agent_loop import run_episodes
    from rollout.chat import ChatFormat
    from rollout.engines.base import SamplingConfig
    from rollout.envs import get_env

    cfg = load_config([f"rollout.max_turns={max_turns}"])
    t0 = time.perf_counter()
    engine = engine_spec(cfg, model, kind=kind).build()
    startup = time.perf_counter() - t0
    chat = ChatFormat(AutoTokenizer.from_pretrained(model), get_env("kbsearch").tools)
    per = max(1, episodes // 3)
    tasks = heldout_tasks("kbsearch", [1, 2, 3], per, seed_offset=cfg.env.eval_seed_offset)
    try:
        await run_episodes(engine, chat, tasks[:2], SamplingConfig(seed=1), episode_limits(cfg))  # warm-up
        t0 = time.perf_counter()
        trajs = await run_episodes(engine, chat, tasks, SamplingConfig(seed=0), episode_limits(cfg))
        elapsed = time.perf_counter() - t0
    finally:
        await engine.shutdown()
    generated = sum(t.num_generated_tokens for t in trajs)
    return {"engine": kind, "episodes": len(trajs), "generated_tokens": generated,
            "turns": sum(len(t.turns) for t in trajs), "seconds": elapsed,
            "tokens_per_s": generated / elapsed, "startup_s": startup}


def default_model() -> str:
    from rl.config import load_config

    sft = Path(load_config().model.path)
    if (sft / "config.json").exists():
        return str(sft)
    from rl.recipes.model_init import TinyModelConfig, build_tiny_model
    from rollout.demos import corpus_texts

    out = Path(tempfile.mkdtemp()) / "tiny-base"
    texts = [t for env in ("kbsearch", "craft") for t in corpus_texts(env, 200)]
    return str(build_tiny_model(out, texts, TinyModelConfig()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory (default: the SFT tiny model, else a fresh tiny one)")
    parser.add_argument("--episodes", type=int, default=48)
    parser.add_argument("--max-turns", type=int, default=6)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    model = args.model or default_model()
    results = [asyncio.run(measure(kind, model, args.episodes, args.max_turns)) for kind in ("vllm", "hf")]
    vllm, hf = results
    report = {
        "benchmark": "rollout_throughput",
        "model": model,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "results": results,
        "vllm_over_hf_tokens_per_s": vllm["tokens_per_s"] / hf["tokens_per_s"],
        "command": "python tests/benchmarks/rollout_throughput.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out" and v is not None),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for r in results:
        print(f"{r['engine']:>5}: {r['tokens_per_s']:8.1f} tokens/s  ({r['generated_tokens']} tokens, "
              f"{r['episodes']} episodes, {r['seconds']:.1f}s; start-up {r['startup_s']:.1f}s)")
    print(f"vLLM / HF throughput: {report['vllm_over_hf_tokens_per_s']:.2f}x  -> {args.out}")


if __name__ == "__main__":
    main()
