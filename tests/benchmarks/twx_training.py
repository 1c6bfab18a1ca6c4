"""A short GRPO run on a TextWorldExpress game against its SFT start, on the same held-out tasks.

    python tests/benchmarks/twx_training.py [--steps 30] [--eval-tasks 100] [OVERRIDE ...]

The game and the knobs are configs/env/twx.yaml: Coin (`twx_coin`, find the coin and take it) in 2
or 4 rooms, SFT on 300 expert demonstrations of 2-room games, GRPO at lr 2e-4. The recipe is the
three commands of `make train` with `env=twx`, in a scratch model cache (`--cache`, as TURNRL_CACHE):

    turnrl model init env=twx     # the tokenizer also learns the game's text
    turnrl sft env=twx
    turnrl train env=twx train.steps=30

`turnrl train` evaluates the SFT policy and the trained one on the same fixed held-out tasks (greedy,
`--eval-tasks` per difficulty). Writes tests/benchmarks/results/twx_training.json: success before and
after (by difficulty), its standard error, the paired task-by-task comparison (tasks only one side
solved, McNemar's exact test), episodes trained, and the wall-clock of every stage.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from argparse import ArgumentParser, RawDescriptionHelpFormatter
from pathlib import Path

from logged_run import run_logged  # tests/benchmarks/, beside this script
from paired import compare_paired, held_out_outcomes  # tests/benchmarks/, beside this script

from rollout.store import read_trajectories

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "tests" / "benchmarks" / "results" / "twx_training.json"


def turnrl(args: list[str], log: Path) -> float:
    """Run one `turnrl` command (its output in `log`); the seconds it took."""
    return run_logged([sys.executable, "-m", "rl.cli", *args], log)


def stderr(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / max(n, 1))


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--eval-tasks", type=int, default=100, help="held-out tasks per difficulty")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench-twx")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "bench-twx" / "cache")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("overrides", nargs="*", help="extra overrides for all three commands")
    args = parser.parse_args()
    os.environ["TURNRL_CACHE"] = str(args.cache)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    args.runs.mkdir(parents=True, exist_ok=True)
    common = ["env=twx", *args.overrides]
    out_dir = args.runs / "train"
    train_args = [*common, f"train.steps={args.steps}", f"train.out_dir={out_dir}",
                  f"env.eval_tasks_per_difficulty={args.eval_tasks}", "logger.wandb_mode=disabled"]

    wall = {"model_init_s": turnrl(["model", "init", *common], args.runs / "model-init.log")}
    print(f"model init: {wall['model_init_s']:.0f} s", flush=True)
    wall["sft_s"] = turnrl(["sft", *common], args.runs / "sft.log")
    print(f"SFT: {wall['sft_s']:.0f} s", flush=True)
    wall["train_s"] = turnrl(["train", *train_args], args.runs / "train.log")
    summary = json.loads((out_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    records = list(read_trajectories([str(out_dir / "trajectories.jsonl")]))
    n = summary["eval/num_tasks"]
    sft, final = summary["eval/success_sft"], summary["eval/success_final"]
    cfg = json.loads((out_dir / "checkpoints" / f"step_{args.steps}" / "config.json").read_text())
    episodes = args.steps * cfg["algo"]["tasks_per_step"] * cfg["algo"]["group_size"]
    report = {
        "benchmark": "twx_training", "env": cfg["env"]["name"], "steps": args.steps, "episodes_trained": episodes,
        "heldout_tasks": n, "success_sft": sft, "success_final": final, "gain_points": 100 * (final - sft),
        "stderr_points": {"sft": 100 * stderr(sft, n), "final": 100 * stderr(final, n)},
        "by_difficulty_sft": summary["eval/success_sft_by_difficulty"],
        "by_difficulty_final": summary["eval/success_final_by_difficulty"],
        "paired": {"a": "SFT", "b": "after RL", **compare_paired(held_out_outcomes(records, 0),
                                                                 held_out_outcomes(records, args.steps))},
        "train_success_per_step": [r["rollout/success_rate"] for r in rows if "rollout/success_rate" in r],
        "wall_s": {**wall, "rl_loop_s": summary["perf/wall_s"], "total_s": sum(wall.values())},
        "settings": {"sft": cfg["sft"], "algo": {k: cfg["algo"][k] for k in ("name", "lr", "group_size",
                                                                            "tasks_per_step")},
                     "rollout": {k: cfg["rollout"][k] for k in ("engine", "max_turns", "max_tokens_per_turn",
                                                                "max_total_tokens", "temperature")}},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "note": "shared 2-core box: other work ran at the same time"},
        "command": "python tests/benchmarks/twx_training.py " + " ".join(sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"held-out success {sft:.3f} (SFT) -> {final:.3f} after {episodes} episodes "
          f"({report['gain_points']:+.1f} points, +-{report['stderr_points']['final']:.1f}; tasks solved only "
          f"after RL {report['paired']['solved_only_by_b']}, only by SFT {report['paired']['solved_only_by_a']}, "
          f"McNemar p={report['paired']['mcnemar_p']:.2g}); "
          f"{report['wall_s']['total_s']:.0f} s in all -> {args.out}")


if __name__ == "__main__":
    main()
