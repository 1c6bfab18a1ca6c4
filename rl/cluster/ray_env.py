"""What every turnrl Ray actor shares: starting or joining Ray, the environment and logging an
actor starts with, where process groups meet their actors, and the replacement of dead actors."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import socket
import sysconfig
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path

log = logging.getLogger(__name__)

# Passed to every actor (rollout, reward and learner workers), whose processes Ray may start from
# another shell (`ray start`) than the trainer's. Not CUDA_VISIBLE_DEVICES: Ray sets that per actor
# from the GPUs it assigns.
_PASSED_ENV = ("VLLM_CPU_KVCACHE_SPACE", "TOKENIZERS_PARALLELISM", "TURNRL_CACHE", "HF_HOME")

_LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
                  "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def actor_runtime_env(**env_vars: str) -> dict:
    """The runtime environment of a turnrl actor: this process's settings that workers need, plus `env_vars`."""
    return {"env_vars": {**{k: os.environ[k] for k in _PASSED_ENV if k in os.environ}, **env_vars}}


_OURS = {"rl", "rollout", "rewards", "curricula", "configs"}


def code_to_ship(names: Sequence[str]) -> list[str]:
    """The top-level packages (or single-file modules) of `names` that live outside the installed
    packages, e.g. in the user's project directory: a worker on another node, or started by `ray
    start` from another shell, could not import them otherwise."""
    installed = [Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")]
    out = []
    for top in dict.fromkeys(name.split(".")[0] for name in names):
        module = importlib.import_module(top)
        where = getattr(module, "__file__", None)
        if top in _OURS or where is None:
            continue
        path = Path(where).resolve()
        if not any(path.is_relative_to(root) for root in installed):
            # A package travels as its directory, a single-file module as its file.
            out.append(str(path.parent if hasattr(module, "__path__") else path))
    return out


def setup_actor_logging(name: str) -> None:
    """An actor's log lines carry its name (`rollout-0`, `reward-orm`, `learner-1`)."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s {name} %(name)s: %(message)s")


def start_ray(address: str, num_cpus: int, modules: Sequence[str] = ()) -> bool:
    """Start Ray on this machine bound to localhost (`address` ""), or join `address`; False if
    Ray is already running in this process. `modules` (imported module names, env.modules): the
    code of those not installed travels to every worker of the job (Ray uploads it)."""
    import ray

    if ray.is_initialized():
        return False
    common = dict(include_dashboard=False, log_to_driver=True, configure_logging=False)
    shipped = code_to_ship(modules)
    if shipped:
        common["runtime_env"] = {"py_modules": shipped}
    # A local Ray's processes (and so every worker) inherit this environment: under torchrun, its
    # rank variables would tell libraries in the workers (vLLM) that they are rank N of a job.
    launcher = {k: os.environ.pop(k) for k in _LAUNCHER_VARS if k in os.environ}
    try:
        if address:
            ray.init(address=address, **common)
        else:
            _loopback_only()
            ray.init(address="local", num_cpus=num_cpus or None, _node_ip_address="127.0.0.1", **common)
    finally:
        os.environ.update(launcher)
    log.info("Ray %s: %s", "joined" if address else "started locally", ray.cluster_resources())
    return True


def _loopback_only() -> None:
    """Make a local Ray (and the process groups of its actors) listen on loopback only.

    Ray turns `_node_ip_address="127.0.0.1"` into the machine's own address, and its GCS, raylet and
    workers then listen on every interface, unless Ray runs in its local-only mode (the one it uses
    on macOS and Windows), where the node's address is loopback and every server binds to it. The
    mode is read from the environment by every Ray process: set here, before Ray starts any, and
    in this already-imported process too. Gloo (DeepSpeed's CPU group, the weight broadcast) picks
    its interface from the hostname unless GLOO_SOCKET_IFNAME names one: the loopback interface."""
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    if "GLOO_SOCKET_IFNAME" not in os.environ:
        loopback = loopback_interface()
        if loopback:
            os.environ["GLOO_SOCKET_IFNAME"] = loopback


def loopback_interface() -> str | None:
    """The name of the network interface holding 127.0.0.1 (`lo` on Linux), if any."""
    import psutil

    return next((name for name, addrs in psutil.net_if_addrs().items()
                 if any(a.family == socket.AF_INET and a.address == "127.0.0.1" for a in addrs)), None)


def rendezvous_host(ray_address: str) -> str:
    """Where this process's process groups (weight broadcast, learner ranks) meet their Ray actors:
    localhost for a local Ray, this node's address on a cluster."""
    import ray

    return ray.util.get_node_ip_address() if ray_address else "127.0.0.1"


def tcp_store(host: str, port: int, world_size: int, is_master: bool, timeout: timedelta):
    """A torch.distributed TCPStore whose server (on the master) listens on `host` only: torch's
    own binds every interface. The socket is bound here and handed to torch, which then owns it."""
    import torch.distributed as dist

    if not is_master:
        return dist.TCPStore(host, port, world_size, is_master=False, timeout=timeout)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host, port), family=family, backlog=1024)
    # torch's libuv server cannot take a bound socket; its classic one can.
    return dist.TCPStore(host, port, world_size, is_master=True, timeout=timeout, master_listen_fd=listener.detach(),
                         use_libuv=False)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ActorReplacements:
    """Replaces dead actors of one kind, at most `limit` times per run; calls that saw the same
    death concurrently replace it once."""

    def __init__(self, what: str, limit: int, limit_key: str, error: type[Exception]) -> None:
        """`what`: the actors' name in the error once the limit is passed (`rollout workers`)."""
        self.what, self.limit, self.limit_key, self.error = what, limit, limit_key, error
        self.count = 0
        self._lock = asyncio.Lock()

    async def replace(self, name: str, still_current: Callable[[], bool], dead, err: Exception,
                      start_new: Callable[[], Awaitable[None]]) -> None:
        """Kill `dead` (named `name` in the log) and await `start_new()`, unless `still_current()`
        says another call already replaced it."""
        import ray

        async with self._lock:
            if not still_current():
                return
            if self.count >= self.limit:
                raise self.error(f"{self.what} died {self.count + 1} times ({self.limit_key}={self.limit}); "
                                 f"last: {err}") from err
            self.count += 1
            log.warning("%s died (%s); starting a new one (restart %d of at most %d)", name, type(err).__name__,
                        self.count, self.limit)
            ray.kill(dead, no_restart=True)
            await start_new()
