"""The ORM against the verifier: how well an ORM trained on a run's trajectories judges a later
policy, and what training on its judgement alone keeps of the verifier-reward run's gain.

    python tests/benchmarks/orm_vs_verifier.py [--steps 30] [--later-steps 10] [--seeds 0,1,2] [--reuse] \
        [--orm-set OVERRIDE ...] [--orm-base-shape 4x256] [OVERRIDE ...]

1. Verifier run: `--steps` GRPO steps from the SFT policy with the verifier's reward; its
   trajectories (every trained and evaluated episode) are stored.
2. Later policy: the same run resumed for `--later-steps` more steps into a second store.
3. ORM: `turnrl orm train` on the first store (20% of its tasks held out), then `turnrl orm eval`
   on the second store: accuracy, AUC, calibration, by training step.
4. ORM-only run: the same config and steps from the SFT policy with `reward.verifier=0
   reward.orm=1`. Both runs' held-out success comes from the same verifier-based evaluation.
With `--seeds`, the verifier and ORM-only runs are repeated with each `train.seed` (the ORM is
trained once, on the first seed's store): the gains compared are the means over seeds, and the two
arms' held-out results are also compared task by task (McNemar's exact test over every (seed, task)).
`--orm-set` overrides apply to the ORM's stages only (the verifier and later runs stay reusable);
`--orm-base-shape 4x256` starts the ORM from an SFT model of its own, larger than the tiny policy
(WebRL's ORM is an LLM of its own too).
Every stage records its arguments and output in --runs (`bench_run.json` in a run's directory,
`orm_train.json`, `orm_eval.json`); `--reuse` reads the stages made with the same arguments instead
of running them again, so adding seeds runs only the new ones.
Writes tests/benchmarks/results/orm_vs_verifier.json.
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

RESULTS = Path(__file__).resolve().parent / "results" / "orm_vs_verifier.json"


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--later-steps", type=int, default=10)
    parser.add_argument("--seeds", default="0", help="train.seed of each pair of runs, comma-separated")
    parser.add_argument("--runs", type=Path, default=Path("runs") / "bench-orm")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--reuse", action="store_true", help="read finished stages in --runs made with the same "
                        "arguments instead of running them again (to add seeds to a benchmark)")
    parser.add_argument("--orm-set", action="append", default=[], metavar="OVERRIDE",
                        help="a config override for the ORM's stages only (its training, its evaluation and the "
                        "ORM-only runs), e.g. orm.balance_classes=true; repeatable")
    parser.add_argument("--orm-base-shape", metavar="LAYERSxHIDDEN",
                        help="start the ORM from its own SFT model of this shape (e.g. 4x256) instead of the "
                        "policy's; built in --runs/orm-base with `turnrl model init` and `turnrl sft`")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every stage")
    args = parser.parse_args()
    common = ["logger.wandb_mode=disabled", *args.overrides]
    orm_args = list(args.orm_set)
    seeds = [int(s) for s in args.seeds.split(",")]
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    from rl.config import load_config

    def turnrl(*cmd: str, record: Path) -> str:
        return turnrl_recorded([*cmd, *common], record, args.reuse)[0]

    def sft_model(path: str | Path, records: Path, *overrides: str) -> None:
        """`turnrl model init` and `turnrl sft` (with `overrides`), unless an SFT model is at `path`."""
        if not Path(path, "config.json").exists():
            turnrl("model", "init", *overrides, record=records / "model_init.json")
            turnrl("sft", *overrides, record=records / "sft.json")

    sft_model(load_config().model.path, args.runs)  # the policy's
    if args.orm_base_shape:
        layers, hidden = (int(n) for n in args.orm_base_shape.split("x"))
        base = args.runs / "orm-base"
        sft_model(base / "sft", base, f"model.num_layers={layers}", f"model.hidden_size={hidden}",
                  f"model.base_path={base}/init", f"model.path={base}/sft")
        orm_args.append(f"orm.base_path={base}/sft")
    verifier = {seed: args.runs / f"verifier-seed{seed}" for seed in seeds}
    orm_only = {seed: args.runs / f"orm-only-seed{seed}" for seed in seeds}
    first, later, orm_path = verifier[seeds[0]], args.runs / "later", args.runs / "orm"
    for seed in seeds:
        turnrl("train", f"train.steps={args.steps}", f"train.seed={seed}", f"train.out_dir={verifier[seed]}",
               record=verifier[seed] / "bench_run.json")
    turnrl("train", f"train.steps={args.steps + args.later_steps}", f"train.seed={seeds[0]}",
           f"train.resume={first}/checkpoints", f"train.out_dir={later}", record=later / "bench_run.json")
    trained = json.loads(turnrl("orm", "train", f"orm.data=[{first}/trajectories.jsonl]", f"orm.path={orm_path}",
                                *orm_args, record=args.runs / "orm_train.json"))
    later_eval = json.loads(turnrl("orm", "eval", f"orm.path={orm_path}", f"orm.eval_data=[{later}/trajectories.jsonl]",
                                   "orm.sources=[train,eval]", *orm_args, record=args.runs / "orm_eval.json"))
    for seed in seeds:
        turnrl("train", f"train.steps={args.steps}", f"train.seed={seed}", "reward.verifier=0", "reward.orm=1",
               f"orm.path={orm_path}", *orm_args, f"train.out_dir={orm_only[seed]}",
               record=orm_only[seed] / "bench_run.json")

    def arm(outs: dict[int, Path]) -> tuple[dict, dict[str, bool]]:
        runs = [{"seed": seed, "success_sft": summary(out)["eval/success_sft"],
                 "success_final": summary(out)["eval/success_final"], "gain": summary(out)["eval/success_gain"]}
                for seed, out in outs.items()]
        outcomes = pooled_held_out_outcomes({seed: list(read_trajectories([out / "trajectories.jsonl"]))
                                             for seed, out in outs.items()}, args.steps)
        return {"gain_mean": statistics.mean(r["gain"] for r in runs), "runs": runs}, outcomes

    (v, v_outcomes), (o, o_outcomes) = arm(verifier), arm(orm_only)
    gain_v, gain_o = v["gain_mean"], o["gain_mean"]
    report = {
        "benchmark": "orm_vs_verifier",
        "steps": args.steps,
        "seeds": seeds,
        "orm_stage_overrides": orm_args,
        "orm_training": trained,
        "orm_on_later_policy": later_eval,
        "verifier_run": v,
        "orm_only_run": o,
        # Meaningful only when the verifier run gains clearly more than evaluation noise.
        "orm_gain_share": gain_o / gain_v if gain_v > 0 else None,
        "paired": {"a": "verifier", "b": "orm_only", **compare_paired(v_outcomes, o_outcomes)},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "command": "python tests/benchmarks/orm_vs_verifier.py " + " ".join(sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"ORM on held-out tasks: accuracy {trained.get('heldout_accuracy', float('nan')):.3f}, "
          f"AUC {trained.get('heldout_auc', float('nan')):.3f}; on the later policy: accuracy "
          f"{later_eval['accuracy']:.3f}, AUC {later_eval['auc']:.3f} (majority {later_eval['majority_accuracy']:.3f})")
    print(f"held-out success gain over SFT, mean of {len(seeds)} seed(s): verifier {gain_v:+.3f}, ORM only "
          f"{gain_o:+.3f} (share {report['orm_gain_share']}) -> {args.out}")

if __name__ == "__main__":
    main()
