"""On one machine nothing of a run listens beyond loopback: Ray's GCS, raylet and workers, the
rollout engines (vLLM), the learner ranks' DeepSpeed group and the weight broadcast group. The socket
table of the run's process tree is read throughout a run that uses all of them."""

import ipaddress
import os
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = pytest.mark.slow


def test_every_listener_of_a_run_is_on_loopback(tiny_model_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE",
                                                           "LOCAL_RANK", "RAY_ADDRESS", "GLOO_SOCKET_IFNAME"}}
    env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rl.cli", "train", "+experiment=smoke", "rollout=vllm", f"model.path={tiny_model_dir}",
         "train.learner_ranks=2", "rollout.weight_sync=broadcast", "rollout.max_tokens_per_turn=16",
         "env.eval_tasks_per_difficulty=1", f"train.out_dir={tmp_path / 'run'}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    listeners: dict[tuple[str, int], str] = {}
    root = psutil.Process(proc.pid)
    deadline = time.monotonic() + 900
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            tree = {p.pid: p for p in [root, *root.children(recursive=True)]}
        except psutil.NoSuchProcess:
            break
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.pid in tree:
                try:
                    listeners.setdefault((conn.laddr.ip, conn.laddr.port), tree[conn.pid].name())
                except psutil.NoSuchProcess:
                    pass
        time.sleep(0.2)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-4000:]
    names = set(listeners.values())
    assert {"gcs_server", "raylet"} <= names and len(listeners) > 10, listeners  # the run was seen listening

    def loopback(ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
        return address.is_loopback or (mapped is not None and mapped.is_loopback)

    outside = {f"{ip}:{port}": name for (ip, port), name in listeners.items() if not loopback(ip)}
    assert not outside, f"listening beyond loopback: {outside}"
