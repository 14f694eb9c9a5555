"""p2p.data.storage against a real S3 endpoint (moto over HTTP) and the local filesystem."""

from __future__ import annotations

import os

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ConnectionClosedError, ResponseStreamingError

from p2p.data import storage
from p2p.data.storage import ObjectNotFound, StorageError

MiB = 1024 * 1024


def _client(endpoint: str, max_attempts: int = 1):
    """A private client (event hooks on it must not leak into storage's cached client)."""
    cfg = Config(retries={"total_max_attempts": max_attempts, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint, config=cfg)


def _small_parts():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=5 * MiB,
        multipart_chunksize=5 * MiB,
        max_concurrency=1,  # parts in order, so "fail after the first part" is well defined
        preferred_transfer_client="classic",
    )


def _fail_calls(client, operation: str, should_fail):
    """Make `operation` requests fail with a dropped connection when should_fail(n) is true
    (n = 1-based call count). Returns the list of call numbers seen."""
    calls: list[int] = []

    def hook(request, **_):
        calls.append(len(calls) + 1)
        if should_fail(calls[-1]):
            raise ConnectionClosedError(endpoint_url=request.url)

    client.meta.events.register(f"before-send.s3.{operation}", hook)
    return calls


@pytest.fixture
def big_file(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(11 * MiB))  # 3 parts of 5, 5, 1 MiB
    return path


# ----------------------------------------------------------------------------- URLs


def test_url_helpers():
    assert storage.is_s3_url("s3://bkt/a/b") and not storage.is_s3_url("/tmp/a")
    assert storage.split_s3_url("s3://bkt/a/b.tar") == ("bkt", "a/b.tar")
    assert storage.split_s3_url("s3://bkt") == ("bkt", "")
    assert storage.join_url("s3://bkt/p/", "x", "/y.tar") == "s3://bkt/p/x/y.tar"
    assert storage.join_url("/tmp/d", "a.tar") == "/tmp/d/a.tar"
    with pytest.raises(StorageError, match="not an s3"):
        storage.split_s3_url("/local/path")
    with pytest.raises(StorageError, match="bucket name"):
        storage.split_s3_url("s3://b/key")


# ----------------------------------------------------------------------------- local


def test_local_roundtrip(tmp_path, big_file):
    url = str(tmp_path / "sub" / "x.bin")
    storage.write_bytes(url, b"hello")
    assert storage.read_bytes(url) == b"hello" and storage.exists(url)
    assert storage.upload_file(big_file, str(tmp_path / "copy" / "big.bin")) == 11 * MiB
    assert storage.read_bytes(tmp_path / "copy" / "big.bin") == big_file.read_bytes()
    assert storage.list_urls(tmp_path / "sub") == [url]
    assert storage.list_urls(tmp_path / "missing") == []
    # no temp files are left behind next to the targets
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.bin"]
    storage.remove(url)
    assert not storage.exists(url)
    with pytest.raises(ObjectNotFound, match="x.bin: not found"):
        storage.read_bytes(url)


# ----------------------------------------------------------------------------- S3


def test_s3_write_read_list_exists(s3_bucket):
    base = f"s3://{s3_bucket}/shards/demo"
    storage.write_bytes(storage.join_url(base, "index.json"), b"{}")
    storage.write_bytes(storage.join_url(base, "train-000000.tar"), b"x" * 1000)
    storage.write_bytes(f"s3://{s3_bucket}/shards/demo-old/train-000000.tar", b"old")
    assert storage.read_bytes(f"{base}/train-000000.tar") == b"x" * 1000
    assert storage.exists(f"{base}/index.json")
    assert not storage.exists(f"{base}/nope.json")
    # a prefix is a directory: demo-old/ is not listed under demo
    assert storage.list_urls(base) == [f"{base}/index.json", f"{base}/train-000000.tar"]
    assert storage.list_urls(base, suffix=".tar") == [f"{base}/train-000000.tar"]
    assert len(storage.list_urls(f"s3://{s3_bucket}")) == 3
    storage.remove(f"{base}/index.json")
    assert not storage.exists(f"{base}/index.json")
    with pytest.raises(ObjectNotFound, match="nope.json: not found"):
        storage.read_bytes(f"{base}/nope.json")
    with pytest.raises(ObjectNotFound, match="bucket does not exist"):
        storage.read_bytes("s3://no-such-bucket-p2p/x")


def test_s3_multipart_upload_roundtrip(s3_server, s3_bucket, big_file):
    client = _client(s3_server)
    parts = _fail_calls(client, "UploadPart", lambda n: False)
    url = f"s3://{s3_bucket}/big/big.bin"
    n = storage.upload_file(big_file, url, client=client, transfer_config=_small_parts())
    assert n == 11 * MiB and len(parts) == 3  # really multipart
    assert storage.read_bytes(url) == big_file.read_bytes()


def test_s3_upload_retries_transient_error(s3_server, s3_bucket, big_file):
    """The 2nd part's connection drops once: the transfer is aborted and retried as a whole."""
    client = _client(s3_server, max_attempts=1)  # no botocore retries: upload_file's own retry
    calls = _fail_calls(client, "UploadPart", lambda n: n == 2)
    url = f"s3://{s3_bucket}/big/retried.bin"
    storage.upload_file(big_file, url, client=client, transfer_config=_small_parts())
    assert len(calls) >= 5  # 2 parts of the failed attempt + 3 of the good one
    assert storage.read_bytes(url) == big_file.read_bytes()
    assert "Uploads" not in client.list_multipart_uploads(Bucket=s3_bucket)  # failed one aborted


def test_s3_upload_botocore_retries_request(s3_server, s3_bucket, big_file):
    """With botocore retries on, a single dropped request is retried inside the transfer."""
    client = _client(s3_server, max_attempts=3)
    calls = _fail_calls(client, "UploadPart", lambda n: n == 1)
    url = f"s3://{s3_bucket}/big/req-retry.bin"
    storage.upload_file(big_file, url, client=client, transfer_config=_small_parts(), attempts=1)
    assert len(calls) == 4
    assert storage.read_bytes(url) == big_file.read_bytes()


def test_s3_failed_multipart_upload_leaves_nothing(s3_server, s3_bucket, big_file):
    """Part 1 (5 MiB) goes up, every later part fails: no object under the key, no parts left."""
    client = _client(s3_server, max_attempts=1)
    _fail_calls(client, "UploadPart", lambda n: n != 1)  # only the very first part passes
    url = f"s3://{s3_bucket}/big/failed.bin"
    with pytest.raises(StorageError, match="failed.bin: upload failed"):
        storage.upload_file(big_file, url, client=client, transfer_config=_small_parts())
    assert not storage.exists(url)
    assert "Uploads" not in client.list_multipart_uploads(Bucket=s3_bucket)
    assert storage.list_urls(f"s3://{s3_bucket}/big") == []


def test_s3_failed_single_put_leaves_nothing(s3_server, s3_bucket, tmp_path):
    small = tmp_path / "small.bin"
    small.write_bytes(b"y" * 1000)
    client = _client(s3_server, max_attempts=1)
    calls = _fail_calls(client, "PutObject", lambda n: True)
    url = f"s3://{s3_bucket}/small.bin"
    with pytest.raises(StorageError, match="upload failed"):
        storage.upload_file(small, url, client=client, attempts=2)
    assert len(calls) == 2 and not storage.exists(url)


def test_s3_upload_to_missing_bucket_fails_fast(s3_server, tmp_path):
    small = tmp_path / "small.bin"
    small.write_bytes(b"z")
    client = _client(s3_server, max_attempts=1)
    calls = _fail_calls(client, "PutObject", lambda n: False)
    with pytest.raises(ObjectNotFound, match="bucket does not exist"):
        storage.upload_file(small, "s3://no-such-bucket-p2p/x.bin", client=client)
    assert len(calls) == 1  # not a transient error: no retry


def test_s3_stream_resumes_after_dropped_connection(s3_bucket):
    data = os.urandom(300_000)
    url = f"s3://{s3_bucket}/stream.bin"
    storage.write_bytes(url, data)
    with storage.open_url(url, buffer_size=4096) as f:
        head = f.read(10_000)
        raw = f.raw

        class Dropped:  # the socket dies mid-object
            def read(self, n):
                raise ResponseStreamingError(error="connection reset by peer")

            def close(self):
                pass

        raw.body = Dropped()
        rest = f.read()
    assert head + rest == data


def test_s3_stream_refuses_to_mix_object_versions(s3_bucket):
    url = f"s3://{s3_bucket}/changing.bin"
    storage.write_bytes(url, b"a" * 100_000)
    with storage.open_url(url, buffer_size=4096) as f:
        f.read(5000)
        storage.write_bytes(url, b"b" * 100_000)  # replaced while we read it
        f.raw.body.close()  # force a reconnect
        f.raw.body = type("Dead", (), {"read": lambda self, n: b"", "close": lambda self: None})()
        with pytest.raises(StorageError, match="changing.bin"):
            f.read()
