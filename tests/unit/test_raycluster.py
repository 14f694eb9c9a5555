"""RayExecutor's placement: tasks dealt to nodes in proportion to their CPUs."""

from __future__ import annotations

import itertools

from p2p.raycluster import _weighted_cycle


def test_weighted_cycle_interleaves_in_proportion_to_cpus():
    take = lambda w, n: list(itertools.islice(_weighted_cycle(w), n))  # noqa: E731
    assert take({"a": 1, "b": 1}, 4) == ["a", "b", "a", "b"]
    assert take({"a": 2.0, "b": 1.0}, 6) == ["a", "b", "a", "a", "b", "a"]
    many = take({"x": 16, "y": 2, "z": 2}, 200)
    assert (many.count("x"), many.count("y"), many.count("z")) == (160, 20, 20)
    assert list(_weighted_cycle({})) == []  # no node fits: callers fall back to SPREAD
