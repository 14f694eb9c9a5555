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
def cluster():
    """Two Ray nodes with one CPU each: one-CPU tasks or actors, spread, land one per node.
    (test_ray_train.py has its own `cluster`, with a dashboard.)"""
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()
