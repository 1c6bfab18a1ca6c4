"""The ScalingInter-RL turn-cap schedule against a fixed long cap, on the crafting environment.

    python tests/benchmarks/turn_cap_schedule.py [--steps 24] [--caps 10 20 30] [OVERRIDE ...]

Both runs train the craft SFT policy (made here if missing: `turnrl sft env=craft`) for the same
steps on the same task pool (`curriculum.enabled=true`, no task generation). The fixed run allows
`max(caps)` turns throughout; the scheduled one raises the cap through `--caps`, evenly over the
steps. Curves of rollout success, mean turns and wall-clock per step go to
tests/benchmarks/results/turn_cap_schedule.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "turn_cap_schedule.json"


def turnrl(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "rl.cli", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"turnrl {' '.join(args)} failed:\n{proc.stderr[-4000:]}")


def curves(out: Path) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train/loss" in r]
    wall, elapsed = [], 0.0
    for r in steps:
        elapsed += r["perf/step_s"]
        wall.append(elapsed)
    summary = json.loads((out / "summary.json").read_text())
    return {"step": [r["step"] for r in steps], "success": [r["rollout/success_rate"] for r in steps],
            "mean_turns": [r["rollout/mean_turns"] for r in steps], "wall_s": wall,
            "turn_cap": [r.get("curriculum/turn_cap") for r in steps],
            "heldout_sft": summary["eval/success_sft"], "heldout_final": summary["eval/success_final"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--caps", type=int, nargs="+", default=[10, 20, 30])
    parser.add_argument("--runs", type=Path, default=Path("runs") / "bench-turn-cap")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from rl.config import load_config

    sft = Path(load_config().cache_dir) / "models" / "tiny-sft-craft"
    base = ["env=craft", f"model.path={sft}", "logger.wandb_mode=disabled"]
    if not (sft / "config.json").exists():
        if not Path(load_config().model.base_path, "config.json").exists():
            turnrl("model", "init")
        turnrl("sft", *base)
    common = [*base, f"train.steps={args.steps}", "curriculum.enabled=true", "curriculum.generate_every=0",
              "curriculum.uniform=1", "curriculum.success_band=0", f"rollout.max_turns={max(args.caps)}",
              *args.overrides]
    every = max(args.steps // len(args.caps), 1)
    turnrl("train", *common, f"train.out_dir={args.runs / 'fixed'}")
    turnrl("train", *common, f"train.out_dir={args.runs / 'schedule'}",
           f"curriculum.turn_caps=[{','.join(map(str, args.caps))}]", f"curriculum.turn_cap_every={every}")
    fixed, schedule = curves(args.runs / "fixed"), curves(args.runs / "schedule")
    report = {"benchmark": "turn_cap_schedule", "env": "craft", "caps": args.caps, "every": every,
              "fixed_cap": fixed, "schedule": schedule,
              "wall_s": {"fixed": fixed["wall_s"][-1], "schedule": schedule["wall_s"][-1]},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "command": "python tests/benchmarks/turn_cap_schedule.py " + " ".join(sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(fixed, schedule, args.out.with_suffix(".png"), max(args.caps))
    print(f"fixed cap {max(args.caps)}: {fixed['wall_s'][-1]:.0f} s, held-out {fixed['heldout_final']:.3f}; "
          f"schedule {args.caps}: {schedule['wall_s'][-1]:.0f} s, held-out {schedule['heldout_final']:.3f} "
          f"-> {args.out}")


def plot(fixed: dict, schedule: dict, path: Path, cap: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for run, label in ((fixed, f"fixed cap {cap}"), (schedule, "ScalingInter-RL schedule")):
        axes[0].plot(run["step"], run["success"], label=label)
        axes[1].plot(run["wall_s"], run["success"], label=label)
        axes[2].plot(run["step"], run["mean_turns"], label=label)
    for ax, (x, y) in zip(axes, [("step", "rollout success"), ("wall-clock (s)", "rollout success"),
                                 ("step", "mean turns per episode")], strict=True):
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("craft: turn-cap schedule against a fixed cap")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
