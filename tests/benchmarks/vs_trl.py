"""The race: turnrl against TRL's GRPOTrainer, same model, same environment, same machine, same samples.

    .venv/bin/python tests/benchmarks/vs_trl.py [--envs twx,kbsearch] [--steps 32] [--eval-every 4]
        [--target-gain 0.10] [--eval-tasks 50]

Needs `pip install trl==1.16.0` (the `bench` extra). For each environment (`twx`: the TextWorldExpress
Coin game of configs/env/twx.yaml; `kbsearch`), the script:

1. makes the tiny model and its SFT start once (`turnrl model init` and `turnrl sft`, cached under
   `--cache`); both trainers start from that one SFT directory;
2. runs `turnrl train` (one vLLM rollout worker in Ray, DeepSpeed learner, synchronous GRPO), then
   TRL's `GRPOTrainer` (this script with `--trl-worker`), one after the other, each in its own
   process launched by this script, on the same box, with the same number of policy samples:
   `--steps` optimizer steps of 8 tasks x 8 episodes = 64 multi-turn episodes each, and a checkpoint
   every `--eval-every` steps;
3. after both have finished (so evaluation never competes with training for the CPU), evaluates
   every checkpoint of both, and the SFT start, with turnrl's held-out evaluation (`rl/evaluate.py`:
   the same fixed seeded tasks, greedy, the same agent loop and limits, one vLLM engine whose
   weights are swapped per checkpoint);
4. writes tests/benchmarks/results/vs_trl.json: per trainer and environment the success curve
   against policy samples and wall-clock, the wall-clock at which held-out success first reached the
   target (SFT success + `--target-gain`), the success reached, and which trainer got there first.

Wall-clock is measured from each trainer's process launch to the moment its checkpoint was on disk
(turnrl: the checkpoint's meta.json; TRL: its `on_save` callback), so start-up (Ray and vLLM for
turnrl, imports and model load for both) counts; the time inside the training loop alone is
reported too. The box has 2 cores and is shared with other work: timings are noisy.

How TRL is configured (`trl_config` below; TRL 1.16.0 has no CPU guide, so this follows its
`GRPOConfig`/`TrainingArguments` documentation for a machine without accelerator):
- `use_cpu=True`, `bf16=False` (fp32, as turnrl on CPU), `use_vllm=False` (TRL's vLLM modes need
  a GPU; generation is transformers' `generate` on the training model), `gradient_checkpointing=False`
  (TRL turns it on by default to save GPU memory; the 0.9M model needs none);
- multi-turn tools through `environment_factory` (one environment instance per rollout, its
  methods the tools, `get_reward()` the verifier), `max_tool_calling_iterations = rollout.max_turns - 1`;
- the same GRPO as turnrl's run: `num_generations=8`, 64 completions per optimizer step
  (`per_device_train_batch_size=16`, `gradient_accumulation_steps=4`, one generation batch per step),
  `num_iterations=1` (on-policy), `beta=0` (no KL, as `algo.kl_coef=0`), `epsilon=0.2`,
  `scale_rewards="group"`, `loss_type="dapo"` (token-mean, as `algo.loss_agg=token-mean`), AdamW at
  turnrl's `algo.lr` with a constant schedule and no warm-up, `max_grad_norm=1.0`, temperature 1,
  top_p 1, `max_completion_length = rollout.max_total_tokens - longest prompt`, and turnrl's
  per-turn cap through `generation_kwargs={"max_new_tokens": rollout.max_tokens_per_turn}` (64;
  without it every turn of the batch may run to `max_completion_length`);
- the same training tasks in the same order (turnrl's `UniformTaskSampler` with the run's seed,
  `shuffle_dataset=False`), checkpoints with optimizer state (`save_only_model=False`), as turnrl's.

What TRL's tool loop cannot express, and how it was bridged:
- tools are Python methods whose signature and docstring become the schema: the environment's
  `ToolSpec`s are turned into methods with those names, argument names and descriptions. TRL lists
  them alphabetically, turnrl (and so the SFT data) in the environment's order; for kbsearch the
  two differ, and a first run trained at reward 0 on a system prompt the SFT model had never seen.
  The script puts TRL's tool list (the private `GRPOTrainer._env_tools`) in the environment's order
  and checks at start-up that every training prompt is turnrl's, token for token;
- the tiny model's chat template is not one TRL knows: the response parser is set by hand to TRL's
  Qwen3 `response_template` (the same `<tool_call>` JSON syntax), as TRL's error message asks;
- the episode: TRL stops an episode when a turn has no parseable tool call, at
  `max_tool_calling_iterations`, or when the tokens reach `max_completion_length`. It has no notion of
  the environment being done, no per-turn token cap of its own (set through `generation_kwargs`
  above) and no limit on consecutive failed calls (turnrl: 3); a malformed call ends TRL's episode where turnrl
  answers it with an error observation. After a win (twx) or an answer (kbsearch) the environment
  answers further calls with "the episode is over" until TRL stops; the reward, the environment's
  verifier, is fixed at that point, so only time is lost. Evaluation uses turnrl's loop for both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

from logged_run import run_logged  # tests/benchmarks/, beside this script

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "tests" / "benchmarks" / "results" / "vs_trl.json"
GROUP_SIZE, TASKS_PER_STEP = 8, 8

# Per environment: the config group and the SFT settings of the start both trainers share.
ENVS = {
    "twx": {"overrides": ["env=twx"], "sft": []},  # configs/env/twx.yaml: 300 demos, lr 5e-4
    "kbsearch": {"overrides": ["env=kbsearch"], "sft": []},  # the defaults of `make train`
}
# The RL settings both trainers use (TRL's are read from this same turnrl config).
RL = [f"algo.group_size={GROUP_SIZE}", f"algo.tasks_per_step={TASKS_PER_STEP}", "train.seed=0"]


def prepare(env: str, cache: Path, runs: Path) -> dict:
    """The tiny model and its SFT start for `env` (made once, cached)."""
    env_cache = cache / env
    os.environ["TURNRL_CACHE"] = str(env_cache)
    sft = env_cache / "models" / "tiny-sft"
    times = {}
    if not (env_cache / "models" / "tiny-base" / "config.json").exists():
        times["model_init_s"] = run_logged([sys.executable, "-m", "rl.cli", "model", "init", *ENVS[env]["overrides"]],
                                   runs / f"{env}-model-init.log")
    if not (sft / "config.json").exists():
        times["sft_s"] = run_logged([sys.executable, "-m", "rl.cli", "sft", *ENVS[env]["overrides"], *ENVS[env]["sft"]],
                            runs / f"{env}-sft.log")
    return {"sft_model": str(sft), "sft_overrides": ENVS[env]["sft"], **times}


def run_turnrl(env: str, sft: str, out: Path, steps: int, every: int, runs: Path) -> dict:
    """`turnrl train` in its own process; checkpoint times from launch."""
    cmd = [sys.executable, "-m", "rl.cli", "train", *ENVS[env]["overrides"], *RL, f"model.path={sft}",
           f"train.out_dir={out}", f"train.steps={steps}", f"train.save_every={every}",
           "env.eval_tasks_per_difficulty=1",  # its own before/after evaluation: minimal, ours is offline
           "logger.wandb_mode=disabled", "logger.save_trajectories=false", "logger.log_samples_every=0"]
    launch = time.time()
    wall = run_logged(cmd, runs / f"{env}-turnrl.log")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step_s = {r["step"]: r["perf/step_s"] for r in rows if "perf/step_s" in r}
    ckpts = []
    for step in range(every, steps + 1, every):
        path = out / "checkpoints" / f"step_{step}"
        ckpts.append({"step": step, "samples": step * GROUP_SIZE * TASKS_PER_STEP, "path": str(path / "hf"),
                      "wall_s": (path / "meta.json").stat().st_mtime - launch,
                      "train_loop_s": sum(s for k, s in step_s.items() if k <= step)})
    success = [r["rollout/success_rate"] for r in rows if "rollout/success_rate" in r]
    return {"wall_s": wall, "checkpoints": ckpts, "train_success_per_step": success, "command": " ".join(cmd[2:])}


def run_trl(env: str, sft: str, out: Path, steps: int, every: int, runs: Path) -> dict:
    """TRL's GRPOTrainer in its own process (this script, --trl-worker); checkpoint times from launch."""
    spec = {"env": env, "sft": sft, "out": str(out), "steps": steps, "every": every}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--trl-worker", json.dumps(spec)]
    launch = time.time()
    wall = run_logged(cmd, runs / f"{env}-trl.log")
    record = json.loads((out / "timing.json").read_text())
    ckpts = [{"step": s["step"], "samples": s["step"] * GROUP_SIZE * TASKS_PER_STEP,
              "path": str(out / f"checkpoint-{s['step']}"), "wall_s": s["time"] - launch,
              "train_loop_s": s["time"] - record["train_begin"]} for s in record["saves"]]
    return {"wall_s": wall, "checkpoints": ckpts, "train_success_per_step": record["train_reward_per_step"],
            "trl_config": record["trl_config"], "max_completion_length": record["max_completion_length"]}


# ---------------------------------------------------------------------------------------------- TRL side


def trl_env_class(env_name: str) -> type:
    """A TRL environment (`environment_factory`) around a turnrl environment: one method per tool,
    with the tool's name, arguments and description, so TRL renders turnrl's prompt exactly."""
    from rollout.envs import get_env
    from rollout.types import Task, ToolCall

    env_cls = get_env(env_name)
    py_types = {"string": "str", "integer": "int", "number": "float", "boolean": "bool"}
    lines = ["class TRLEnv:",
             "    env = None",
             "    def reset(self, task, **kwargs):",
             "        if self.env is not None:",
             "            self.env.close()",
             "        self.env = ENV(Task(**json.loads(task)))",
             "        return self.env.reset()",
             "    def get_reward(self):",
             "        return float(self.env.verify())"]
    for spec in env_cls.tools:  # TRL reads a tool's schema from its signature and docstring
        props = spec.parameters.get("properties", {})
        args = "".join(f", {p}: {py_types[v['type']]}" for p, v in props.items())
        doc = spec.description + ("\n\nArgs:\n" + "\n".join(f"    {p}: {p}" for p in props) if props else "")
        kwargs = ", ".join(f"{p!r}: {p}" for p in props)
        lines += [f"    def {spec.name}(self{args}) -> str:", f"        {doc!r}",
                  f"        return self.env.step(ToolCall({spec.name!r}, {{{kwargs}}})).observation"]
    namespace: dict = {}
    exec("\n".join(lines), {"json": json, "Task": Task, "ToolCall": ToolCall, "ENV": env_cls}, namespace)
    return namespace["TRLEnv"]


def trl_worker(spec: dict) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.chat_template_utils import qwen3_template

    from curricula.tasks import UniformTaskSampler
    from rl.config import load_config
    from rollout.chat import ChatFormat
    from rollout.envs import get_env

    os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
    cfg = load_config([*ENVS[spec["env"]]["overrides"], *RL, f"model.path={spec['sft']}"])
    torch.manual_seed(cfg.train.seed)
    out = Path(spec["out"])
    steps, every = spec["steps"], spec["every"]
    # The tasks turnrl's run trains on, in its order (one task per group, drawn as groups start).
    sampler = UniformTaskSampler(cfg.env.name, cfg.env.train_difficulties, cfg.train.seed,
                                 seed_limit=cfg.env.eval_seed_offset)
    tasks = [sampler.sample(1)[0] for _ in range(steps * TASKS_PER_STEP)]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": ""}], "task": json.dumps(asdict(t))}
                                 for t in tasks])
    tokenizer = AutoTokenizer.from_pretrained(spec["sft"])
    tokenizer.padding_side = "left"
    tokenizer.response_template = qwen3_template  # our template's tool calls are Qwen's <tool_call> JSON
    env_cls = trl_env_class(cfg.env.name)

    # TRL renders each prompt itself; only its longest one is needed before the trainer exists.
    chat = ChatFormat(tokenizer, get_env(cfg.env.name).tools)
    probe = env_cls()
    firsts = [probe.reset(task=json.dumps(asdict(task))) for task in tasks]
    max_completion = cfg.rollout.max_total_tokens - max(len(chat.prompt_ids(first)) for first in firsts)

    config = {
        "output_dir": str(out), "use_cpu": True, "bf16": False, "use_vllm": False, "gradient_checkpointing": False,
        "learning_rate": cfg.algo.lr, "lr_scheduler_type": "constant", "warmup_steps": 0, "weight_decay": 0.0,
        "max_grad_norm": cfg.algo.grad_clip, "num_generations": GROUP_SIZE, "per_device_train_batch_size": 16,
        "gradient_accumulation_steps": GROUP_SIZE * TASKS_PER_STEP // 16, "num_iterations": 1,
        "beta": cfg.algo.kl_coef, "epsilon": cfg.algo.clip_eps, "scale_rewards": "group", "loss_type": "dapo",
        "temperature": cfg.rollout.temperature, "top_p": cfg.rollout.top_p,
        "max_completion_length": max_completion, "max_tool_calling_iterations": cfg.rollout.max_turns - 1,
        # TRL has no per-turn cap: every turn may run to max_completion_length, and HF generate runs a
        # batch until its longest member stops. Its documented override sets turnrl's cap instead.
        "generation_kwargs": {"max_new_tokens": cfg.rollout.max_tokens_per_turn},
        "max_steps": steps, "save_strategy": "steps", "save_steps": every, "save_only_model": False,
        "shuffle_dataset": False, "logging_steps": 1, "report_to": "none", "seed": cfg.train.seed,
        "dataloader_num_workers": 0,
    }
    timing: dict = {"saves": [], "train_reward_per_step": [], "trl_config": config,
                    "max_completion_length": max_completion}

    class Timing(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            timing["train_begin"] = time.time()

        def on_save(self, args, state, control, **kwargs):
            timing["saves"].append({"step": state.global_step, "time": time.time()})

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                timing["train_reward_per_step"].append(logs["reward"])

    trainer = GRPOTrainer(model=spec["sft"], args=GRPOConfig(**config), train_dataset=dataset,
                          processing_class=tokenizer, environment_factory=env_cls, callbacks=[Timing()])
    # TRL lists an environment's tools alphabetically (inspect.getmembers); turnrl, and so the SFT
    # data, in the environment's order. Put TRL's list (what it renders prompts with) in that order,
    # then check that every training prompt is turnrl's, token for token.
    order = [tool.name for tool in get_env(cfg.env.name).tools]
    trainer._env_tools[None].sort(key=lambda tool: order.index(tool.__name__))
    for task, first in zip(tasks, firsts, strict=True):
        trl_ids = tokenizer.apply_chat_template([{"role": "user", "content": first}], tools=trainer._env_tools[None],
                                                add_generation_prompt=True, tokenize=True, return_dict=False)
        if trl_ids != chat.prompt_ids(first):
            raise SystemExit(f"TRL renders task {task.id} differently from turnrl")
    trainer.train()
    (out / "timing.json").write_text(json.dumps(timing, indent=2))


# ---------------------------------------------------------------------------------------------- evaluation


def evaluate_all(env: str, sft: str, paths: list[str], per_difficulty: int) -> list[dict]:
    """turnrl's held-out evaluation of each model directory in `paths`, on one vLLM engine."""
    from transformers import AutoModelForCausalLM

    from curricula.tasks import heldout_tasks
    from rl.build import make_rollout_worker
    from rl.config import load_config
    from rl.evaluate import evaluate

    cfg = load_config([*ENVS[env]["overrides"], *RL, f"model.path={sft}",
                       f"env.eval_tasks_per_difficulty={per_difficulty}"])
    tasks = heldout_tasks(cfg.env.name, cfg.env.eval_difficulties, cfg.env.eval_tasks_per_difficulty,
                          cfg.env.eval_seed_offset)

    async def run() -> list[dict]:
        rollout = make_rollout_worker(cfg)
        results = []
        try:
            for version, path in enumerate(paths):
                state = AutoModelForCausalLM.from_pretrained(path).state_dict()
                await rollout.update_weights(state, version=version + 1)
                result, _ = await evaluate(rollout, tasks, desc=f"eval {Path(path).parent.name}/{Path(path).name}")
                results.append({"success": result.success, "by_difficulty": result.success_by_difficulty,
                                "num_tasks": result.num_tasks})
        finally:
            await rollout.shutdown()
        return results

    return asyncio.run(run())


def time_to_target(curve: list[dict], target: float) -> dict:
    hit = next((p for p in curve if p["success"] >= target), None)
    return {"reached": hit is not None, "wall_s": hit["wall_s"] if hit else None,
            "train_loop_s": hit["train_loop_s"] if hit else None, "samples": hit["samples"] if hit else None,
            "best_success": max(p["success"] for p in curve), "final_success": curve[-1]["success"]}


def race(env: str, args: argparse.Namespace) -> dict:
    runs = args.runs / env
    runs.mkdir(parents=True, exist_ok=True)
    start = prepare(env, args.cache, runs)
    sft = start["sft_model"]
    print(f"[{env}] SFT start ready: {start}", flush=True)
    trainers = {"turnrl": run_turnrl(env, sft, runs / "turnrl", args.steps, args.eval_every, runs)}
    print(f"[{env}] turnrl done in {trainers['turnrl']['wall_s']:.0f} s", flush=True)
    trainers["trl"] = run_trl(env, sft, runs / "trl", args.steps, args.eval_every, runs)
    print(f"[{env}] TRL done in {trainers['trl']['wall_s']:.0f} s", flush=True)

    paths = [sft] + [c["path"] for t in trainers.values() for c in t["checkpoints"]]
    evals = evaluate_all(env, sft, paths, args.eval_tasks)
    sft_eval, rest = evals[0], iter(evals[1:])
    target = min(1.0, sft_eval["success"] + args.target_gain)
    out = {"sft": {**start, "success": sft_eval["success"], "by_difficulty": sft_eval["by_difficulty"]},
           "target_success": target, "heldout_tasks": sft_eval["num_tasks"]}
    for name, trainer in trainers.items():
        curve = [{"samples": 0, "wall_s": 0.0, "train_loop_s": 0.0, "success": sft_eval["success"]}]
        for ckpt in trainer["checkpoints"]:
            result = next(rest)
            curve.append({"samples": ckpt["samples"], "step": ckpt["step"], "wall_s": ckpt["wall_s"],
                          "train_loop_s": ckpt["train_loop_s"], "success": result["success"],
                          "by_difficulty": result["by_difficulty"]})
        trainer["curve"] = curve
        trainer["to_target"] = time_to_target(curve, target)
        print(f"[{env}] {name}: {[(p['samples'], round(p['wall_s']), round(p['success'], 3)) for p in curve]}",
              flush=True)
        out[name] = trainer
    a, b = out["turnrl"]["to_target"], out["trl"]["to_target"]
    if a["reached"] and b["reached"]:
        first = "turnrl" if a["wall_s"] <= b["wall_s"] else "trl"
        other = "trl" if first == "turnrl" else "turnrl"
        out["winner"] = {"first_to_target": first, "by_s": abs(a["wall_s"] - b["wall_s"]),
                         "speedup": out[other]["to_target"]["wall_s"] / out[first]["to_target"]["wall_s"]}
    else:
        reached = [n for n, r in (("turnrl", a), ("trl", b)) if r["reached"]]
        out["winner"] = {"first_to_target": reached[0] if reached else None,
                         "note": "only one trainer reached the target" if reached else "neither reached the target"}
        if reached:  # by how much, without a second time to compare: held-out success, in points
            first, other = (a, b) if reached[0] == "turnrl" else (b, a)
            out["winner"] |= {"best_success_ahead_points": 100 * (first["best_success"] - other["best_success"]),
                              "final_success_ahead_points": 100 * (first["final_success"] - other["final_success"])}
    out["total_wall_s"] = {name: out[name]["wall_s"] for name in trainers}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", default="twx,kbsearch")
    parser.add_argument("--steps", type=int, default=32, help="optimizer steps of 64 episodes, per trainer")
    parser.add_argument("--eval-every", type=int, default=4, help="steps between checkpoints evaluated")
    parser.add_argument("--target-gain", type=float, default=0.10, help="target: SFT held-out success + this")
    parser.add_argument("--eval-tasks", type=int, default=50, help="held-out tasks per difficulty")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "bench-vs-trl" / "cache")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench-vs-trl")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--trl-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_worker:
        trl_worker(json.loads(args.trl_worker))
        return
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import trl

    report = {"benchmark": "vs_trl", "trl_version": trl.__version__, "steps": args.steps,
              "samples_per_trainer": args.steps * GROUP_SIZE * TASKS_PER_STEP, "eval_every_steps": args.eval_every,
              "rl_overrides": RL, "order": "turnrl, then TRL, back to back in one script; evaluations after both",
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "note": "shared 2-core box: other work ran at the same time, timings are noisy"},
              "command": "python tests/benchmarks/vs_trl.py " + " ".join(sys.argv[1:]), "envs": {}}
    if args.out.exists():  # environments not run this time keep their last results
        report["envs"] = json.loads(args.out.read_text()).get("envs", {})
    for env in args.envs.split(","):
        report["envs"][env] = {"finished_at": None, **race(env, args)}
        report["envs"][env]["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    for env, r in report["envs"].items():
        print(f"{env}: target {r['target_success']:.3f}; winner {r['winner']}", flush=True)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
