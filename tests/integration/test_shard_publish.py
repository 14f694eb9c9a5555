"""Re-sharding to S3 (moto): a killed run never breaks the published set, only changed shards
are uploaded, and local disk holds a few shards whatever the dataset size."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest
from test_shards import DATA, KEY_FILES, make_raw

from p2p.data import shards as shards_mod
from p2p.data import storage
from p2p.data.dataset import iter_tar_samples
from p2p.data.shards import read_index, write_shards

ROOT = Path(__file__).resolve().parents[2]


def _check_set(url: str) -> int:
    """Read every shard the index names, verifying sha256 and counts; the sample total."""
    index = read_index(url)
    n = 0
    for shard in index.all_shards():
        n += sum(1 for _ in iter_tar_samples(storage.join_url(url, shard.name), shard=shard))
    assert n == index.totals["samples"]
    return n


_KILLED_RUN = textwrap.dedent(
    """
    import sys, time
    from p2p.config import DataConfig
    from p2p.data import storage
    from p2p.data.shards import write_shards
    raw, url = sys.argv[1], sys.argv[2]
    real = storage.upload_file
    def slow_upload(*args, **kw):  # the first upload completes, then the run hangs here
        n = real(*args, **kw)
        print("UPLOADED", flush=True)
        time.sleep(600)
        return n
    storage.upload_file = slow_upload
    data = DataConfig(load_size=36, crop_size=32, shard_max_count=4, loader_workers=0)
    write_shards(raw, url, data, max_count=2)
    """
)


@pytest.mark.slow
def test_sigkill_mid_reshard_keeps_the_old_set(tmp_path, s3_bucket, monkeypatch):
    raw = make_raw(tmp_path / "raw", {"train": 24, "val": 3, "test": 2})
    url = f"s3://{s3_bucket}/shards/syn"
    old = write_shards(raw, url, DATA)  # max_count 4
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_RUN, str(raw), url],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        # wait for the first new shard to be uploaded (bounded: a hung child fails the test)
        timer = threading.Timer(120, proc.kill)
        timer.start()
        assert proc.stdout.readline().strip() == "UPLOADED"
        timer.cancel()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # the old index and every shard it names are intact and verify
    assert read_index(url) == old
    assert _check_set(url) == 29
    listed = {u.rsplit("/", 1)[-1] for u in storage.list_urls(url)}
    assert len(listed) > old.totals["shards"] + 1  # the killed run's new shard is there too
    staged = [p.name for p in tmpdir.iterdir()]
    assert len(staged) == 1 and staged[0].startswith("p2p-shards-")  # its temp folder

    # the next run cleans the killed run's temp folder and publishes the new set
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    new = write_shards(raw, url, DATA, max_count=2)
    assert list(tmpdir.iterdir()) == []
    assert read_index(url) == new and _check_set(url) == 29
    listed = {u.rsplit("/", 1)[-1] for u in storage.list_urls(url)}
    assert listed == {s.name for s in new.all_shards()} | {"index.json", *KEY_FILES}


@pytest.mark.slow
def test_failed_upload_keeps_the_old_set(tmp_path, s3_bucket, monkeypatch):
    raw = make_raw(tmp_path / "raw", {"train": 10, "val": 3, "test": 2})
    url = f"s3://{s3_bucket}/shards/syn"
    old = write_shards(raw, url, DATA)
    real_upload = storage.upload_file
    calls = []

    def flaky(local_path, dest, **kw):
        calls.append(dest)
        if len(calls) == 2:
            raise storage.StorageError(f"{dest}: upload failed: injected")
        return real_upload(local_path, dest, **kw)

    monkeypatch.setattr(storage, "upload_file", flaky)
    with pytest.raises(storage.StorageError, match="injected"):
        write_shards(raw, url, DATA, max_count=3)
    assert read_index(url) == old and _check_set(url) == 15


def _grow(root: Path, n_train: int) -> Path:
    return make_raw(root, {"train": n_train, "val": 3, "test": 2})


@pytest.mark.slow
def test_one_more_pair_changes_and_uploads_at_most_two_shards(tmp_path, s3_bucket, monkeypatch):
    url = f"s3://{s3_bucket}/shards/syn"
    before = write_shards(_grow(tmp_path / "raw40", 40), url, DATA)
    assert len(before.splits["train"].shards) >= 8
    uploads: list[str] = []
    real_upload = storage.upload_file

    def counting(local_path, dest, **kw):
        uploads.append(dest.rsplit("/", 1)[-1])
        return real_upload(local_path, dest, **kw)

    monkeypatch.setattr(storage, "upload_file", counting)
    lines: list[str] = []
    after = write_shards(_grow(tmp_path / "raw41", 41), url, DATA, progress=lines.append)
    old_names = {s.name for s in before.all_shards()}
    changed = [s.name for s in after.all_shards() if s.name not in old_names]
    assert 1 <= len(changed) <= 2, changed
    assert sorted(uploads) == sorted(changed)  # only the changed shards went up
    assert after.samples("train") == 41 and _check_set(url) == 46
    assert any(f"uploaded {len(changed)} shard(s)" in line for line in lines)


@pytest.mark.slow
def test_s3_staging_stays_bounded(tmp_path, s3_bucket, monkeypatch):
    """60 shards: each is uploaded as soon as it is finished; local disk never holds more than
    a few (the writer waits for the uploads)."""
    raw = make_raw(tmp_path / "raw", {"train": 60, "val": 1, "test": 1})
    url = f"s3://{s3_bucket}/shards/syn"
    real_upload = storage.upload_file
    seen: list[int] = []

    def watching(local_path, dest, **kw):
        staged = lambda: sum(1 for p in Path(local_path).parent.glob("*.tar"))  # noqa: E731
        seen.append(staged())
        n = real_upload(local_path, dest, **kw)
        seen.append(staged())
        return n

    monkeypatch.setattr(storage, "upload_file", watching)
    index = write_shards(raw, url, DATA, max_count=1)
    shards = index.totals["shards"]
    assert shards >= 60 and len(seen) == 2 * shards
    assert max(seen) <= shards_mod.STAGED_MAX + 1, seen  # + the one waiting for a slot
    assert _check_set(url) == 62


def test_local_temp_folders_of_killed_runs_are_removed(tmp_path):
    """`.NAME.tmp-PID-HEX` beside a local output: removed when PID is gone, kept while alive."""
    raw = make_raw(tmp_path / "raw", {"train": 4})
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    stale = tmp_path / f".shards.tmp-{int(dead.stdout)}-0123abcd"
    live = tmp_path / f".shards.tmp-{os.getpid()}-4567cdef"
    for d in (stale, live):
        d.mkdir()
        (d / "train-000000.tar").write_bytes(b"x" * 1000)
    write_shards(raw, tmp_path / "shards", DATA)
    assert not stale.exists() and live.exists()
    assert read_index(tmp_path / "shards").samples("train") == 4
