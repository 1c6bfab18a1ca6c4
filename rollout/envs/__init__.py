"""Built-in environments; importing this package registers them."""

from rollout.envs import craft, kbsearch  # noqa: F401
