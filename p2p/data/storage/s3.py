"""`s3://bucket/key` URLs: the `s3` scheme of p2p.data.storage, and the library's S3 client.

Where S3 is: `AWS_ENDPOINT_URL` (MinIO, moto) or AWS itself; region from `AWS_DEFAULT_REGION`.
Credentials come only from boto3's standard chain (environment, profile, instance role); this
module never reads, stores or logs them.

Failure model:
- every S3 request is retried by botocore (`standard` mode, exponential backoff with jitter);
- `upload_file` / `write_bytes` are retried as a whole on transient errors (connection drops,
  5xx, throttling) and are atomic: an S3 object appears under its key only when the PUT or the
  CompleteMultipartUpload succeeds, and a failed multipart upload is aborted, so a failed upload
  leaves nothing under the final key (and never a truncated object);
- `open_url` streams an S3 object and, if the connection drops mid-stream, resumes from the
  current offset with a ranged GET pinned to the same ETag (p2p.data.storage.s3_stream);
- conditional writes (S3, MinIO and moto support them) use the ETag as the version:
  `create_if_absent` is a PUT with `If-None-Match: *`, `replace_if` a PUT and `delete_if` a
  DELETE with `If-Match: <etag>`; a 412 (precondition failed) or 409 (a concurrent conditional
  write won) means another writer got there first. botocore retries them on transient errors.
"""

from __future__ import annotations

import io
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

from p2p.data.storage.base import ObjectNotFound, Storage, StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")

UPLOAD_ATTEMPTS = 3  # whole-transfer attempts per upload / write (botocore retries inside)
READ_ATTEMPTS = 5  # reconnects while streaming one object
MULTIPART_THRESHOLD = 64 * 1024 * 1024  # bytes; larger files go up in parallel parts
MULTIPART_CHUNKSIZE = 16 * 1024 * 1024  # bytes per part (S3 minimum is 5 MiB)

# S3 error codes worth another try; HTTP 5xx are always retried.
_TRANSIENT_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
    }
)
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


# ----------------------------------------------------------------------------- URLs


def is_s3_url(url: str | os.PathLike) -> bool:
    """True for `s3://bucket/...` URLs."""
    return isinstance(url, str) and url.startswith("s3://")


def split_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b"). The key may be empty (bucket root)."""
    if not is_s3_url(url):
        raise StorageError(f"{url}: not an s3:// URL")
    bucket, _, key = url[len("s3://") :].partition("/")
    if not 3 <= len(bucket) <= 63:
        raise StorageError(f"{url}: bucket name must be 3-63 characters")
    return bucket, key


# ----------------------------------------------------------------------------- client

_clients: dict[tuple, Any] = {}
_clients_lock = threading.Lock()


def _after_fork() -> None:
    # A child (DataLoader worker) must not inherit a lock another thread held at fork time,
    # nor reuse the parent's connections.
    global _clients_lock
    _clients_lock = threading.Lock()
    _clients.clear()


os.register_at_fork(after_in_child=_after_fork)


def s3_client(*, max_attempts: int = 5, retry_mode: str = "standard") -> Any:
    """A boto3 S3 client for the current environment (cached per process and settings).

    Endpoint from AWS_ENDPOINT_URL, region from AWS_DEFAULT_REGION (default us-east-1),
    credentials from boto3's chain. Clients are thread-safe but not fork-safe, so the cache is
    keyed by pid: DataLoader worker processes build their own.

    Args:
        max_attempts: total attempts per request made by botocore (1 = no retries).
        retry_mode: botocore retry mode, "standard" or "adaptive" (client-side rate limiting).
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or None
    region = os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    key = (os.getpid(), endpoint, region, max_attempts, retry_mode)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"total_max_attempts": max_attempts, "mode": retry_mode},
                connect_timeout=10,
                read_timeout=60,
                max_pool_connections=32,
            )
            session = boto3.session.Session()  # sessions are not thread-safe: one per client
            client = session.client("s3", endpoint_url=endpoint, region_name=region, config=config)
            _clients[key] = client
    return client


def _default_client() -> Any:
    # Looked up on the package, so that `p2p.data.storage.s3_client` stays the one place to
    # swap the client (the flow tests point it at a dead endpoint to exercise retries).
    from p2p.data import storage

    return storage.s3_client()


def is_transient_s3_error(exc: BaseException) -> bool:
    """Connection drops, timeouts, throttling and 5xx: worth retrying the whole operation."""
    from botocore import exceptions as bex

    if isinstance(
        exc,
        bex.ConnectionError
        | bex.HTTPClientError
        | bex.IncompleteReadError
        | ConnectionError
        | TimeoutError,
    ):
        return True
    if isinstance(exc, bex.ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return err.get("Code") in _TRANSIENT_CODES or status >= 500
    try:
        from urllib3.exceptions import HTTPError as Urllib3Error

        return isinstance(exc, Urllib3Error)
    except ImportError:  # pragma: no cover
        return False


def _error_code(exc: BaseException) -> str:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _retry(what: str, fn: Callable[[], T], attempts: int) -> T:
    """Run fn, retrying transient errors with exponential backoff and jitter."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as e:
            if attempt == attempts or not is_transient_s3_error(e):
                raise
            delay = min(8.0, 0.5 * 2 ** (attempt - 1)) * (0.5 + random.random())
            log.warning(
                "%s: transient error (%s); retry %d/%d in %.1fs",
                what,
                e,
                attempt,
                attempts - 1,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


# HTTP statuses of a conditional write that lost: precondition failed, concurrent write won.
_LOST_RACE = (409, 412)


def _http_status(exc: BaseException) -> int:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return 0


def _wrap(url: str, action: str, exc: Exception) -> StorageError:
    code = _error_code(exc)
    if code in _MISSING_CODES:
        return ObjectNotFound(f"{url}: not found")
    if code == "NoSuchBucket":
        return ObjectNotFound(f"{url}: bucket does not exist")
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
        return StorageError(f"{url}: {action} denied ({code}); check the S3 credentials")
    return StorageError(f"{url}: {action} failed: {type(exc).__name__}: {exc}")


# ----------------------------------------------------------------------------- backend


class S3Storage(Storage):
    scheme = "s3"

    def upload_file(
        self,
        local: Path,
        url: str,
        *,
        metadata: dict[str, str] | None = None,
        client: Any = None,
        transfer_config: Any = None,
        attempts: int = UPLOAD_ATTEMPTS,
    ) -> int:
        """A managed transfer (multipart above `MULTIPART_THRESHOLD`, parts in parallel). A
        failed multipart upload is aborted by the transfer manager, so nothing appears under
        the key; the whole transfer is retried on transient errors and the stored size is
        checked at the end.

        Args:
            client: boto3 S3 client (default: `s3_client()`).
            transfer_config: boto3 `TransferConfig` (default: thresholds above, classic client).
            attempts: whole-transfer attempts on transient errors.
        """
        from boto3.s3.transfer import TransferConfig, create_transfer_manager

        size = local.stat().st_size
        bucket, key = split_s3_url(url)
        if not key or key.endswith("/"):
            raise StorageError(f"{url}: an object key is needed, not a prefix")
        client = client or _default_client()
        config = transfer_config or TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_CHUNKSIZE,
            max_concurrency=4,
            preferred_transfer_client="classic",
        )

        def once() -> None:
            with create_transfer_manager(client, config) as manager:
                extra = {"Metadata": dict(metadata)} if metadata else None
                manager.upload(str(local), bucket, key, extra_args=extra).result()

        try:
            _retry(f"upload {url}", once, attempts)
            stored = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
        except Exception as e:
            raise _wrap(url, "upload", e) from e
        if stored != size:  # pragma: no cover - S3 guarantees this; a broken gateway might not
            raise StorageError(f"{url}: stored {stored} bytes, expected {size}")
        return size

    def write_bytes(self, url: str, data: bytes, *, client: Any = None) -> None:
        bucket, key = split_s3_url(url)
        client = client or _default_client()
        try:
            _retry(
                f"put {url}",
                lambda: client.put_object(Bucket=bucket, Key=key, Body=data),
                UPLOAD_ATTEMPTS,
            )
        except Exception as e:
            raise _wrap(url, "write", e) from e

    def remove(self, url: str, *, missing_ok: bool = True) -> None:
        bucket, key = split_s3_url(url)
        if not missing_ok and not self.exists(url):
            raise ObjectNotFound(f"{url}: not found")
        try:
            _default_client().delete_object(Bucket=bucket, Key=key)
        except Exception as e:
            raise _wrap(url, "delete", e) from e

    def open_url(self, url: str, *, buffer_size: int = 1 << 20) -> IO[bytes]:
        """Streams survive dropped connections: they reopen at the current offset (ranged GET,
        If-Match on the first ETag so a concurrently replaced object is an error, not a mix)."""
        from p2p.data.storage.s3_stream import _S3Stream  # imports this module: not at the top

        bucket, key = split_s3_url(url)
        raw = _S3Stream(url, bucket, key, _default_client())
        return io.BufferedReader(raw, buffer_size=buffer_size)

    def _head(self, url: str) -> dict[str, Any] | None:
        """The object's HEAD response, or None if it does not exist."""
        bucket, key = split_s3_url(url)
        client = _default_client()
        try:
            return _retry(
                f"head {url}", lambda: client.head_object(Bucket=bucket, Key=key), READ_ATTEMPTS
            )
        except Exception as e:
            if _error_code(e) in _MISSING_CODES:
                return None
            raise _wrap(url, "stat", e) from e

    def exists(self, url: str) -> bool:
        return self._head(url) is not None

    def stat(self, url: str) -> dict[str, Any] | None:
        head = self._head(url)
        if head is None:
            return None
        return {"size": head["ContentLength"], "metadata": dict(head.get("Metadata") or {})}

    def list_urls(self, prefix: str, *, suffix: str = "") -> list[str]:
        """An S3 prefix is a directory: `s3://b/shards/demo` lists `shards/demo/...`, not
        `shards/demo-old/...`."""
        bucket, key = split_s3_url(prefix)
        key = key.rstrip("/") + "/" if key.strip("/") else ""
        out: list[str] = []
        try:
            paginator = _default_client().get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=key):
                for obj in page.get("Contents", []):
                    if obj["Key"].endswith(suffix):
                        out.append(f"s3://{bucket}/{obj['Key']}")
        except Exception as e:
            raise _wrap(prefix, "list", e) from e
        return sorted(out)

    def _put_if(self, url: str, data: bytes, **condition: str) -> str | None:
        bucket, key = split_s3_url(url)
        try:
            out = _default_client().put_object(Bucket=bucket, Key=key, Body=data, **condition)
        except Exception as e:
            if _http_status(e) in _LOST_RACE or _error_code(e) == "NoSuchKey":  # If-Match: gone
                return None
            raise _wrap(url, "conditional write", e) from e
        return str(out["ETag"])

    def create_if_absent(self, url: str, data: bytes) -> str | None:
        return self._put_if(url, data, IfNoneMatch="*")

    def read_versioned(self, url: str) -> tuple[bytes, str] | None:
        bucket, key = split_s3_url(url)
        try:
            out = _default_client().get_object(Bucket=bucket, Key=key)
            return out["Body"].read(), str(out["ETag"])
        except Exception as e:
            if _error_code(e) in _MISSING_CODES:
                return None
            raise _wrap(url, "read", e) from e

    def replace_if(self, url: str, version: str, data: bytes) -> str | None:
        return self._put_if(url, data, IfMatch=version)

    def delete_if(self, url: str, version: str) -> bool:
        bucket, key = split_s3_url(url)
        try:
            _default_client().delete_object(Bucket=bucket, Key=key, IfMatch=version)
        except Exception as e:
            if _http_status(e) in _LOST_RACE or _error_code(e) in _MISSING_CODES:
                return False
            raise _wrap(url, "conditional delete", e) from e
        return True

    def ray_storage(self, url: str) -> tuple[str, Any]:
        """A pyarrow S3 filesystem from the URL (pyarrow reads AWS_ENDPOINT_URL, the region and
        boto's credential chain itself) and the `bucket/prefix` path inside it."""
        import pyarrow.fs as pafs

        try:
            fs, path = pafs.FileSystem.from_uri(url)
        except (OSError, ValueError) as e:
            raise StorageError(f"{url}: not a usable S3 location for Ray: {e}") from None
        return path, fs

    def is_transient_error(self, exc: BaseException) -> bool:
        return is_transient_s3_error(exc)
