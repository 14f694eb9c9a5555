"""Every test in tests/integration is marked `slow` (the rule is in tests/conftest.py); shared
Ray fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def _two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


@pytest.fixture
def cluster(_two_nodes):
    """Two Ray nodes with one CPU each: one-CPU tasks or actors, spread, land one per node.
    Each test gets the cluster idle: the workers of the previous test's driver are released
    asynchronously after it disconnects, and SPREAD only spreads over nodes with a free CPU
    (a test once saw all its tasks on one node). (test_ray_train.py has its own `cluster`.)"""
    _wait_idle(_two_nodes.address)
    return _two_nodes


def _wait_idle(address: str, timeout_s: float = 60.0) -> None:
    import time

    import ray

    ray.init(address=address, logging_level="ERROR")
    try:
        deadline = time.monotonic() + timeout_s
        while ray.available_resources().get("CPU", 0) < ray.cluster_resources().get("CPU", 0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the test cluster stayed busy: {ray.available_resources()}")
            time.sleep(0.2)
    finally:
        ray.shutdown()
