"""`p2p bench train`'s step bench: both implementations, each built from one `StepSpec` in
its own process, compute the same first-step losses on CPU fp32."""

from __future__ import annotations

import pytest
from data_fixtures import TINY

from p2p.bench.train import bench_step
from p2p.config import load_config


@pytest.mark.slow  # spawns two processes that import torch
def test_bench_step_compares_the_same_step():
    cfg = load_config(None, TINY)
    rows = bench_step(cfg, "cpu", 1, 1, precision="fp32")
    assert [r["impl"] for r in rows] == ["reference", "p2p fp32"]
    assert rows[1]["loss_diff"] < 1e-3 and rows[1]["speedup"] > 0
