"""env.modules: an environment registered in the user's own module trains through Ray's rollout
workers, although neither the test process nor the workers ever imported that module themselves."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[3] / "README.md"


def guess_env_source() -> str:
    """The README's own example environment, registered under another name."""
    text = README.read_text()
    start = text.index("```python\nimport random\n\nfrom rollout.env import register_env")
    code = text[start + len("```python\n"):text.index("```", start + 10)]
    return code.replace('register_env("guess")', 'register_env("my_guess")').replace('env="guess"', 'env="my_guess"')


def test_an_environment_from_the_users_own_module_trains_through_ray_workers(tiny_model_dir, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "my_guess_env.py").write_text(guess_env_source())
    env = {k: v for k, v in os.environ.items() if k not in {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE",
                                                           "LOCAL_RANK", "RAY_ADDRESS", "PYTHONPATH"}}
    out = tmp_path / "run"
    # `python -m` puts the working directory (the user's project) on the trainer's path only.
    proc = subprocess.run(
        [sys.executable, "-m", "rl.cli", "train", "+experiment=smoke", "rollout=hf", f"model.path={tiny_model_dir}",
         "env.name=my_guess", "env.modules=[my_guess_env]", "rollout.max_tokens_per_turn=16",
         "env.eval_tasks_per_difficulty=1", f"train.out_dir={out}"],
        cwd=project, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((out / "summary.json").read_text())["train/steps"] == 2
    records = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    assert records and all(r["task"]["env"] == "my_guess" for r in records)
