"""One live driver per training run: a lease file in the run's folder.

    <train.storage_path>/<run name>/p2p.lease
        {"run", "owner", "host", "pid", "started", "renewed", "ttl_s"}  (JSON)

`p2p train` acquires the lease before it touches the run (checkpoints, MLflow run) and releases
it at the end; a heartbeat thread renews it every `heartbeat_s` while the driver lives. A second
driver with the same run name finds a live lease and is refused with a one-line error. A lease
that was not renewed for `ttl_s` (three missed heartbeats by default) belongs to a dead driver
(killed, crashed, machine lost): the next `p2p train` takes it over and resumes the run.

Every change is a compare-and-swap on the lease file through p2p.data.storage (create if
absent, replace / delete if still at the version read), so two drivers racing for one run cannot
both win, on every storage scheme: local disk (hard-linked temp file, a lock around compare and
rename), S3 (conditional PUT / DELETE with If-None-Match / If-Match on the ETag), and any
backend registered later.

Staleness compares the holder's `renewed` wall-clock time with this machine's clock: clocks of
the machines sharing a run must agree to well within `ttl_s` (NTP does that).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from p2p.data import storage
from p2p.errors import P2PError

log = logging.getLogger(__name__)

LEASE_FILE = "p2p.lease"
HEARTBEAT_S = 30.0
TTL_S = 3 * HEARTBEAT_S  # three missed heartbeats: the holder is gone


class LeaseHeld(P2PError):
    """Another live driver holds the run."""


@dataclass(frozen=True)
class LeaseInfo:
    """What a lease file says about its holder."""

    owner: str
    host: str
    pid: int
    started: float
    renewed: float
    ttl_s: float

    def is_stale(self, now: float | None = None) -> bool:
        return (now if now is not None else time.time()) - self.renewed > self.ttl_s

    def describe(self, now: float | None = None) -> str:
        age = (now if now is not None else time.time()) - self.renewed
        return f"held by {self.host} pid {self.pid}, renewed {max(age, 0):.0f} s ago"


def lease_url(storage_path: str, run_name: str) -> str:
    """Where the lease of `run_name` lives (a local path or a URL)."""
    base = storage_path.split("?", 1)[0].rstrip("/")  # pyarrow URI options are not part of it
    if storage.is_local(base):
        base = str(Path(base).expanduser().resolve())
    return f"{base}/{run_name}/{LEASE_FILE}"


class Lease:
    """The lease of one run; use `acquire()` (or `with Lease(...):`) and `release()`.

    Args:
        url: the lease file (see `lease_url`).
        run_name: for messages.
        ttl_s: how long the lease stays valid without a renewal.
        heartbeat_s: how often the holder renews it.
    """

    def __init__(
        self, url: str, run_name: str, *, ttl_s: float = TTL_S, heartbeat_s: float = HEARTBEAT_S
    ) -> None:
        self.url = url
        self.run_name = run_name
        self.ttl_s = float(ttl_s)
        self.heartbeat_s = float(heartbeat_s)
        self.owner = uuid.uuid4().hex
        self.started = time.time()
        self._version: str | None = None  # the version of the lease we wrote (S3: its ETag)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False  # set when a renewal found the lease taken over

    # -- public ---------------------------------------------------------------------------

    def acquire(self) -> Lease:
        """Take the lease and start the heartbeat. Raises LeaseHeld if a live driver has it."""
        self._version = storage.create_if_absent(self.url, self._body())
        if self._version is None:  # someone has it: alive, or stale and ours to take over
            current = storage.read_versioned(self.url)
            if current is not None:
                body, version = current
                info = _parse(body)
                if info is not None and not info.is_stale():
                    raise LeaseHeld(self._held_message(info))
                self._version = storage.replace_if(self.url, version, self._body())
            else:  # released between our create and read: try once more
                self._version = storage.create_if_absent(self.url, self._body())
            if self._version is None:
                current = storage.read_versioned(self.url)
                info = _parse(current[0]) if current else None
                raise LeaseHeld(self._held_message(info))
        self._thread = threading.Thread(target=self._beat, name="p2p-lease", daemon=True)
        self._thread.start()
        return self

    def renew(self) -> bool:
        """Write a fresh `renewed` time; False if the lease is no longer ours."""
        version = None
        if self._version is not None:
            version = storage.replace_if(self.url, self._version, self._body())
        if version is None:
            self.lost = True
            return False
        self._version = version
        return True

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._version is not None and not self.lost:
            with contextlib.suppress(Exception):  # never mask the run's own outcome
                storage.delete_if(self.url, self._version)
        self._version = None

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- internals ------------------------------------------------------------------------

    def _body(self) -> bytes:
        info = {
            "run": self.run_name,
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": self.started,
            "renewed": time.time(),
            "ttl_s": self.ttl_s,
        }
        return (json.dumps(info, sort_keys=True) + "\n").encode()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self.renew():
                    log.warning("%s: the lease of run %s was taken over", self.url, self.run_name)
                    return
            except Exception as e:  # a storage hiccup: try again at the next beat
                log.warning("%s: cannot renew the lease: %s", self.url, e)

    def _held_message(self, info: LeaseInfo | None) -> str:
        who = info.describe() if info else "held by another driver"
        ttl = info.ttl_s if info else self.ttl_s
        return (
            f"run {self.run_name} is already being trained ({self.url} {who}); wait for it to "
            f"finish, or pick another --run-name (a crashed run's lease expires {ttl:.0f} s "
            "after its last renewal)"
        )


def check_free(url: str, run_name: str) -> None:
    """Raise LeaseHeld if a live driver holds the run (a look, not an acquisition)."""
    info = read_lease(url)
    if info is not None and not info.is_stale():
        raise LeaseHeld(Lease(url, run_name)._held_message(info))


def read_lease(url: str) -> LeaseInfo | None:
    """The lease at `url`, or None when there is none (or it is unreadable)."""
    current = storage.read_versioned(url)
    return _parse(current[0]) if current else None


def _parse(body: bytes) -> LeaseInfo | None:
    try:
        d = json.loads(body)
        return LeaseInfo(
            owner=str(d["owner"]),
            host=str(d.get("host", "?")),
            pid=int(d.get("pid", 0)),
            started=float(d.get("started", 0)),
            renewed=float(d["renewed"]),
            ttl_s=float(d.get("ttl_s", TTL_S)),
        )
    except (ValueError, KeyError, TypeError):
        return None  # a torn or foreign file: treated as stale
