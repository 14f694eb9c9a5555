"""The run lease (p2p.training.lease) on local disk and on S3 (moto): one live driver per run,
a stale lease is taken over, a released lease is gone."""

from __future__ import annotations

import json
import threading
import time

import pytest

from p2p.training.lease import Lease, LeaseHeld, lease_url, read_lease


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "runs")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/runs"


def _age(url: str, seconds: float) -> None:
    """Rewrite the lease as if its holder last renewed it `seconds` ago (a dead driver)."""
    from p2p.data import storage

    body = json.loads(storage.read_bytes(url))
    body["renewed"] -= seconds
    storage.write_bytes(url, (json.dumps(body) + "\n").encode())


def test_second_driver_is_refused_while_the_first_lives(storage):
    url = lease_url(storage, "run-a")
    first = Lease(url, "run-a").acquire()
    try:
        with pytest.raises(LeaseHeld, match=r"run run-a is already being trained .*--run-name"):
            Lease(url, "run-a").acquire()
        info = read_lease(url)
        assert info is not None and info.owner == first.owner and not info.is_stale()
        other = Lease(lease_url(storage, "run-b"), "run-b").acquire()  # other runs are free
        other.release()
    finally:
        first.release()
    assert read_lease(url) is None  # released: nothing left behind
    Lease(url, "run-a").acquire().release()  # and the run can be taken again


def test_stale_lease_is_taken_over(storage):
    url = lease_url(storage, "crashed")
    dead = Lease(url, "crashed", ttl_s=60).acquire()
    dead._stop.set()  # the driver "dies": no more heartbeats, no release
    _age(url, 61)
    assert read_lease(url).is_stale()
    heir = Lease(url, "crashed", ttl_s=60).acquire()
    try:
        assert read_lease(url).owner == heir.owner
        assert not dead.renew() and dead.lost  # the dead driver cannot get it back
    finally:
        heir.release()
        dead.release()  # a lost lease is not deleted on release...
    assert read_lease(url) is None  # ...the heir's release removed it


def test_heartbeat_keeps_the_lease_alive(storage):
    url = lease_url(storage, "beat")
    lease = Lease(url, "beat", ttl_s=0.6, heartbeat_s=0.1).acquire()
    try:
        first = read_lease(url).renewed
        deadline = time.time() + 10
        while read_lease(url).renewed == first and time.time() < deadline:
            time.sleep(0.05)
        assert read_lease(url).renewed > first  # renewed by the heartbeat thread
        with pytest.raises(LeaseHeld):
            Lease(url, "beat", ttl_s=0.6).acquire()
    finally:
        lease.release()


def test_racing_drivers_one_wins(storage):
    """Eight drivers start the same run at once: exactly one gets the lease, also when they
    race to take over a stale one."""
    url = lease_url(storage, "race")
    for stale_first in (False, True):
        if stale_first:
            dead = Lease(url, "race", ttl_s=60).acquire()
            dead._stop.set()
            _age(url, 61)
        won: list[Lease] = []
        lost: list[Exception] = []
        barrier = threading.Barrier(8)

        def go(barrier=barrier, won=won, lost=lost) -> None:
            lease = Lease(url, "race", ttl_s=60)
            barrier.wait()
            try:
                won.append(lease.acquire())
            except Exception as err:  # LeaseHeld expected; anything else fails the count
                lost.append(err)

        threads = [threading.Thread(target=go) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and len(lost) == 7, (stale_first, len(won), lost)
        assert all(isinstance(e, LeaseHeld) for e in lost), lost
        assert read_lease(url).owner == won[0].owner
        won[0].release()
        assert read_lease(url) is None


def test_lease_url_strips_pyarrow_options(tmp_path):
    assert (
        lease_url("s3://b/runs?endpoint_override=h:1&scheme=http", "r") == "s3://b/runs/r/p2p.lease"
    )
    assert lease_url(str(tmp_path / "x/"), "r") == f"{tmp_path}/x/r/p2p.lease"
