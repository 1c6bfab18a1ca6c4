"""The `turnrl` command line: model init, SFT, training and evaluation, all on one Hydra config.

Dispatch only: each command loads the config and hands its settings to one recipe (rl/recipes/).
Commands import their recipe when run: transformers, DeepSpeed and vLLM take seconds to import,
and `--help` or `--print-config` needs none of them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from rl.config import CONFIG_DIR, ConfigError, TurnRLConfig, load_config, to_yaml
from rl.errors import USER_ERRORS

log = logging.getLogger("turnrl")

# stdout carries only a command's result (JSON, or the config); while a command runs, libraries
# that print their logs there (DeepSpeed, vLLM) are pointed at stderr, so `turnrl train > summary.json`
# works. `main` sets this to the stdout it was called with.
_results = sys.stdout


def _print_result(result) -> None:
    text = result if isinstance(result, str) else json.dumps(result, indent=2)
    print(text, file=_results, flush=True)


def _config_groups() -> str:
    """`env=a|b`, `rollout=c|d`, ...: the option files of each config group, as they are on disk."""
    groups = sorted(d for d in CONFIG_DIR.iterdir() if d.is_dir() and any(d.glob("*.yaml")))
    options = {d.name: "|".join(sorted(p.stem for p in d.glob("*.yaml"))) for d in groups}
    return "\n  ".join(f"+{name}={o}" if name == "experiment" else f"{name}={o}" for name, o in options.items())


EPILOG = f"""\
Every command takes Hydra overrides of the config (typed; an unknown key or a bad value stops
with the key's name). Config groups live in {CONFIG_DIR}:
  {_config_groups()}
Any registered environment runs by name (env.name=twx_coin, textworld, skyrl_gsm8k, bfcl, ...).
Examples:
  turnrl model init                      # tiny Qwen2 model + tokenizer, made locally
  turnrl sft                             # expert-demonstration warm start
  turnrl train train.steps=50 algo.lr=1e-4
  turnrl train model.path=/ckpt/Qwen2.5-7B-Instruct rollout.vllm.tensor_parallel_size=2
  turnrl train train.max_staleness=2 algo.importance_weights=token   # overlap rollout and training
  turnrl train algo=ppo                  # PPO with a critic and GAE
  turnrl train train.resume=runs/turnrl-kbsearch/checkpoints
  turnrl eval model.path=runs/turnrl-kbsearch/final_model
  turnrl orm train orm.data=[runs/turnrl-kbsearch/trajectories.jsonl]   # outcome reward model
  turnrl train reward.verifier=0 reward.orm=1   # train on the ORM's judgement alone (WebRL)
  turnrl train curriculum.enabled=true  # a task pool that grows from failures
  turnrl tasks train.out_dir=runs/turnrl-kbsearch   # that pool's lineage trees
  turnrl proposer train                  # the tiny task writer, for an LLM task proposer on CPU
  turnrl train curriculum.enabled=true curriculum.generators=[procedural,llm] replay.ratio=0.5
  turnrl train env.name=guess env.modules=[my_envs]   # an environment of your own (my_envs.py)
  turnrl train train.resume=auto        # go on from this run's last checkpoint (or start it)
  turnrl train train.overwrite=true     # start over in an out_dir that holds a run
  turnrl train --print-config            # show the resolved config and exit
"""


def _setup_logging(log_file: Path | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cmd_model_init(cfg: TurnRLConfig) -> None:
    from curricula.tasks import heldout_tasks
    from rl.recipes.model_init import init_model

    m, e = cfg.model, cfg.env
    heldout = heldout_tasks(e.name, e.eval_difficulties, e.eval_tasks_per_difficulty, e.eval_seed_offset)
    path = init_model(m.base_path, e.name, m.vocab_size, m.hidden_size, m.num_layers, m.seed, m.pretrain,
                      frozenset(t.instruction for t in heldout), m.corpus_episodes)
    log.info("tiny model written to %s", path)


def cmd_sft(cfg: TurnRLConfig) -> None:
    from rl.recipes.sft import run_sft

    if not Path(cfg.model.base_path, "config.json").exists():
        raise SystemExit(f"no base model at {cfg.model.base_path}: run `turnrl model init` first")
    s = cfg.sft
    result = run_sft(cfg.model.base_path, cfg.model.path, cfg.env.name, s.num_demos, s.difficulty_weights,
                     s.epochs, s.lr, s.batch_size, s.seed, s.first_turn_epochs)
    log.info("SFT policy written to %s (%d demos, final loss %.4f)", result.out_dir, result.num_demos,
             result.final_loss)


def cmd_train(cfg: TurnRLConfig) -> None:
    from rl.recipes.train import train

    _require_model(cfg.model.path)
    summary = train(cfg)
    if summary:  # ranks other than 0 (under torchrun) return none
        _print_result(summary)


def cmd_eval(cfg: TurnRLConfig) -> None:
    from rl.recipes.eval import evaluate_model

    _require_model(cfg.model.path)
    _print_result(asyncio.run(evaluate_model(cfg)))


def cmd_orm_train(cfg: TurnRLConfig) -> None:
    from rl.recipes.orm import train_orm

    metrics = train_orm(cfg.orm)
    if os.environ.get("RANK", "0") == "0":
        _print_result({"orm": cfg.orm.path, **metrics})


def cmd_orm_eval(cfg: TurnRLConfig) -> None:
    from rl.recipes.orm import eval_orm
    from rl.report import write_orm_report

    report = eval_orm(cfg.orm)
    if cfg.orm.eval_plot:
        write_orm_report(report, Path(cfg.orm.eval_plot))
        log.info("ORM evaluation drawn in %s", cfg.orm.eval_plot)
    _print_result(report)


def cmd_proposer_train(cfg: TurnRLConfig) -> None:
    from rl.build import task_writer_path
    from rl.recipes.task_writer import train_writer

    _require_model(cfg.model.path)
    path = task_writer_path(cfg)
    metrics = train_writer(cfg.model.path, path, cfg.env.name, cfg.env.train_difficulties, cfg.env.eval_seed_offset,
                           cfg.curriculum.proposer, cfg.train.seed)
    _print_result({"task_writer": path, **metrics})


def cmd_proposer_eval(cfg: TurnRLConfig) -> None:
    from rl.build import make_proposer
    from rl.recipes.task_writer import eval_proposer

    cfg.curriculum.generators = ["llm"]
    proposer = make_proposer(cfg)
    _print_result(asyncio.run(eval_proposer(proposer, cfg.env.name, cfg.env.train_difficulties, 200,
                                            cfg.env.eval_seed_offset, cfg.train.seed + 1)))


def cmd_tasks(cfg: TurnRLConfig) -> None:
    from curricula.curriculum import POOL_FILE
    from curricula.pool import TaskPool, lineage_tree

    path = Path(cfg.train.out_dir) / POOL_FILE
    if not path.exists():
        raise SystemExit(f"no task pool at {path}: train with curriculum.enabled=true (train.out_dir names the run)")
    _print_result(lineage_tree(TaskPool(path, read_only=True)))


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _require_model(path: str) -> None:
    """model.path is a Hugging Face causal-LM directory with a tokenizer (before anything starts)."""
    config = Path(path, "config.json")
    if not config.exists():
        raise SystemExit(f"turnrl: no model at model.path={path}: run `turnrl model init && turnrl sft` for the tiny "
                         "default, or point model.path at a Hugging Face model directory")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as err:
        raise SystemExit(f"turnrl: model.path={path}: config.json is not a model config ({err})") from None
    if not model_type:
        raise SystemExit(f"turnrl: model.path={path}: config.json names no model_type, so it is not a Hugging Face "
                         "model directory")
    if not any(Path(path, name).exists() for name in _TOKENIZER_FILES):
        raise SystemExit(f"turnrl: model.path={path} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)})")


# Commands with sub-commands: group -> (help, {sub-command: (handler, help)}).
GROUPS = {
    "orm": ("the outcome reward model: train on stored trajectories, evaluate", {
        "train": (cmd_orm_train, "train the ORM on trajectory stores (orm.data), labelled by the verifier"),
        "eval": (cmd_orm_eval, "accuracy, AUC and calibration of the ORM (orm.path) on trajectory stores"),
    }),
    "proposer": ("the LLM task proposer of the curriculum: make the tiny task writer, evaluate a proposer", {
        "train": (cmd_proposer_train, "train the tiny task writer (curriculum.proposer.model_path) on variant pairs "
                                      "from the environment's generator"),
        "eval": (cmd_proposer_eval, "share of valid, feasible and distinct tasks the proposer writes for 200 "
                                    "generator tasks"),
    }),
}

COMMANDS = {
    "sft": (cmd_sft, "train the base model on expert demonstrations (writes model.path)"),
    "train": (cmd_train, "RL training: GRPO with rollouts through the inference engine"),
    "eval": (cmd_eval, "greedy success on the fixed held-out task set, by difficulty"),
    "tasks": (cmd_tasks, "the curriculum's task pool of a run (train.out_dir) as lineage trees"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="turnrl", description="Online multi-turn agentic RL trainer.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. algo.lr=1e-4 env=craft")
        p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
        return p

    model = sub.add_parser("model", help="make models locally")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    init = model_sub.add_parser("init", help="build the tiny Qwen2 model and its tokenizer (model.base_path)")
    init.add_argument("overrides", nargs="*")
    init.add_argument("--print-config", action="store_true")
    for name, (_, help_text) in COMMANDS.items():
        add(name, help_text)
    for group, (group_help, commands) in GROUPS.items():
        group_sub = sub.add_parser(group, help=group_help).add_subparsers(dest="group_command", required=True)
        for name, (_, help_text) in commands.items():
            p = group_sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
            p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. orm.data=[runs/x/trajectories.jsonl]")
            p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def main(argv: list[str] | None = None) -> None:
    global _results
    args = build_parser().parse_args(argv)
    _results, sys.stdout = sys.stdout, sys.stderr
    try:
        _run(args)
    finally:
        sys.stdout = _results


def _run(args: argparse.Namespace) -> None:
    _setup_logging()
    try:
        cfg = load_config(args.overrides)
    except ConfigError as err:
        raise SystemExit(f"turnrl: {err}") from None
    if args.print_config:
        _print_result(to_yaml(cfg))
        return
    if args.command == "train" and os.environ.get("RANK", "0") == "0":
        try:
            _setup_logging(Path(cfg.train.out_dir) / "train.log")  # the run's first write there
        except OSError as err:
            raise SystemExit(f"turnrl: train.out_dir={cfg.train.out_dir} is not writable: "
                             f"{err.strerror or err}") from None
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.command == "model":
        handler = cmd_model_init
    elif args.command in GROUPS:
        handler = GROUPS[args.command][1][args.group_command][0]
    else:
        handler = COMMANDS[args.command][0]
    try:
        handler(cfg)
    except USER_ERRORS as err:  # bad input, not our bug: one line (also in train.log), no traceback
        log.error("%s", err)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
