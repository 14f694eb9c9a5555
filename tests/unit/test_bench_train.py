"""`p2p bench train`'s step bench: both implementations are built from one `StepSpec`, sent to
a spawned process (the run itself: tests/integration/test_bench_train.py)."""

from __future__ import annotations

import pickle

from p2p.bench.train import StepSpec


def test_step_spec_travels_to_a_spawned_worker():
    spec = StepSpec({"a": 1}, "cpu", 2, "p2p", precision="fp32")
    assert pickle.loads(pickle.dumps(spec)) == spec
