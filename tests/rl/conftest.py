"""Ray for the tests that run rollout workers as actors: one local instance for the whole session
(training runs find it running and leave it up), bound to localhost."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
             configure_logging=False)
    yield ray
    ray.shutdown()
