"""One live driver per training run: a lease file in the run's folder.

    <train.storage_path>/<run name>/p2p.lease
        {"run", "owner", "host", "pid", "started", "renewed", "ttl_s"}  (JSON)

`p2p train` acquires the lease before it touches the run (checkpoints, MLflow run) and releases
it at the end; a heartbeat thread renews it every `heartbeat_s` while the driver lives. A second
driver with the same run name finds a live lease and is refused with a one-line error. A lease
that was not renewed for `ttl_s` (three missed heartbeats by default) belongs to a dead driver
(killed, crashed, machine lost): the next `p2p train` takes it over and resumes the run.

Every change is atomic on both backends, so two drivers racing for one run cannot both win:
- local disk: create by hard-linking a complete temp file (fails if the lease exists); renew
  by temp file + rename; take over a stale lease under a takeover lock (created the same way),
  re-checking that it is still the stale one.
- S3: conditional writes (S3 and MinIO support them, so does moto): create with
  `IfNoneMatch="*"`, renew and take over with `IfMatch=<etag>` of the version read, release with
  a conditional delete.

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
from typing import Any

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
    """Where the lease of `run_name` lives (a local path or s3:// URL)."""
    base = storage_path.split("?", 1)[0].rstrip("/")  # pyarrow URI options are not part of it
    if "://" not in base:
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
        self._backend: _Backend = _S3Backend(url) if url.startswith("s3://") else _LocalBackend(url)
        self._version: Any = None  # the backend's handle on the version we wrote (S3: ETag)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False  # set when a renewal found the lease taken over

    # -- public ---------------------------------------------------------------------------

    def acquire(self) -> Lease:
        """Take the lease and start the heartbeat. Raises LeaseHeld if a live driver has it."""
        self._version = self._backend.create(self._body())
        if self._version is None:  # someone has it: alive, or stale and ours to take over
            current = self._backend.read()
            if current is not None:
                body, version = current
                info = _parse(body)
                if info is not None and not info.is_stale():
                    raise LeaseHeld(self._held_message(info))
                self._version = self._backend.replace(version, body, self._body())
            else:  # released between our create and read: try once more
                self._version = self._backend.create(self._body())
            if self._version is None:
                current = self._backend.read()
                info = _parse(current[0]) if current else None
                raise LeaseHeld(self._held_message(info))
        self._thread = threading.Thread(target=self._beat, name="p2p-lease", daemon=True)
        self._thread.start()
        return self

    def renew(self) -> bool:
        """Write a fresh `renewed` time; False if the lease is no longer ours."""
        version = self._backend.renew(self._version, self.owner, self._body())
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
                self._backend.delete(self._version, self.owner)
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
    backend = _S3Backend(url) if url.startswith("s3://") else _LocalBackend(url)
    current = backend.read()
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


# ----------------------------------------------------------------------------- backends


class _Backend:
    """Atomic operations on one lease file. A `version` identifies what was read or written;
    every method returns None when the file changed under it (someone else won)."""

    def create(self, body: bytes) -> Any: ...
    def read(self) -> tuple[bytes, Any] | None: ...
    def replace(self, version: Any, old_body: bytes, body: bytes) -> Any: ...
    def renew(self, version: Any, owner: str, body: bytes) -> Any: ...
    def delete(self, version: Any, owner: str) -> None: ...


class _LocalBackend(_Backend):
    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def create(self, body: bytes) -> Any:
        # Written in full under a temp name, then hard-linked into place: link() fails if the
        # lease exists, and a reader never sees a half-written lease.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, self.path)
        except FileExistsError:
            return None
        finally:
            tmp.unlink(missing_ok=True)
        return body

    def read(self) -> tuple[bytes, Any] | None:
        try:
            body = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return body, body

    def replace(self, version: Any, old_body: bytes, body: bytes) -> Any:
        # One taker at a time: the takeover lock is created like a lease (link, fails if it
        # exists). Its holder checks that the stale lease is still the one judged stale and
        # renames the new lease over it. A takeover lock left by a driver that died within
        # these few lines is itself stale after a while.
        lock = _LocalBackend(f"{self.path}.takeover")
        if lock.create(body) is None:
            with contextlib.suppress(OSError):
                if time.time() - lock.path.stat().st_mtime > 60:
                    lock.path.unlink()
            return None
        try:
            current = self.read()
            if current is not None and current[0] != old_body:
                return None  # renewed or taken over meanwhile
            from p2p.atomic import write_bytes_atomic

            write_bytes_atomic(self.path, body)
            return body
        finally:
            lock.path.unlink(missing_ok=True)

    def renew(self, version: Any, owner: str, body: bytes) -> Any:
        current = self.read()
        if current is None or (info := _parse(current[0])) is None or info.owner != owner:
            return None
        from p2p.atomic import write_bytes_atomic

        write_bytes_atomic(self.path, body)
        return body

    def delete(self, version: Any, owner: str) -> None:
        current = self.read()
        if current is not None and (info := _parse(current[0])) is not None and info.owner == owner:
            self.path.unlink(missing_ok=True)


class _S3Backend(_Backend):
    def __init__(self, url: str) -> None:
        from p2p.data.storage import split_s3_url

        self.url = url
        self.bucket, self.key = split_s3_url(url)

    @staticmethod
    def _client() -> Any:
        from p2p.data.storage import s3_client

        return s3_client()

    def _put(self, body: bytes, **cond: str) -> Any:
        from botocore.exceptions import ClientError

        try:
            out = self._client().put_object(Bucket=self.bucket, Key=self.key, Body=body, **cond)
        except ClientError as e:
            if _status(e) in (409, 412):  # precondition failed / concurrent conditional write
                return None
            raise P2PError(f"{self.url}: cannot write the run lease: {e}") from None
        return out["ETag"]

    def create(self, body: bytes) -> Any:
        return self._put(body, IfNoneMatch="*")

    def read(self) -> tuple[bytes, Any] | None:
        from botocore.exceptions import ClientError

        try:
            out = self._client().get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as e:
            if _status(e) == 404:
                return None
            raise P2PError(f"{self.url}: cannot read the run lease: {e}") from None
        return out["Body"].read(), out["ETag"]

    def replace(self, version: Any, old_body: bytes, body: bytes) -> Any:
        return self._put(body, IfMatch=version)

    def renew(self, version: Any, owner: str, body: bytes) -> Any:
        return self._put(body, IfMatch=version)

    def delete(self, version: Any, owner: str) -> None:
        from botocore.exceptions import ClientError

        with contextlib.suppress(ClientError):
            self._client().delete_object(Bucket=self.bucket, Key=self.key, IfMatch=version)


def _status(e: Any) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
