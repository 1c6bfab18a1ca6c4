"""Asynchronous against synchronous training, and per-episode against turn-batched rollout.

    python tests/benchmarks/async_vs_sync.py [--steps 20] [--staleness 0 2 4] [OVERRIDE ...]

Every tool call sleeps for a log-normal time (`rollout.simulated_tool_latency_s`: mean
$TURNRL_BENCH_LATENCY_MS, default 200 ms; sigma 1: a long tail), so episodes take very different
times, as agentic rollouts with real tools do. Training runs generate in the Ray rollout workers
(`rollout.num_workers`, 1 unless overridden), as `turnrl train` does. Part 1 trains the same
config (decoupled PPO) for the same number of samples (steps x tasks x group) at each
`train.max_staleness`, one after another in this process, and reports the wall-clock of the RL
steps and the final held-out success (with its binomial standard error).
Part 2 runs the same episodes with one coroutine per episode (turnrl's agent loop) and
turn-batched (all episodes advance one turn together, the slowest tool call of a turn holding back
every episode). Numbers go to tests/benchmarks/results/async_vs_sync.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).resolve().parent / "results" / "async_vs_sync.json"
LATENCY_MS = float(os.environ.get("TURNRL_BENCH_LATENCY_MS", "200"))
# Every tool call takes a log-normal extra time (sigma 1) with this mean: long-tailed episodes.
COMMON = ["env.name=kbsearch", f"rollout.simulated_tool_latency_s={LATENCY_MS / 1000}", "rollout.tool_threads=256"]


def ensure_sft_model() -> str:
    from rl.cli import main as turnrl
    from rl.config import load_config

    path = Path(load_config().model.path)
    if not (path / "config.json").exists():
        turnrl(["model", "init"])
        turnrl(["sft"])
    return str(path)


def train_run(model: str, staleness: int, steps: int, out_dir: Path, extra: list[str]) -> dict:
    from rl.config import load_config
    from rl.recipes.train import train

    cfg = load_config([f"model.path={model}", *COMMON, f"train.steps={steps}",
                       f"train.max_staleness={staleness}", f"train.out_dir={out_dir}", "logger.wandb_mode=disabled",
                       f"train.save_every={steps}",
                       # Decoupled PPO in every run (at staleness 0 it equals on-policy GRPO).
                       "algo.importance_weights=token", *extra])
    summary = train(cfg)
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    step_rows = [r for r in rows if "perf/step_s" in r]
    n = summary["eval/num_tasks"]
    final = summary["eval/success_final"]
    return {
        "max_staleness": staleness,
        "rl_seconds": sum(r["perf/step_s"] for r in step_rows),
        "trained_episodes": steps * cfg.algo.tasks_per_step * cfg.algo.group_size,
        "mean_wait_s": sum(r["perf/wait_s"] for r in step_rows) / len(step_rows),
        "mean_train_s": sum(r["perf/train_s"] for r in step_rows) / len(step_rows),
        "max_staleness_seen": max(r["rollout/staleness_max"] for r in step_rows),
        "groups": summary["rollout/groups"],
        "success_sft": summary["eval/success_sft"],
        "success_final": final,
        "success_final_stderr": math.sqrt(final * (1 - final) / n),
        "heldout_tasks": n,
    }


class TurnBarrier:
    """An engine wrapper that holds every generation until each live episode has asked for its next
    turn: episodes advance one turn together (the turn-batched rollout of synchronous trainers)."""

    def __init__(self, engine, episodes: int) -> None:
        self.engine, self.live, self.waiting = engine, episodes, []
        self.version = engine.version

    async def generate(self, prompt_ids, sampling):
        released = asyncio.get_running_loop().create_future()
        self.waiting.append(released)
        self._release_if_all_waiting()
        await released
        return await self.engine.generate(prompt_ids, sampling)

    def leave(self) -> None:
        self.live -= 1
        self._release_if_all_waiting()

    def _release_if_all_waiting(self) -> None:
        if self.waiting and len(self.waiting) >= self.live:
            for fut in self.waiting:
                fut.set_result(None)
            self.waiting = []


async def rollout_modes(model: str, episodes: int) -> list[dict]:
    from concurrent.futures import ThreadPoolExecutor

    from transformers import AutoTokenizer

    from curricula.tasks import UniformTaskSampler
    from rl.build import engine_spec, episode_limits
    from rl.config import load_config
    from rollout.agent_loop import run_episode
    from rollout.chat import ChatFormat
    from rollout.engines.base import SamplingConfig
    from rollout.envs import get_env

    cfg = load_config([f"model.path={model}", *COMMON])
    engine = engine_spec(cfg, model).build()
    chat = ChatFormat(AutoTokenizer.from_pretrained(model), get_env("kbsearch").tools)
    tasks = UniformTaskSampler("kbsearch", [1, 2, 3], 0, seed_limit=10_000_000).sample(episodes)
    executor = ThreadPoolExecutor(256)
    results = []
    try:
        # Warm-up (first requests compile and allocate), so that neither mode pays for it.
        await asyncio.gather(*(run_episode(engine, chat, t, SamplingConfig(seed=i), episode_limits(cfg),
                                           executor=executor) for i, t in enumerate(tasks[:4])))
        for mode in ("per-episode", "turn-batched"):
            barrier = TurnBarrier(engine, len(tasks)) if mode == "turn-batched" else None

            async def one(i, task, barrier=barrier):
                try:
                    return await run_episode(barrier or engine, chat, task, SamplingConfig(seed=i),
                                             episode_limits(cfg), executor=executor)
                finally:
                    if barrier is not None:
                        barrier.leave()

            t0 = time.perf_counter()
            trajs = await asyncio.gather(*(one(i, t) for i, t in enumerate(tasks)))
            seconds = time.perf_counter() - t0
            results.append({"mode": mode, "episodes": len(trajs), "seconds": seconds,
                            "turns": sum(len(t.turns) for t in trajs),
                            "episodes_per_s": len(trajs) / seconds})
    finally:
        executor.shutdown(wait=False)
        await engine.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="policy to start from (default: the SFT tiny model, made if missing)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--staleness", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--episodes", type=int, default=64, help="episodes of the rollout-mode comparison")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every training run")
    args = parser.parse_args()
    model = args.model or ensure_sft_model()
    runs_dir = Path("runs") / "bench-async-vs-sync"
    runs = [train_run(model, s, args.steps, runs_dir / f"staleness{s}", args.overrides) for s in args.staleness]
    modes = asyncio.run(rollout_modes(model, args.episodes))
    sync = next((r for r in runs if r["max_staleness"] == 0), runs[0])
    for r in runs:
        r["speedup_over_sync"] = sync["rl_seconds"] / r["rl_seconds"]
    per_episode, turn_batched = modes
    report = {
        "benchmark": "async_vs_sync",
        "model": model,
        "tool_latency": {"distribution": "log-normal", "mean_s": LATENCY_MS / 1000, "sigma": 1.0},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "training": runs,
        "rollout_modes": modes,
        "per_episode_over_turn_batched": turn_batched["seconds"] / per_episode["seconds"],
        "command": "python tests/benchmarks/async_vs_sync.py " + " ".join(
            [f"--steps {args.steps}", "--staleness " + " ".join(map(str, args.staleness)),
             f"--episodes {args.episodes}", *args.overrides]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for r in runs:
        print(f"max_staleness {r['max_staleness']}: RL {r['rl_seconds']:6.1f} s  ({r['speedup_over_sync']:.2f}x sync)  "
              f"held-out {r['success_final']:.3f} +- {r['success_final_stderr']:.3f} "
              f"(SFT {r['success_sft']:.3f}); staleness seen {r['max_staleness_seen']}, groups {r['groups']}")
    for m in modes:
        print(f"{m['mode']:>12}: {m['seconds']:6.1f} s for {m['episodes']} episodes")
    print(f"per-episode / turn-batched rollout speed: {report['per_episode_over_turn_batched']:.2f}x -> {args.out}")


if __name__ == "__main__":
    main()
