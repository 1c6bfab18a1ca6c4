"""Built-in environments and adapters of third-party ones, and the lookup by name.

Importing this package registers them. The adapters (twx, textworld, skyrl_*, bfcl) import their
packages only when a task is made or an environment built; without `pip install 'turnrl[envs]'`
that raises an error naming the extra.
"""

from rollout.env import ENV_REGISTRY, UnknownEnvError
from rollout.envs import bfcl, craft, kbsearch, skyrl, textworld_env, twx  # noqa: F401


def get_env(name: str) -> type:
    """The environment class registered under `name` (built in, or by a module the user imported)."""
    try:
        return ENV_REGISTRY[name]
    except KeyError:
        raise UnknownEnvError(f"unknown environment {name!r}; registered: {sorted(ENV_REGISTRY)}") from None


def registered_envs() -> list[str]:
    return sorted(ENV_REGISTRY)
