"""p2p.data.storage picks one backend per URL scheme from its explicit registry.

- local paths and s3:// URLs go to their own backends;
- a scheme no backend serves (gs://, az://) is one StorageError line naming the URL and the
  schemes served, and nothing is written anywhere;
- a new store is one `Storage` subclass registered under its scheme: the in-memory backend
  below (a complete, real implementation) serves every public function, which is the whole
  claim that GCS or Azure would be one new module;
- the conditional writes (create if absent, replace / delete if at a version) are
  compare-and-swap on every backend, and the run lease built on them works on a scheme
  registered by a test (mem://) with no lease code for it.
"""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import IO, Any

import pytest

from p2p.data import storage
from p2p.data.storage import ObjectNotFound, Storage, StorageError
from p2p.data.storage.local import LocalStorage
from p2p.data.storage.s3 import S3Storage
from p2p.errors import P2PError


class MemStorage(Storage):
    """`mem://name/key`: objects in a dict, for tests (a whole backend in ~60 lines)."""

    scheme = "mem"

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, dict[str, str]]] = {}
        self._cas = threading.Lock()  # makes each conditional write one step

    def _version(self, url: str) -> str | None:
        return str(id(self.objects[url])) if url in self.objects else None

    def create_if_absent(self, url: str, data: bytes) -> str | None:
        with self._cas:
            if url in self.objects:
                return None
            self.objects[url] = (bytes(data), {})
            return self._version(url)

    def read_versioned(self, url: str) -> tuple[bytes, str] | None:
        with self._cas:
            return (self.objects[url][0], self._version(url)) if url in self.objects else None

    def replace_if(self, url: str, version: str, data: bytes) -> str | None:
        with self._cas:
            if self._version(url) != version:
                return None
            self.objects[url] = (bytes(data), {})
            return self._version(url)

    def delete_if(self, url: str, version: str) -> bool:
        with self._cas:
            if self._version(url) != version:
                return False
            del self.objects[url]
            return True

    def upload_file(
        self, local: Path, url: str, *, metadata: dict[str, str] | None = None, **options: Any
    ) -> int:
        data = local.read_bytes()
        self.objects[url] = (data, dict(metadata or {}))
        return len(data)

    def write_bytes(self, url: str, data: bytes, **options: Any) -> None:
        self.objects[url] = (bytes(data), {})

    def remove(self, url: str, *, missing_ok: bool = True) -> None:
        if self.objects.pop(url, None) is None and not missing_ok:
            raise ObjectNotFound(f"{url}: not found")

    def open_url(self, url: str, *, buffer_size: int = 1 << 20) -> IO[bytes]:
        if url not in self.objects:
            raise ObjectNotFound(f"{url}: not found")
        return io.BytesIO(self.objects[url][0])

    def exists(self, url: str) -> bool:
        return url in self.objects

    def stat(self, url: str) -> dict[str, Any] | None:
        if url not in self.objects:
            return None
        data, meta = self.objects[url]
        return {"size": len(data), "metadata": dict(meta)}

    def list_urls(self, prefix: str, *, suffix: str = "") -> list[str]:
        below = prefix.rstrip("/") + "/"
        return sorted(u for u in self.objects if u.startswith(below) and u.endswith(suffix))

    def ray_storage(self, url: str) -> tuple[str, Any]:
        raise StorageError(f"{url}: Ray cannot checkpoint to memory")


@pytest.fixture
def mem(monkeypatch) -> MemStorage:
    backend = MemStorage()
    monkeypatch.setitem(storage.BACKENDS, "mem", backend)
    return backend


def test_each_scheme_goes_to_its_backend(tmp_path):
    assert isinstance(storage.backend_for("s3://bucket/key"), S3Storage)
    assert isinstance(storage.backend_for("S3://bucket/key"), S3Storage)  # schemes: any case
    for local in (str(tmp_path / "a"), tmp_path / "a", "relative/dir", "weird:name"):
        assert isinstance(storage.backend_for(local), LocalStorage), local
    assert storage.scheme_of("s3://b/k") == "s3" and storage.scheme_of(tmp_path) == ""
    assert storage.is_local("data/shards") and not storage.is_local("s3://b/shards")


@pytest.mark.parametrize("url", ["gs://bucket/shards/a.tar", "az://container/a.tar"])
def test_unknown_scheme_is_one_clear_error(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the old code took these for relative local paths
    src = tmp_path / "src.bin"
    src.write_bytes(b"x")
    calls = [
        lambda: storage.read_bytes(url),
        lambda: storage.write_bytes(url, b"x"),
        lambda: storage.upload_file(src, url),
        lambda: storage.open_url(url),
        lambda: storage.exists(url),
        lambda: storage.stat(url),
        lambda: storage.list_urls(url),
        lambda: storage.remove(url),
        lambda: storage.join_url(url, "x"),
        lambda: storage.ray_storage(url),
    ]
    scheme = url.split("://")[0]
    for call in calls:
        with pytest.raises(StorageError) as err:
            call()
        msg = str(err.value)
        assert msg == (
            f"{url}: unsupported storage scheme {scheme}:// (supported: local paths, s3://)"
        )
        assert not isinstance(err.value, ObjectNotFound)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.bin"]  # nothing written


def test_a_registered_backend_serves_every_function(mem, tmp_path):
    base = "mem://bucket/shards/demo"
    storage.write_bytes(storage.join_url(base, "index.json"), b"{}")
    storage.write_bytes(f"{base}/train-000000.tar", b"t" * 10)
    storage.write_bytes("mem://bucket/shards/demo-old/train-000000.tar", b"old")
    src = tmp_path / "val.tar"
    src.write_bytes(b"v" * 7)
    assert storage.upload_file(src, f"{base}/val-000000.tar", metadata={"sha256": "ab"}) == 7

    assert storage.read_bytes(f"{base}/index.json") == b"{}"
    with storage.open_url(f"{base}/train-000000.tar") as f:
        assert f.read() == b"t" * 10
    assert storage.exists(f"{base}/index.json") and not storage.exists(f"{base}/nope")
    assert storage.stat(f"{base}/val-000000.tar") == {"size": 7, "metadata": {"sha256": "ab"}}
    assert storage.stat(f"{base}/nope") is None
    assert storage.list_urls(base) == [
        f"{base}/index.json",
        f"{base}/train-000000.tar",
        f"{base}/val-000000.tar",
    ]  # a prefix is a directory: demo-old is not below demo
    assert storage.list_urls(base, suffix=".tar") == [
        f"{base}/train-000000.tar",
        f"{base}/val-000000.tar",
    ]
    storage.remove(f"{base}/index.json")
    assert not storage.exists(f"{base}/index.json")
    with pytest.raises(ObjectNotFound, match="index.json: not found"):
        storage.read_bytes(f"{base}/index.json")
    with pytest.raises(ObjectNotFound):
        storage.remove(f"{base}/index.json", missing_ok=False)
    assert set(mem.objects) == {
        f"{base}/train-000000.tar",
        f"{base}/val-000000.tar",
        "mem://bucket/shards/demo-old/train-000000.tar",
    }
    with pytest.raises(StorageError, match="unsupported storage scheme gs://.*mem://"):
        storage.exists("gs://b/k")  # the error lists what is registered now


def test_upload_of_a_missing_file_names_it(mem, tmp_path):
    with pytest.raises(ObjectNotFound, match="no such file to upload"):
        storage.upload_file(tmp_path / "missing.bin", "mem://bucket/x")
    assert mem.objects == {}


def test_ray_storage_per_backend(tmp_path, monkeypatch):
    # local: an absolute directory, Ray builds no filesystem
    monkeypatch.chdir(tmp_path)
    assert storage.ray_storage("runs") == (str(tmp_path / "runs"), None)
    # s3: pyarrow's S3 filesystem and the bucket/prefix inside it (no request is made)
    import pyarrow.fs as pafs

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    path, fs = storage.ray_storage("s3://bucket/runs")
    assert path == "bucket/runs" and isinstance(fs, pafs.S3FileSystem)


def test_transient_errors_are_asked_of_every_backend():
    from botocore.exceptions import EndpointConnectionError

    assert storage.is_transient_error(EndpointConnectionError(endpoint_url="http://x"))
    assert not storage.is_transient_error(ValueError("bad"))


def test_training_runs_read_checkpoints_through_the_registry(mem, tmp_path):
    """p2p train's checkpoint reads (latest, finished, export) use the backend of the run's
    storage_path: a run under mem:// is found and exported with no pyarrow filesystem."""
    from p2p.training.run_store import export_outputs, finished_checkpoint, latest_checkpoint

    run = "mem://bucket/runs/r1"
    for epoch, with_generator in ((1, True), (2, True), (3, False)):  # epoch 3: half-written
        d = f"{run}/epoch_{epoch:04d}"
        storage.write_bytes(f"{d}/metrics.json", b'{"epoch": %d, "step": 7}' % epoch)
        storage.write_bytes(f"{d}/train_log.csv", b"step\n7\n")
        if with_generator:
            storage.write_bytes(f"{d}/generator.pt", b"G%d" % epoch)
    storage.write_bytes("mem://bucket/runs/r1-old/epoch_0009/generator.pt", b"other run")

    assert latest_checkpoint("mem://bucket/runs", "r1") == f"{run}/epoch_0002"
    assert latest_checkpoint("mem://bucket/runs", "nothing") is None
    assert finished_checkpoint("mem://bucket/runs", "r1", 2) == f"{run}/epoch_0002"
    assert finished_checkpoint("mem://bucket/runs", "r1", 3) is None
    out = export_outputs(
        f"{run}/epoch_0002", tmp_path / "models", run_name="r1", mlflow_run_id=None
    )
    assert out.generator_path.read_bytes() == b"G2"
    assert out.metrics == {"epoch": 2, "step": 7}
    with pytest.raises(P2PError, match="epoch_0003: checkpoint has no generator.pt"):
        export_outputs(f"{run}/epoch_0003", tmp_path / "m3", run_name="r1", mlflow_run_id=None)


def test_unreadable_run_folder_is_an_error_not_a_fresh_run(mem, monkeypatch):
    """A listing the store refuses (denied, not missing) stops `p2p train` with the store's
    one-line error; it is not taken for "no checkpoint yet" (which would start over)."""
    from p2p.training.run_store import latest_checkpoint

    def denied(prefix: str, *, suffix: str = "") -> list[str]:
        raise StorageError(f"{prefix}: list denied (AccessDenied); check the credentials")

    monkeypatch.setattr(mem, "list_urls", denied)
    with pytest.raises(StorageError, match=r"^mem://bucket/runs/r1: list denied"):
        latest_checkpoint("mem://bucket/runs", "r1")

    def missing(prefix: str, *, suffix: str = "") -> list[str]:
        raise ObjectNotFound(f"{prefix}: bucket does not exist")

    monkeypatch.setattr(mem, "list_urls", missing)
    assert latest_checkpoint("mem://bucket/runs", "r1") is None  # nothing there: a new run


@pytest.fixture(params=["local", "s3", "mem"])
def any_store(request, tmp_path) -> str:
    """A folder (local path or URL) on each kind of backend."""
    if request.param == "local":
        return str(tmp_path / "store")
    if request.param == "s3":
        return f"s3://{request.getfixturevalue('s3_bucket')}/store"
    request.getfixturevalue("mem")
    return "mem://bucket/store"


def test_conditional_writes_are_compare_and_swap(any_store):
    url = f"{any_store}/runs/r/p2p.lease"
    assert storage.read_versioned(url) is None
    assert storage.replace_if(url, "v0", b"x") is None  # nothing there to replace
    assert storage.delete_if(url, "v0") is False
    v1 = storage.create_if_absent(url, b"first")
    assert v1 and storage.read_versioned(url) == (b"first", v1)
    assert storage.create_if_absent(url, b"second") is None  # taken: untouched
    assert storage.read_bytes(url) == b"first"

    v2 = storage.replace_if(url, v1, b"second")
    assert v2 and v2 != v1 and storage.read_versioned(url) == (b"second", v2)
    assert storage.replace_if(url, v1, b"stale writer") is None  # v1 is gone
    assert storage.delete_if(url, v1) is False
    assert storage.read_bytes(url) == b"second"
    assert storage.delete_if(url, v2) is True
    assert not storage.exists(url)


def test_racing_replacers_one_wins(any_store):
    """Eight writers replace the same version at once: exactly one succeeds."""
    url = f"{any_store}/race"
    v1 = storage.create_if_absent(url, b"start")
    barrier = threading.Barrier(8)
    results: list[str | None] = [None] * 8

    def go(i: int) -> None:
        barrier.wait()
        results[i] = storage.replace_if(url, v1, b"writer %d" % i)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, v in enumerate(results) if v is not None]
    assert len(winners) == 1, results
    assert storage.read_bytes(url) == b"writer %d" % winners[0]


def test_a_new_scheme_gets_the_run_lease(mem):
    """The lease (one driver per run, stale leases taken over) on mem://, with no lease code
    for the scheme: it only uses the storage API."""
    from p2p.training.lease import Lease, LeaseHeld, lease_url, read_lease

    url = lease_url("mem://bucket/runs", "r1")
    assert url == "mem://bucket/runs/r1/p2p.lease"
    first = Lease(url, "r1", ttl_s=60).acquire()
    first._stop.set()  # no heartbeats: we age it by hand below
    with pytest.raises(LeaseHeld, match="run r1 is already being trained"):
        Lease(url, "r1").acquire()
    assert first.renew() and read_lease(url).owner == first.owner

    body = json.loads(mem.objects[url][0])  # the driver dies: its lease goes stale
    body["renewed"] -= 61
    storage.write_bytes(url, json.dumps(body).encode())
    heir = Lease(url, "r1", ttl_s=60).acquire()
    assert read_lease(url).owner == heir.owner
    assert not first.renew() and first.lost
    first.release()  # lost: leaves the heir's lease alone
    assert read_lease(url).owner == heir.owner
    heir.release()
    assert url not in mem.objects


def test_shards_to_a_new_scheme_take_the_remote_path(mem, tmp_path, monkeypatch):
    """`write_shards` to a URL of any registered scheme streams shards, key files and
    index.json to it (the path S3 takes); the set is byte-identical to a local write and
    nothing lands on local disk under a `mem:` folder."""
    from data_fixtures import noise
    from PIL import Image

    from p2p.config import DataConfig
    from p2p.data.shards import read_index, write_shards
    from p2p.data.writer import DatasetWriter

    monkeypatch.chdir(tmp_path)  # the old code took the URL for a relative local path
    data = DataConfig(load_size=36, crop_size=32, shard_max_count=2, loader_workers=0)
    with DatasetWriter(tmp_path / "raw", "syn") as w:
        for split, n in {"train": 3, "val": 2}.items():
            for i in range(n):
                a = noise(32, 32, seed=10 * len(split) + i)
                w.add(f"{split}{i}", split, Image.fromarray(a), Image.fromarray(255 - a))
        w.commit(data=data, report={}, warnings=[])
    write_shards(tmp_path / "raw", tmp_path / "local", data)
    url = "mem://bucket/shards/syn"
    index = write_shards(tmp_path / "raw", url, data)

    local = {p.name: p.read_bytes() for p in (tmp_path / "local").iterdir()}
    remote = {u.rsplit("/", 1)[1]: mem.objects[u][0] for u in storage.list_urls(url)}
    assert remote == local and "keys-train.txt" in remote and "index.json" in remote
    assert read_index(url) == index
    assert not (tmp_path / "mem:").exists()


def test_batch_predict_plans_on_a_new_scheme(mem):
    """Batch prediction lists inputs and existing outputs of any registered scheme (resuming
    a job skips what is there) and refuses an output inside the input there too."""
    from p2p.batch_predict import plan
    from p2p.errors import P2PError

    for name in ("a.jpg", "sub/b.png", ".hidden/c.png", "notes.txt"):
        storage.write_bytes(f"mem://b/in/{name}", b"img")
    storage.write_bytes("mem://b/out/a.png", b"done")  # written by an earlier run
    p = plan("mem://b/in", "mem://b/out")
    assert p.total == 2 and p.skipped == 1 and not p.failed
    assert p.todo == [("mem://b/in/sub/b.png", "mem://b/out/sub/b.png")]
    with pytest.raises(P2PError, match="must not be inside the input"):
        plan("mem://b/in", "mem://b/in/out")


def test_local_lock_of_a_crashed_writer_is_broken(tmp_path, monkeypatch):
    """Locally, replace_if / delete_if hold `<name>.lock`: a lock older than LOCK_STALE_S
    (its writer died inside the compare-and-rename) is broken; a live one makes the write
    wait, then fail with one line naming the lock (a heartbeat retries at its next beat)."""
    import os

    from p2p.data.storage import local

    url = str(tmp_path / "run" / "p2p.lease")
    v1 = storage.create_if_absent(url, b"one")
    lock = tmp_path / "run" / "p2p.lease.lock"
    lock.touch()
    old = lock.stat().st_mtime - local.LOCK_STALE_S - 1
    os.utime(lock, (old, old))
    v2 = storage.replace_if(url, v1, b"two")  # the dead writer's lock was broken
    assert v2 and storage.read_bytes(url) == b"two" and not lock.exists()

    lock.touch()  # a live writer holds it
    monkeypatch.setattr(local, "LOCK_WAIT_S", 0.2)
    with pytest.raises(StorageError, match=r"p2p.lease: another writer holds p2p.lease.lock"):
        storage.replace_if(url, v2, b"three")
    assert storage.read_bytes(url) == b"two"
    lock.unlink()
    assert storage.delete_if(url, v2) and not storage.exists(url)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []  # no temp files left
