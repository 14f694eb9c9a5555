"""Where `p2p.data.shards` puts finished shards: a local temp dir renamed into place, or a URL
(S3 or any scheme of p2p.data.storage: a bounded staging pool of uploads, index.json replaced
last, then stale shards deleted); temp folders of killed runs are cleaned at start."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from p2p.data import storage
from p2p.data.shard_index import INDEX, ShardIndex, ShardInfo, _is_shard_name
from p2p.errors import DataError

log = logging.getLogger("p2p.data.shards")  # the logger of the shard stage, as before the split

UPLOAD_THREADS = 4  # URL output: shards uploaded at once
STAGED_MAX = 2 * UPLOAD_THREADS  # URL output: shards on local disk at most (queued + uploading)
_WORKDIR = re.compile(r"(?:p2p-shards|\..+\.tmp)-(?P<pid>\d+)-[0-9a-f]{8}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _clean_stale(parent: Path, prefix: str) -> None:
    """Remove temp folders `prefix...-PID-HEX` in parent whose process is gone (a killed run's).
    A pid reused since is taken as alive: the folder then waits for a later run."""
    if not parent.is_dir():
        return
    for p in parent.iterdir():
        m = _WORKDIR.fullmatch(p.name)
        if m and p.name.startswith(prefix) and p.is_dir() and not _alive(int(m["pid"])):
            log.info("removing %s, left by a killed shard run", p)
            shutil.rmtree(p, ignore_errors=True)


def _local_workdir(out: str) -> Path:
    """A fresh temp dir: beside a local `out` (same filesystem, so the final rename is atomic),
    or `TMPDIR/p2p-shards-PID-HEX` for output to a URL. Stale ones of killed runs are removed
    first."""
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if not storage.is_local(out):
        tmp_root = Path(tempfile.gettempdir())
        _clean_stale(tmp_root, "p2p-shards-")
        tmp = tmp_root / f"p2p-shards-{tag}"
        tmp.mkdir()
        return tmp
    dst = Path(out)
    if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
        raise DataError(f"{dst}: exists and is not a directory; refusing to replace it")
    if dst.is_dir() and any(dst.iterdir()) and not (dst / INDEX).is_file():
        raise DataError(
            f"{dst}: exists, is not empty and is not a shard set (no {INDEX}); "
            "refusing to replace it"
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(dst.parent, f".{dst.name}.tmp-")
    tmp = dst.parent / f".{dst.name}.tmp-{tag}"
    tmp.mkdir()
    return tmp


class _Sink:
    """Where finished shards go. Local output: they stay in the workdir (renamed as a whole)."""

    def add(self, path: Path, shard: ShardInfo) -> None:
        pass

    def publish(self, index_file: Path, index: ShardIndex) -> None:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        pass


@dataclass
class _RemoteSink(_Sink):
    """Uploads each finished shard at once (a few in parallel; the writer waits when
    STAGED_MAX shards are on local disk), then index.json, then deletes stale shards."""

    out: str
    old: ShardIndex | None
    say: Callable[[str], None]
    sent: int = 0
    uploaded: int = 0
    kept: int = 0
    staged: int = 0  # shard files on local disk now / at most
    staged_max: int = 0
    _futures: list[Future] = field(default_factory=list)

    def __post_init__(self) -> None:
        prefix = self.out.rstrip("/") + "/"
        listed = {u[len(prefix) :] for u in storage.list_urls(self.out)}
        self.existing = {name for name in listed if "/" not in name}  # direct children only
        self.old_shas = {s.name: s.sha256 for s in self.old.all_shards()} if self.old else {}
        self.pool = ThreadPoolExecutor(max_workers=UPLOAD_THREADS)
        self.slots = threading.BoundedSemaphore(STAGED_MAX)
        self.lock = threading.Lock()
        self.t0 = time.perf_counter()

    def add(self, path: Path, shard: ShardInfo) -> None:
        self._raise_failed()
        if self._already_there(shard):
            path.unlink(missing_ok=True)  # a remote task sends no bytes for a known shard
            self.kept += 1
            return
        self.slots.acquire()  # blocks the writer while STAGED_MAX shards wait or upload
        with self.lock:
            self.staged += 1
            self.staged_max = max(self.staged_max, self.staged)
        self._futures.append(self.pool.submit(self._upload, path, shard))

    def _already_there(self, shard: ShardInfo) -> bool:
        """Same name and sha256 in the old index, or an object a killed run uploaded whose
        stored sha256 matches (content-hashed names: a HEAD only for those)."""
        if self.old_shas.get(shard.name) == shard.sha256:
            return True
        if shard.name in self.existing:
            st = storage.stat(storage.join_url(self.out, shard.name))
            return bool(st and st["metadata"].get("sha256") == shard.sha256)
        return False

    def _upload(self, path: Path, shard: ShardInfo) -> None:
        try:
            n = storage.upload_file(
                path, storage.join_url(self.out, shard.name), metadata={"sha256": shard.sha256}
            )
            with self.lock:
                self.sent += n
                self.uploaded += 1
        finally:
            path.unlink(missing_ok=True)
            with self.lock:
                self.staged -= 1
            self.slots.release()

    def _raise_failed(self) -> None:
        for f in self._futures:
            if f.done() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]

    def publish(self, index_file: Path, index: ShardIndex) -> None:
        for f in self._futures:
            f.result()  # the first failed upload raises: the old index stays in place
        dt = max(time.perf_counter() - self.t0, 1e-9)
        if self.uploaded:
            self.say(
                f"  uploaded {self.uploaded} shard(s) to {self.out}: {self.sent / 1e6:.1f} MB "
                f"({self.sent / 1e6 / dt:.1f} MB/s); {self.kept} unchanged; at most "
                f"{self.staged_max} staged on local disk"
            )
        else:
            self.say(f"  all {self.kept} shard(s) already up to date in {self.out}")
        # the swap: one atomic PUT; readers see the old set or the new one
        storage.write_bytes(storage.join_url(self.out, INDEX), index_file.read_bytes())
        names = {s.name for s in index.all_shards()}
        for name in sorted(self.existing - names):
            if _is_shard_name(name):
                storage.remove(storage.join_url(self.out, name))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
