"""A run killed with SIGKILL at five random moments, resumed each time with train.resume=auto, ends
as an uninterrupted run of the same seed does: each step logged once, no group stored twice and
none of a trained step missing, the sample accounting balanced, the same metrics."""

import json
import os
import random
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = pytest.mark.slow

STEPS = 12  # enough that each of the five attempts, killed a step or two in, leaves steps to the next


def command(model_dir, out_dir) -> list[str]:
    return [sys.executable, "-m", "rl.cli", "train", "+experiment=smoke", "rollout=hf", f"model.path={model_dir}",
            "rollout.max_tokens_per_turn=16", "env.eval_tasks_per_difficulty=1", f"train.steps={STEPS}",
            "train.save_every=1", "train.max_staleness=0", "train.resume=auto", f"train.out_dir={out_dir}"]


def environment() -> dict:
    return {k: v for k, v in os.environ.items() if k not in {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE",
                                                            "LOCAL_RANK", "RAY_ADDRESS"}}


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the trainer and everything it started (Ray's GCS, raylet and workers), at once."""
    root = psutil.Process(proc.pid)
    procs = [root, *root.children(recursive=True)]
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=60)


def steps_logged(log) -> int:
    """How many "step N:" lines the run's train.log holds (every attempt appends to it)."""
    try:
        return sum(": step " in line for line in log.read_text().splitlines())
    except FileNotFoundError:
        return 0


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_run_killed_five_times_ends_as_an_uninterrupted_one(tiny_model_dir, tmp_path):
    env = environment()
    whole = tmp_path / "whole"
    subprocess.run(command(tiny_model_dir, whole), env=env, check=True, capture_output=True, timeout=900)

    chaotic = tmp_path / "chaos"
    # The moments, decided before running: each attempt is killed a random 0-1 s after it logged a
    # step of its own (a step takes about as long), so the kills land in rollouts, updates, weight
    # syncs and checkpoint saves, and every attempt gets at least one step further.
    rng = random.Random(0)
    for attempt in range(5):
        before = steps_logged(chaotic / "train.log")
        proc = subprocess.Popen(command(tiny_model_dir, chaotic), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        while steps_logged(chaotic / "train.log") == before:
            assert proc.poll() is None, f"attempt {attempt} ended before it could be interrupted"
            assert time.monotonic() < deadline, f"attempt {attempt} logged no step"
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 1))
        kill_tree(proc)
    finished = subprocess.run(command(tiny_model_dir, chaotic), env=env, capture_output=True, text=True,
                              timeout=900)
    assert finished.returncode == 0, finished.stderr[-4000:]

    metrics = rows(chaotic / "metrics.jsonl")
    steps = [r["step"] for r in metrics if "rollout/success_rate" in r]
    assert steps == list(range(1, STEPS + 1))  # each step once
    assert sum("eval/success_sft" in r for r in metrics) == 1 and sum("eval/success_final" in r for r in metrics) == 1
    records = rows(chaotic / "trajectories.jsonl")
    trained = [r for r in records if r["source"] == "train"]
    per_group: dict[str, int] = {}
    for r in trained:
        per_group[r["group"]] = per_group.get(r["group"], 0) + 1
    assert set(per_group.values()) == {2}  # every group whole (group_size 2), none stored twice
    assert sorted({r["step"] for r in trained}) == list(range(1, STEPS + 1))
    assert all(sum(r["step"] == s for r in trained) == 2 * 2 for s in range(1, STEPS + 1))  # 2 groups of 2
    groups = json.loads((chaotic / "summary.json").read_text())["rollout/groups"]
    assert groups["started"] == sum(groups[k] for k in ("trained", "dropped_stale", "filtered_uniform", "abandoned",
                                                        "ready_at_end"))

    # Synchronous and seeded: the same episodes, rewards and losses as the uninterrupted run.
    keys = ("rollout/success_rate", "reward/mean", "rollout/gen_tokens", "train/loss")
    reference = [r for r in rows(whole / "metrics.jsonl") if "rollout/success_rate" in r]
    assert [[r.get(k) for k in keys] for r in metrics if "rollout/success_rate" in r] == \
        [[r.get(k) for k in keys] for r in reference]
    assert [(r["group"], r["text"]) for r in trained] == \
        [(r["group"], r["text"]) for r in rows(whole / "trajectories.jsonl") if r["source"] == "train"]
