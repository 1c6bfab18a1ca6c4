"""Built-in environments and adapters of third-party ones; importing this package registers them.

The adapters (twx, textworld, skyrl_*, bfcl) import their packages only when a task is made or an
environment built; without `pip install 'turnrl[envs]'` that raises an error naming the extra.
"""

from rollout.envs import bfcl, craft, kbsearch, skyrl, textworld_env, twx  # noqa: F401
