"""End to end through the real stack: model init, SFT, GRPO with vLLM rollouts and DeepSpeed,
checkpoint, resume. Runs the `turnrl` CLI in subprocesses, as a user would."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = pytest.mark.slow


def turnrl(*args, env):
    proc = subprocess.run([sys.executable, "-m", "rl.cli", *args], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    # A fresh process group, as for a user's shell: earlier in-process learner tests leave the
    # torch.distributed variables of their own (still bound) group in this process's environment.
    launcher_vars = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}
    env = {k: v for k, v in os.environ.items() if k not in launcher_vars}
    env.update(TURNRL_CACHE=str(root / "cache"), VLLM_CPU_KVCACHE_SPACE="1")
    common = ["+experiment=smoke", "model.hidden_size=128", "model.num_layers=2", f"train.out_dir={root}/run"]
    turnrl("model", "init", *common, env=env)
    turnrl("sft", *common, env=env)
    proc = turnrl("train", *common, "rollout=vllm", "algo.mini_batches=2", env=env)
    return root, env, common, proc


def test_train_writes_summary_report_metrics_and_checkpoints(run):
    root, _, _, proc = run
    out = root / "run"
    summary = json.loads((out / "summary.json").read_text())
    assert {"eval/success_sft", "eval/success_final", "perf/mean_weight_sync_s"} <= summary.keys()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert [r["train/optimizer_steps"] for r in steps] == [2, 4]  # algo.mini_batches=2 per step
    for prefix in ("rollout/", "train/", "reward/", "perf/", "eval/"):
        assert any(k.startswith(prefix) for r in rows for k in r), prefix
    assert all(r["perf/weight_sync_s"] > 0 for r in steps)
    # The learner's speed on every step (rl/learner/flops.py): a utilisation is a fraction of a peak.
    assert all(0 < r["perf/mfu"] < 1 and r["perf/learner_tokens_per_s"] > 0 for r in steps)
    assert (out / "report.png").stat().st_size > 1000
    assert (out / "checkpoints" / "step_2" / "meta.json").exists()
    assert (out / "final_model" / "config.json").exists()
    assert '"eval/success_final"' in proc.stdout


def test_resume_continues_from_the_checkpoint(run):
    root, env, common, _ = run
    out = root / "run"
    turnrl("train", *common, "algo.mini_batches=2", "train.steps=3", f"train.resume={out}/checkpoints", env=env)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3]
    assert [r["train/optimizer_steps"] for r in rows if "train/loss" in r] == [2, 4, 6]
    assert (out / "checkpoints" / "step_3" / "meta.json").exists()
    # Synchronous (max_staleness=0), resumed at step 2 for one step: the step's 2 groups, not the 2 x 3
    # a buffer counting from version 0 admitted at once (then dropped as stale but the fastest).
    groups = json.loads((out / "summary.json").read_text())["rollout/groups"]
    assert groups["started"] == groups["trained"] == 2 and groups["dropped_stale"] == 0
    # Sample ids go on from the checkpoint's: step 3's groups are not steps 1's again.
    trained = {}
    for line in (out / "trajectories.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["source"] == "train":
            trained.setdefault(record["step"], set()).add(record["group"])
    assert trained[3] == {"4", "5"} and not trained[3] & (trained[1] | trained[2])


def test_training_survives_a_killed_engine_core(run):
    """SIGKILL vLLM's engine-core process mid-run: the engine is restarted with the current weights
    and the run completes, with the restart in its metrics."""
    root, env, common, _ = run
    out = root / "killed"
    args = [a for a in common if not a.startswith("train.out_dir=")]
    proc = subprocess.Popen([sys.executable, "-m", "rl.cli", "train", *args, "rollout=vllm", "train.steps=20",
                             f"train.out_dir={out}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        metrics = out / "metrics.jsonl"
        deadline = time.monotonic() + 600
        while not (metrics.exists() and '"train/loss"' in metrics.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first step"
            time.sleep(0.2)
        cores = [p for p in psutil.Process(proc.pid).children(recursive=True)
                 if "EngineCore" in p.name() or "EngineCore" in " ".join(p.cmdline())]
        assert cores, "no vLLM EngineCore process under the training run"
        for core in cores:
            os.kill(core.pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-4000:]
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 21))
    assert steps[-1]["rollout/engine_restarts"] == 1
    assert "engine died" in stderr
