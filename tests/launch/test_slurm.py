"""The SLURM batch script on a real one-node SLURM cluster made here: Debian's slurm-wlm and munge
(installed when missing), slurmctld and slurmd on localhost. A job trains to the end; a second is
scancelled mid-run and resubmitted, and continues from its checkpoint."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from rl.cluster.ray_env import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "launch" / "slurm" / "turnrl.sbatch"


def _install_slurm() -> None:
    if shutil.which("sbatch") and shutil.which("munged"):
        return
    if os.geteuid() != 0:
        pytest.skip("slurm-wlm and munge are missing and installing them needs root")
    subprocess.run(["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"], check=True, capture_output=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, timeout=900)


def _start_munge() -> None:
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode == 0:
        return
    if not Path("/etc/munge/munge.key").exists():
        subprocess.run(["/usr/sbin/mungekey", "--create"], check=True)
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)


@pytest.fixture(scope="module")
def slurm():
    """A one-node cluster with its own config, ports and state; SLURM_CONF points the commands at it."""
    _install_slurm()
    _start_munge()
    root = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
    host = socket.gethostname()
    conf = root / "slurm.conf"
    conf.write_text(f"""ClusterName=turnrl-test
SlurmctldHost={host}
SlurmUser=root
SlurmctldPort={free_port('127.0.0.1')}
SlurmdPort={free_port('127.0.0.1')}
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
KillWait=30
NodeName={host} CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    (root / "state").mkdir()
    (root / "spool").mkdir()
    env = {**os.environ, "SLURM_CONF": str(conf)}
    subprocess.run(["slurmctld", "-f", str(conf)], check=True, env=env)
    subprocess.run(["slurmd", "-f", str(conf)], check=True, env=env)
    deadline = time.monotonic() + 60
    while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env).stdout:
        assert time.monotonic() < deadline, (root / "slurmctld.log").read_text()[-2000:]
        time.sleep(1)
    yield env, root
    subprocess.run(["scancel", "--full", "-u", "root"], env=env, capture_output=True)
    for pid_file in ("slurmd.pid", "slurmctld.pid"):
        path = root / pid_file
        if path.exists():
            subprocess.run(["kill", path.read_text().strip()], capture_output=True)


def submit(env: dict, run_dir: Path, *overrides: str, wait: bool) -> str:
    ports = " ".join(f"--{name}={free_port('127.0.0.1')}" for name in (
        "dashboard-agent-listen-port", "runtime-env-agent-port", "metrics-export-port", "ray-client-server-port"))
    job_env = {k: v for k, v in env.items() if k not in {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE",
                                                         "LOCAL_RANK", "RAY_ADDRESS"}}
    job_env.update(TURNRL_RUN_DIR=str(run_dir), TURNRL_PYTHON=sys.executable, RAY_PORT=str(free_port("127.0.0.1")),
                   RAY_NODE_ARGS=f"--num-cpus=2 {ports}")
    cmd = ["sbatch", "--parsable", f"--output={run_dir.parent}/slurm-%j.out", *(["--wait"] if wait else []),
           str(SCRIPT), *overrides]
    proc = subprocess.run(cmd, env=job_env, capture_output=True, text=True, cwd=ROOT, timeout=1200)
    job = proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else "?"
    log = run_dir.parent / f"slurm-{job}.out"
    assert proc.returncode == 0, (log.read_text()[-4000:] if log.exists() else proc.stderr)
    return job


def _overrides(model_dir: Path, steps: int) -> list[str]:
    return ["+experiment=smoke", "rollout=hf", f"model.path={model_dir}", "rollout.max_tokens_per_turn=16",
            "env.eval_tasks_per_difficulty=1", f"train.steps={steps}"]


def test_the_batch_script_trains_to_a_checkpoint_and_metrics(slurm, tiny_model_dir, tmp_path):
    env, _ = slurm
    run_dir = tmp_path / "run"
    job = submit(env, run_dir, *_overrides(tiny_model_dir, 2), wait=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train/steps"] == 2 and summary["rollout/workers"]["count"] == 1
    assert (run_dir / "checkpoints" / "step_2" / "meta.json").exists()
    assert (run_dir / "final_model" / "config.json").exists()
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert "Ray cluster whole: 1 node(s)" in log and "tearing down Ray" in log


def test_a_cancelled_job_resubmitted_resumes_from_its_checkpoint(slurm, tiny_model_dir, tmp_path):
    env, _ = slurm
    run_dir = tmp_path / "run"
    overrides = _overrides(tiny_model_dir, 8)
    job = submit(env, run_dir, *overrides, wait=False)
    deadline = time.monotonic() + 900
    while not (run_dir / "checkpoints" / "step_2" / "meta.json").exists():
        assert time.monotonic() < deadline, "the job wrote no checkpoint in 900 s"
        time.sleep(1)
    subprocess.run(["scancel", job], env=env, check=True)
    while subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, "the cancelled job did not end"
        time.sleep(1)
    assert not (run_dir / "summary.json").exists()
    done = sorted(int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*")
                  if (p / "meta.json").exists())
    submit(env, run_dir, *overrides, wait=True)
    log = (run_dir / "train.log").read_text()
    assert f"resumed from {run_dir}/checkpoints/step_{done[-1]} at step {done[-1]}" in log
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if '"train/loss"' in line]
    assert steps[-1] == 8 and json.loads((run_dir / "summary.json").read_text())["train/steps"] == 8
