"""ShardLoader's end of iteration (p2p.data.dataset.ShardLoader)."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader

from p2p.data.dataset import ShardLoader


class _Iter:
    """A multi-process loader iterator in miniature: `items`, then torch's end of data, which
    joins the workers in `_shutdown_workers` (where torch's SIGCHLD handler can raise)."""

    def __init__(self, items, fail_at_shutdown=False, fail_after=None):
        self.items, self.fail_at_shutdown, self.fail_after = (
            list(items),
            fail_at_shutdown,
            fail_after,
        )
        self.shutdowns = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.fail_after is not None and not self.items[self.fail_after :]:
            raise RuntimeError("DataLoader worker (pid 1) exited unexpectedly with exit code 1")
        if self.items:
            return self.items.pop(0)
        self._shutdown_workers(raising=self.fail_at_shutdown)
        raise StopIteration

    def _shutdown_workers(self, raising=False):
        self.shutdowns += 1
        if raising:
            self.fail_at_shutdown = False
            raise RuntimeError("DataLoader worker (pid 1) exited unexpectedly with exit code 1")


def _loader(monkeypatch, it):
    monkeypatch.setattr(DataLoader, "__iter__", lambda self: it)
    return ShardLoader([0])


def test_a_worker_exit_status_after_the_last_batch_is_not_an_error(monkeypatch, caplog):
    it = _Iter([1, 2, 3], fail_at_shutdown=True)
    assert list(_loader(monkeypatch, it)) == [1, 2, 3]
    assert "the data is complete" in caplog.text


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
    it._shutdown_workers = lambda raising=True: _Iter._shutdown_workers(it, raising=True)
    with pytest.raises(DataError, match="not a valid tar"):
        list(_loader(monkeypatch, it))
    assert it.shutdowns == 1


def test_stopping_early_shuts_the_workers_down(monkeypatch):
    it = _Iter([1, 2, 3])
    gen = iter(_loader(monkeypatch, it))
    assert next(gen) == 1
    gen.close()
    assert it.shutdowns == 1
