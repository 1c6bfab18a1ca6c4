"""The README's and the docs' examples run: the Env API example is a working environment, and every
`turnrl` command they show loads a valid config."""

import asyncio
import re
from pathlib import Path

from rollout.agent_loop import EpisodeLimits, run_episode
from rollout.chat import ChatFormat, format_tool_call
from rollout.demos import ScriptedEngine
from rollout.engines.base import SamplingConfig
from rollout.envs import get_env
from rollout.types import FinishReason, ToolCall

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)


def test_readme_env_example_registers_and_solves(tiny_tokenizer):
    (example,) = [b for b in _python_blocks() if "@register_env" in b]
    exec(compile(example, str(README), "exec"), {"__name__": "readme_example"})
    env_cls = get_env("guess")
    for difficulty in env_cls.difficulties:
        task = env_cls.generate_task(seed=difficulty, difficulty=difficulty)
        chat = ChatFormat(tiny_tokenizer, env_cls.tools)
        calls = env_cls.expert_solution(task)
        engine = ScriptedEngine(chat, [format_tool_call(c) for c in calls])
        traj = asyncio.run(run_episode(engine, chat, task, SamplingConfig(), EpisodeLimits(max_turns=20)))
        assert traj.success and traj.finish_reason == FinishReason.DONE
    bad = env_cls(env_cls.generate_task(0, 1)).step(ToolCall("guess", {"n": "seven"}))
    assert bad.error


def test_readme_names_the_two_commands():
    text = README.read_text()
    assert "make train" in text and "make test" in text
    assert "make test" in (README.parent / ".ci" / "run").read_text()


def _turnrl_arguments(words: list[str]) -> list[str] | None:
    """The `turnrl` arguments of one shell command, or None if it runs no turnrl command:
    `turnrl ...`, `torchrun ... -m rl.cli ...`, `sbatch ... launch/slurm/turnrl.sbatch OVERRIDES`
    (train overrides) and `make train ARGS="OVERRIDES"`."""
    while words and "=" in words[0] and not words[0].startswith("-"):  # VAR=value before the command
        words = words[1:]
    if words[:1] == ["turnrl"]:
        return words[1:]
    if "-m" in words and words[words.index("-m") + 1:][:1] == ["rl.cli"]:
        return words[words.index("-m") + 2:]
    for i, word in enumerate(words):
        if word.endswith("launch/slurm/turnrl.sbatch"):
            return ["train", *words[i + 1:]]
    if words[:2] == ["make", "train"]:
        args = " ".join(words[2:]).partition("ARGS=")[2].strip("\"'")
        return ["train", *args.split()]
    return None


def _turnrl_commands(paths: list[Path] | None = None) -> list[list[str]]:
    """Every turnrl command in the bash blocks of the README and docs/*.md, as argument lists."""
    commands = []
    for path in paths or [README, *DOCS]:
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.DOTALL):
            for line in block.replace("\\\n", " ").splitlines():
                for part in line.split("#")[0].split("&&"):
                    arguments = _turnrl_arguments(part.split())
                    if arguments is not None:
                        commands.append(arguments)
    return commands


def test_docs_show_turnrl_commands():
    assert len(_turnrl_commands([README])) >= 5
    for page in ("configuration", "algorithms", "rewards", "curriculum", "cluster", "operations"):
        assert _turnrl_commands([ROOT / "docs" / f"{page}.md"]), f"docs/{page}.md shows no turnrl command"


def test_readme_turnrl_commands_take_valid_configs():
    """Each README and docs command's overrides load (a renamed or mistyped key fails here, not for a user)."""
    from rl.cli import build_parser
    from rl.config import load_config

    commands = _turnrl_commands()
    assert len(commands) >= 30
    for words in (w for w in commands if "--help" not in w):
        args = build_parser().parse_args(words)
        overrides = [o for o in getattr(args, "overrides", []) if "=" in o]
        load_config(overrides)
