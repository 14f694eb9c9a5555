"""A raw stream over one S3 object that survives dropped connections (`S3Storage.open_url`).

A transient read error (connection drop, early EOF, timeout) reopens the object at the current
offset with a ranged GET pinned to the first response's ETag (`If-Match`), so an object replaced
meanwhile is an error, never a mix of two versions; after `READ_ATTEMPTS` tries the read fails
with a one-line StorageError naming the URL and the byte offset.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from typing import Any

from p2p.data.storage.base import StorageError
from p2p.data.storage.s3 import READ_ATTEMPTS, _retry, _wrap, is_transient_s3_error

log = logging.getLogger("p2p.data.storage.s3")  # the S3 backend's logger, as before the split


class _S3Stream(io.RawIOBase):
    """Raw stream over one S3 object that resumes after transient read errors."""

    def __init__(self, url: str, bucket: str, key: str, client: Any) -> None:
        super().__init__()
        self.url, self.bucket, self.key, self.client = url, bucket, key, client
        self.pos = 0
        self.etag: str | None = None
        self.size: int | None = None
        self.body: Any = None
        self._connect()

    def _connect(self) -> None:
        kw: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key}
        if self.etag is not None:  # a resume: same object version, from where we stopped
            kw.update(Range=f"bytes={self.pos}-", IfMatch=self.etag)
        try:
            resp = _retry(f"get {self.url}", lambda: self.client.get_object(**kw), READ_ATTEMPTS)
        except Exception as e:
            raise _wrap(self.url, "read", e) from e
        if self.etag is None:
            self.etag, self.size = resp["ETag"], resp["ContentLength"]
        self.body = resp["Body"]

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.size is not None and self.pos >= self.size:
            return 0
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                data = self.body.read(len(b))
                if not data:  # early EOF: the connection closed before Content-Length
                    raise ConnectionError(f"stream ended at byte {self.pos} of {self.size}")
                n = len(data)
                b[:n] = data
                self.pos += n
                return n
            except Exception as e:
                if attempt == READ_ATTEMPTS or not is_transient_s3_error(e):
                    raise StorageError(f"{self.url}: read failed at byte {self.pos}: {e}") from e
                log.warning("%s: %s; reconnecting at byte %d", self.url, e, self.pos)
                time.sleep(0.2 * attempt)
                self._close_body()
                self._connect()
        return 0  # pragma: no cover

    def _close_body(self) -> None:
        if self.body is not None:
            with contextlib.suppress(Exception):  # closing a broken connection may fail
                self.body.close()
            self.body = None

    def close(self) -> None:
        self._close_body()
        super().close()
