"""ShardLoader's end of iteration (p2p.data.dataset.ShardLoader)."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader

from p2p.data.dataset import ShardLoader


class _Iter:
    """A multi-process loader iterator in miniature: `items`, then torch's end of data, which
    joins the workers in `_shutdown_workers` (where torch's SIGCHLD handler can raise)."""

    def __init__(self, items, fail_after=None):
        self.items, self.fail_after = list(items), fail_after
        self.shutdowns = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.fail_after is not None and not self.items[self.fail_after :]:
            raise RuntimeError("DataLoader worker (pid 1) exited unexpectedly with exit code 1")
        if self.items:
            return self.items.pop(0)
        self._shutdown_workers()
        raise StopIteration

    def _shutdown_workers(self, raising=False):
        self.shutdowns += 1
        if raising:
            raise RuntimeError("DataLoader worker (pid 1) exited unexpectedly with exit code 1")


def _loader(monkeypatch, it):
    monkeypatch.setattr(DataLoader, "__iter__", lambda self: it)
    return ShardLoader([0])


def test_a_worker_dying_mid_stream_is_an_error(monkeypatch):
    it = _Iter([1, 2, 3], fail_after=1)  # dies after the first batch
    with pytest.raises(RuntimeError, match="exited unexpectedly"):
        list(_loader(monkeypatch, it))
    assert it.shutdowns == 1  # its workers are shut down at once, not when collected


def test_a_worker_exit_status_while_shutting_down_after_an_error_keeps_the_error(monkeypatch):
    """CI: the workers of a loader that met a bad shard exited with status 1 as they were
    joined; the DataError must still be what the caller sees."""
    from p2p.data import dataset
    from p2p.errors import DataError

    it = _Iter([dataset._WorkerError(DataError("s/val-0.tar: not a valid tar")), 2])
    it._shutdown_workers = lambda: _Iter._shutdown_workers(it, raising=True)
    with pytest.raises(DataError, match="not a valid tar"):
        list(_loader(monkeypatch, it))
    assert it.shutdowns == 1


def test_stopping_early_shuts_the_workers_down(monkeypatch):
    it = _Iter([1, 2, 3])
    gen = iter(_loader(monkeypatch, it))
    assert next(gen) == 1
    gen.close()
    assert it.shutdowns == 1


@pytest.fixture
def shards(tmp_path):
    from p2p.config import load_config
    from p2p.data.build import build_demo
    from p2p.data.shards import write_shards

    sets = {"build.size": 40, "build.num_pairs": 24, "data.load_size": 32, "data.crop_size": 32}
    sets["model.num_downs"] = 5
    cfg = load_config(None, {**sets, "data.shard_max_count": 2})
    build_demo(tmp_path / "raw", cfg.build, cfg.data)
    write_shards(tmp_path / "raw", tmp_path / "shards", cfg.data)
    return tmp_path / "shards", cfg.data


def test_workers_exit_cleanly_beside_a_parent_exit_hook_that_fails_in_a_fork(
    shards, loader_exit_codes
):
    """CI: once a Prefect flow had run in the process, Prefect's thread at-exit hook (inherited
    by the forked workers, where it fails) made every loader worker exit with status 1, and
    torch's SIGCHLD handler raised "DataLoader worker exited unexpectedly" in the main process
    (a worker that finished its share before the others exits mid-iteration)."""
    import os
    import threading

    from p2p.data.dataset import make_loader

    parent = os.getpid()

    def fails_in_a_fork():
        assert os.getpid() == parent, "a hook for the parent's threads, run in a child"

    url, data = shards
    threading._register_atexit(fails_in_a_fork)
    try:
        loader = make_loader(url, "train", data, num_workers=2, batch_size=2)
        assert sum(a.shape[0] for a, _ in loader) == len(loader.dataset) * 2
    finally:  # (the list holds partials)
        hooks = threading._threading_atexits
        hooks[:] = [h for h in hooks if getattr(h, "func", None) is not fails_in_a_fork]
    assert sorted(loader_exit_codes.values()) == [0, 0]
