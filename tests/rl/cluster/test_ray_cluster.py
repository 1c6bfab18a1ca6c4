"""The trainer on a two-node Ray cluster made on this machine: two `ray start` processes (head and
worker) on localhost, with rollout workers spread over both nodes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rl.cluster.ray_env import free_port

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))
# `ray start --head` turns on token authentication (the token goes to ~/.ray/auth_token); the other
# node and the trainer must use it too.
ENV = {**{k: v for k, v in os.environ.items() if k not in {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE",
                                                           "LOCAL_RANK", "RAY_ADDRESS"}},
       "RAY_AUTH_MODE": "token"}


def ray_node(*args: str) -> subprocess.Popen:
    """`ray start --block` in its own session, so that killing the group tears the node down."""
    ports = [f"--dashboard-agent-listen-port={free_port('127.0.0.1')}",
             f"--runtime-env-agent-port={free_port('127.0.0.1')}",
             f"--metrics-export-port={free_port('127.0.0.1')}"]
    return subprocess.Popen([RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                             "--disable-usage-stats", *ports, *args], start_new_session=True, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_nodes(address: str, count: int, timeout_s: float = 120) -> None:
    code = f"import ray; ray.init(address='{address}'); print(sum(n['Alive'] for n in ray.nodes()))"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=ENV)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1] == str(count):
            return
        time.sleep(1)
    raise TimeoutError(f"the Ray cluster at {address} did not reach {count} nodes in {timeout_s:.0f} s")


def stop(node: subprocess.Popen) -> None:
    if node.poll() is None:
        os.killpg(node.pid, signal.SIGTERM)
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)


def test_training_on_a_two_node_localhost_cluster_spreads_rollout_workers_over_both_nodes(tiny_model_dir, tmp_path):
    port = free_port("127.0.0.1")
    address = f"127.0.0.1:{port}"
    head = ray_node("--head", f"--port={port}", "--include-dashboard=false",
                    f"--ray-client-server-port={free_port('127.0.0.1')}")
    nodes = [head]
    try:
        time.sleep(2)
        nodes.append(ray_node(f"--address={address}"))
        wait_for_nodes(address, 2)
        out = tmp_path / "run"
        proc = subprocess.run(
            [sys.executable, "-m", "rl.cli", "train", "+experiment=smoke", "rollout=hf", f"model.path={tiny_model_dir}",
             f"ray.address={address}", "rollout.num_workers=2", "rollout.weight_sync=broadcast",
             "rollout.max_tokens_per_turn=16", "env.eval_tasks_per_difficulty=1", f"train.out_dir={out}"],
            env=ENV, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
    finally:
        for node in reversed(nodes):
            stop(node)
    summary = json.loads((out / "summary.json").read_text())
    workers = summary["rollout/workers"]
    assert workers["count"] == 2 and workers["nodes"] == 2, workers
    assert summary["rollout/groups"]["trained"] == 2 * 2  # train.steps x algo.tasks_per_step of the smoke run
    assert "weight broadcast group of 3 ranks formed" in proc.stderr
