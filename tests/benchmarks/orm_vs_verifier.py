"""The ORM against the verifier: how well an ORM trained on a run's trajectories judges a later
policy, and what training on its judgement alone keeps of the verifier-reward run's gain.

    python tests/benchmarks/orm_vs_verifier.py [--steps 30] [--later-steps 10] [OVERRIDE ...]

1. Verifier run: `--steps` GRPO steps from the SFT policy with the verifier's reward; its
   trajectories (every trained and evaluated episode) are stored.
2. Later policy: the same run resumed for `--later-steps` more steps into a second store.
3. ORM: `turnrl orm train` on the first store (20% of its tasks held out), then `turnrl orm eval`
   on the second store: accuracy, AUC, calibration, by training step.
4. ORM-only run: the same config and steps from the SFT policy with `reward.verifier=0
   reward.orm=1`. Both runs' held-out success comes from the same verifier-based evaluation.
Writes tests/benchmarks/results/orm_vs_verifier.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "orm_vs_verifier.json"


def turnrl(*args: str) -> str:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rl.cli", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"turnrl {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    print(f"turnrl {args[0]} {args[1] if len(args) > 1 else ''}: {time.perf_counter() - t0:.0f} s", flush=True)
    return proc.stdout


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--later-steps", type=int, default=10)
    parser.add_argument("--runs", type=Path, default=Path("runs") / "bench-orm")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every training run")
    args = parser.parse_args()
    common = ["logger.wandb_mode=disabled", *args.overrides]
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    from rl.config import load_config

    if not Path(load_config().model.path, "config.json").exists():
        turnrl("model", "init", *common)
        turnrl("sft", *common)
    verifier, later, orm_run = args.runs / "verifier", args.runs / "later", args.runs / "orm-only"
    orm_path = args.runs / "orm"
    turnrl("train", f"train.steps={args.steps}", f"train.out_dir={verifier}", *common)
    turnrl("train", f"train.steps={args.steps + args.later_steps}", f"train.resume={verifier}/checkpoints",
           f"train.out_dir={later}", *common)
    trained = json.loads(turnrl("orm", "train", f"orm.data=[{verifier}/trajectories.jsonl]", f"orm.path={orm_path}",
                                *common))
    later_eval = json.loads(turnrl("orm", "eval", f"orm.path={orm_path}", f"orm.eval_data=[{later}/trajectories.jsonl]",
                                   "orm.sources=[train,eval]", *common))
    turnrl("train", f"train.steps={args.steps}", "reward.verifier=0", "reward.orm=1", f"orm.path={orm_path}",
           f"train.out_dir={orm_run}", *common)

    v, o = summary(verifier), summary(orm_run)
    gain_v, gain_o = v["eval/success_gain"], o["eval/success_gain"]
    report = {
        "benchmark": "orm_vs_verifier",
        "steps": args.steps,
        "orm_training": trained,
        "orm_on_later_policy": later_eval,
        "verifier_run": {"success_sft": v["eval/success_sft"], "success_final": v["eval/success_final"],
                         "gain": gain_v},
        "orm_only_run": {"success_sft": o["eval/success_sft"], "success_final": o["eval/success_final"],
                         "gain": gain_o},
        # Meaningful only when the verifier run gains clearly more than evaluation noise.
        "orm_gain_share": gain_o / gain_v if gain_v > 0 else None,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "command": "python tests/benchmarks/orm_vs_verifier.py " + " ".join(sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"ORM on held-out tasks: accuracy {trained.get('heldout_accuracy', float('nan')):.3f}, "
          f"AUC {trained.get('heldout_auc', float('nan')):.3f}; on the later policy: accuracy "
          f"{later_eval['accuracy']:.3f}, AUC {later_eval['auc']:.3f} (majority {later_eval['majority_accuracy']:.3f})")
    print(f"held-out success gain over SFT: verifier {gain_v:+.3f}, ORM only {gain_o:+.3f} -> {args.out}")


if __name__ == "__main__":
    main()
