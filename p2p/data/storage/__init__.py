"""Local paths and `s3://bucket/key` URLs behind one small API; the library's S3 client.

Every function takes a local path or a URL and hands it to the backend of the URL's scheme,
found in the explicit registry `BACKENDS`:

| scheme | backend                                    | URLs                    |
|--------|--------------------------------------------|-------------------------|
| ""     | p2p.data.storage.local.LocalStorage        | local paths, PathLike   |
| "s3"   | p2p.data.storage.s3.S3Storage              | `s3://bucket/key`       |

Each backend implements `p2p.data.storage.base.Storage` (writes atomic, streamed reads, a
missing object is `ObjectNotFound`, other failures one-line `StorageError`s naming the URL,
conditional writes that are compare-and-swap on one object, which p2p.training.lease uses).
Another store (GCS, Azure) is one new module with a `Storage` subclass and one line here.
A URL with any other scheme is refused with a `StorageError` naming it and the schemes served.

Where S3 is and how it is retried: see p2p.data.storage.s3 (`s3_client` is the library's one
S3 client; credentials come only from boto3's chain and are never read, stored or logged).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import IO, Any

from p2p.data.storage.base import ObjectNotFound, Storage, StorageError
from p2p.data.storage.local import LocalStorage
from p2p.data.storage.s3 import (
    MULTIPART_CHUNKSIZE,
    MULTIPART_THRESHOLD,
    READ_ATTEMPTS,
    UPLOAD_ATTEMPTS,
    S3Storage,
    is_s3_url,
    is_transient_s3_error,
    s3_client,
    split_s3_url,
)

__all__ = [
    "BACKENDS",
    "MULTIPART_CHUNKSIZE",
    "MULTIPART_THRESHOLD",
    "READ_ATTEMPTS",
    "UPLOAD_ATTEMPTS",
    "ObjectNotFound",
    "Storage",
    "StorageError",
    "backend_for",
    "create_if_absent",
    "delete_if",
    "exists",
    "is_local",
    "is_s3_url",
    "is_transient_error",
    "is_transient_s3_error",
    "join_url",
    "list_urls",
    "open_url",
    "ray_storage",
    "read_bytes",
    "read_versioned",
    "remove",
    "replace_if",
    "s3_client",
    "scheme_of",
    "split_s3_url",
    "stat",
    "upload_file",
    "write_bytes",
]

# URL scheme -> the backend that serves it ("" = a local path).
BACKENDS: dict[str, Storage] = {
    "": LocalStorage(),
    "s3": S3Storage(),
}

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme_of(url: str | os.PathLike) -> str:
    """The URL's scheme, lower case ("s3" for `s3://b/k`); "" for a local path."""
    if not isinstance(url, str):
        return ""
    m = _SCHEME.match(url)
    return m.group(1).lower() if m else ""


def backend_for(url: str | os.PathLike) -> Storage:
    """The backend serving `url`; a StorageError for a scheme no backend serves."""
    scheme = scheme_of(url)
    backend = BACKENDS.get(scheme)
    if backend is None:
        served = ", ".join("local paths" if s == "" else f"{s}://" for s in BACKENDS)
        raise StorageError(f"{url}: unsupported storage scheme {scheme}:// (supported: {served})")
    return backend


def is_local(url: str | os.PathLike) -> bool:
    """True for a local path (no URL scheme)."""
    return scheme_of(url) == ""


def join_url(base: str | os.PathLike, *parts: str) -> str:
    """Join path parts onto a local directory or a URL prefix."""
    return backend_for(base).join_url(os.fspath(base), *parts)


# ----------------------------------------------------------------------------- writing


def upload_file(
    local: str | os.PathLike,
    url: str | os.PathLike,
    *,
    metadata: dict[str, str] | None = None,
    **options: Any,
) -> int:
    """Copy a local file to `url` (a URL or a local path), atomically; returns the byte count.

    Args:
        local: the file to upload.
        url: the destination.
        metadata: user metadata stored with the object (e.g. {"sha256": ...}) where the store
            keeps any (S3 does, local files do not); see `stat`.
        options: backend tuning, S3: `client`, `transfer_config`, `attempts`
            (p2p.data.storage.s3.S3Storage.upload_file).
    """
    backend = backend_for(url)
    local = Path(local)
    if not local.is_file():
        raise ObjectNotFound(f"{local}: no such file to upload")
    return backend.upload_file(local, os.fspath(url), metadata=metadata, **options)


def write_bytes(url: str | os.PathLike, data: bytes, **options: Any) -> None:
    """Write `data` to `url` atomically (local: temp file + rename; S3: one PUT)."""
    backend_for(url).write_bytes(os.fspath(url), data, **options)


def remove(url: str | os.PathLike, *, missing_ok: bool = True) -> None:
    """Delete one object / file."""
    backend_for(url).remove(os.fspath(url), missing_ok=missing_ok)


# ----------------------------------------------------------------------------- reading


def read_bytes(url: str | os.PathLike) -> bytes:
    """The whole content of a file / object."""
    return backend_for(url).read_bytes(os.fspath(url))


def open_url(url: str | os.PathLike, *, buffer_size: int = 1 << 20) -> IO[bytes]:
    """A readable binary stream over a file / object (streamed, not downloaded). S3 streams
    resume after dropped connections (p2p.data.storage.s3)."""
    return backend_for(url).open_url(os.fspath(url), buffer_size=buffer_size)


def exists(url: str | os.PathLike) -> bool:
    """True if a local file/dir or an object exists at `url`."""
    return backend_for(url).exists(os.fspath(url))


def stat(url: str | os.PathLike) -> dict[str, Any] | None:
    """{"size": bytes, "metadata": {...}} of a file / object, or None if it does not exist.

    Local files have empty metadata; S3 objects carry the user metadata given at upload.
    """
    return backend_for(url).stat(os.fspath(url))


def list_urls(prefix: str | os.PathLike, *, suffix: str = "") -> list[str]:
    """Sorted URLs of all files/objects below a directory or URL prefix (recursive).

    A prefix is treated as a directory: `s3://b/shards/demo` lists `shards/demo/...`,
    not `shards/demo-old/...`.
    """
    return backend_for(prefix).list_urls(os.fspath(prefix), suffix=suffix)


# ----------------------------------------------------------------------------- conditional writes


def create_if_absent(url: str | os.PathLike, data: bytes) -> str | None:
    """Store `data` at `url` only if nothing is there: its version, or None if something is."""
    return backend_for(url).create_if_absent(os.fspath(url), data)


def read_versioned(url: str | os.PathLike) -> tuple[bytes, str] | None:
    """(content, version) of a file / object, or None if there is none."""
    return backend_for(url).read_versioned(os.fspath(url))


def replace_if(url: str | os.PathLike, version: str, data: bytes) -> str | None:
    """Replace the object with `data` if it is still at `version`: the new version, or None
    if another writer changed (or removed) it first."""
    return backend_for(url).replace_if(os.fspath(url), version, data)


def delete_if(url: str | os.PathLike, version: str) -> bool:
    """Delete the object if it is still at `version`; False if it changed or is gone."""
    return backend_for(url).delete_if(os.fspath(url), version)


# ----------------------------------------------------------------------------- other libraries


def ray_storage(url: str | os.PathLike) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for Ray Train's `RunConfig` from a checkpoint root
    (local directory or URL); the filesystem is a `pyarrow.fs.FileSystem`, or None for local."""
    return backend_for(url).ray_storage(os.fspath(url))


def is_transient_error(exc: BaseException) -> bool:
    """True if any backend calls `exc` a passing failure (connection drop, throttling, 5xx)."""
    return any(b.is_transient_error(exc) for b in BACKENDS.values())
