"""Self-evolving curriculum against a static pool: both start from a pool of easy tasks only and
are evaluated on a fixed held-out set of harder tasks.

    python tests/benchmarks/curriculum_ablation.py [--steps 30] [--seeds 0,1,2] [--eval-difficulties 2,3,4] \
        [OVERRIDE ...]

Both runs train the SFT policy for the same steps with `curriculum.enabled=true` and a starting
pool of difficulty-1 tasks; the static run never adds tasks (`curriculum.generate_every=0`), the
self-evolving one adds variants of failed and mastered tasks every `--generate-every` steps. The
held-out set is the harder difficulties (`--eval-difficulties`, `--eval-tasks` each), the same
tasks for both runs, so they are also compared task by task (McNemar's exact test). One RL run of
the tiny policy is noisy (its held-out success swings by many points with the seed), so
`--seeds` repeats the pair with each `train.seed` (another starting pool and sampling, the same
held-out tasks): the gain reported is the mean over seeds, and the paired test pools every
(seed, task). The
environment is the config's (kbsearch) or an override: for TextWorldExpress Coin, with the twx SFT
policy of tests/benchmarks/twx_training.py,

    TURNRL_CACHE=runs/bench-twx/cache python tests/benchmarks/curriculum_ablation.py --seeds 0,1,2,3,4 \
        --generate-every 2 --eval-difficulties 2 --eval-tasks 100 \
        --out tests/benchmarks/results/curriculum_ablation_twx.json env=twx \
        curriculum.parents_per_generation=16 curriculum.band=[0.1,0.6] \
        algo.drop_uniform_groups=true algo.refill_uniform_groups=true

Writes tests/benchmarks/results/curriculum_ablation.json (or `--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

from logged_run import turnrl_recorded  # tests/benchmarks/, beside this script
from paired import compare_paired, pooled_held_out_outcomes  # tests/benchmarks/, beside this script

from rollout.store import read_trajectories

RESULTS = Path(__file__).resolve().parent / "results" / "curriculum_ablation.json"


def run(name: str, out: Path, args: list[str], reuse: bool) -> dict:
    """One training run into `out`; with `reuse`, a finished run there made with the same arguments
    is read instead (its `bench_run.json` records them)."""
    _, wall_s = turnrl_recorded(["train", f"train.out_dir={out}", *args], out / "bench_run.json", reuse)
    summary = json.loads((out / "summary.json").read_text())
    print(f"{name}: {wall_s:.0f} s, held-out {summary['eval/success_final']:.3f} "
          f"(SFT {summary['eval/success_sft']:.3f}) {summary['eval/success_final_by_difficulty']}", flush=True)
    return {"wall_s": wall_s, "success_sft": summary["eval/success_sft"],
            "success_final": summary["eval/success_final"],
            "by_difficulty_sft": summary["eval/success_sft_by_difficulty"],
            "by_difficulty_final": summary["eval/success_final_by_difficulty"],
            "curriculum": summary.get("curriculum")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seeds", default="0", help="train.seed of each pair of runs, comma-separated")
    parser.add_argument("--generate-every", type=int, default=3)
    parser.add_argument("--eval-difficulties", default="2,3,4", help="held-out difficulties, comma-separated")
    parser.add_argument("--eval-tasks", type=int, default=30, help="held-out tasks per difficulty")
    parser.add_argument("--runs", type=Path, default=Path("runs") / "bench-curriculum")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--reuse", action="store_true", help="read finished runs in --runs made with the same "
                        "arguments instead of running them again (to add seeds to a benchmark)")
    parser.add_argument("overrides", nargs="*", help="config overrides for both runs (curriculum.* ones shape "
                        "the self-evolving run; the static one never generates)")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    seeds = [int(s) for s in args.seeds.split(",")]
    common = [f"train.steps={args.steps}", "logger.wandb_mode=disabled", "curriculum.enabled=true",
              "env.train_difficulties=[1]", f"env.eval_difficulties=[{args.eval_difficulties}]",
              f"env.eval_tasks_per_difficulty={args.eval_tasks}", "curriculum.initial_tasks=64",
              *args.overrides]
    arms = {"static": ["curriculum.generate_every=0"],
            "self_evolving": [f"curriculum.generate_every={args.generate_every}"]}
    outs = {arm: {seed: args.runs / f"{arm}-seed{seed}" for seed in seeds} for arm in arms}
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    for seed in seeds:  # the held-out tasks are the same for every seed; the pool and sampling differ
        for arm, extra in arms.items():
            runs[arm].append({"seed": seed, **run(f"{arm} (seed {seed})", outs[arm][seed],
                                                   [*common, f"train.seed={seed}", *extra], args.reuse)})
    outcomes = {arm: pooled_held_out_outcomes({seed: list(read_trajectories([out / "trajectories.jsonl"]))
                                               for seed, out in outs[arm].items()}, args.steps) for arm in arms}
    gains = [100 * (e["success_final"] - s["success_final"])
             for s, e in zip(runs["static"], runs["self_evolving"], strict=True)]
    report = {"benchmark": "curriculum_ablation", "steps": args.steps, "seeds": seeds,
              **{arm: {"success_sft": runs[arm][0]["success_sft"],
                       "success_final_mean": statistics.mean(r["success_final"] for r in runs[arm]),
                       "runs": runs[arm]} for arm in arms},
              "heldout_gain_points": statistics.mean(gains), "heldout_gain_points_by_seed": gains,
              "paired": {"a": "static", "b": "self_evolving", **compare_paired(outcomes["static"],
                                                                               outcomes["self_evolving"])},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "command": "python tests/benchmarks/curriculum_ablation.py " + " ".join(sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    paired = report["paired"]
    print(f"self-evolving - static on the harder held-out tasks: {report['heldout_gain_points']:+.1f} points, "
          f"mean of {len(seeds)} seed(s) {[round(g, 1) for g in gains]} (task-runs solved only by self-evolving "
          f"{paired['solved_only_by_b']}, only by static {paired['solved_only_by_a']}, McNemar "
          f"p={paired['mcnemar_p']:.2g}) -> {args.out}")


if __name__ == "__main__":
    main()
