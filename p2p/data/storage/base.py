"""What a storage backend is: the operations every URL scheme implements, and their errors.

A backend serves one URL scheme (`""` for local paths, `"s3"` for `s3://...`); p2p.data.storage
picks it from the URL and calls it. To add a store (GCS, Azure), write one module with a
`Storage` subclass and register it in `p2p.data.storage.BACKENDS`.

Contract, for every backend:
- writes are atomic: an object appears under its name complete or not at all, and a failed
  write leaves what was there untouched;
- a missing object is `ObjectNotFound` (a `StorageError` and a `FileNotFoundError`); any other
  failure is a `StorageError` whose one-line message names the URL and the reason;
- `list_urls` treats a prefix as a directory (`.../demo` never lists `.../demo-old/...`);
- the conditional operations (`create_if_absent`, `read_versioned`, `replace_if`, `delete_if`)
  are compare-and-swap on one object: of several writers racing on the same version exactly
  one wins, the others get None / False. A version is an opaque token (S3: the ETag) that
  changes whenever the object is written. p2p.training.lease builds the run lease on them,
  so every scheme gets leases.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import IO, Any

from p2p.errors import P2PError


class StorageError(P2PError):
    """An S3 or filesystem operation failed; the message names the URL and the reason."""


class ObjectNotFound(StorageError, FileNotFoundError):
    """The URL names no object / file."""


class Storage(ABC):
    """The operations of one URL scheme. URLs passed in always belong to this backend."""

    scheme: str = ""  # the URL scheme it serves ("" = plain local paths)

    # -- writing ------------------------------------------------------------------------------

    @abstractmethod
    def upload_file(
        self, local: Path, url: str, *, metadata: dict[str, str] | None = None, **options: Any
    ) -> int:
        """Copy the existing local file `local` to `url` atomically; the byte count.
        `metadata` is stored with the object where the store supports it (see `stat`);
        `options` are backend-specific tuning (S3: client, transfer_config, attempts)."""

    @abstractmethod
    def write_bytes(self, url: str, data: bytes, **options: Any) -> None:
        """Store `data` under `url`, atomically."""

    @abstractmethod
    def remove(self, url: str, *, missing_ok: bool = True) -> None:
        """Delete one object / file."""

    # -- reading ------------------------------------------------------------------------------

    @abstractmethod
    def open_url(self, url: str, *, buffer_size: int = 1 << 20) -> IO[bytes]:
        """A readable binary stream (streamed, not downloaded); ObjectNotFound if missing."""

    def read_bytes(self, url: str) -> bytes:
        with self.open_url(url) as f:
            return f.read()

    @abstractmethod
    def exists(self, url: str) -> bool:
        """True if an object (or, locally, a file or directory) is at `url`."""

    @abstractmethod
    def stat(self, url: str) -> dict[str, Any] | None:
        """{"size": bytes, "metadata": {...}}, or None if nothing is at `url`."""

    @abstractmethod
    def list_urls(self, prefix: str, *, suffix: str = "") -> list[str]:
        """Sorted URLs of every object below `prefix` (recursive) whose name ends in `suffix`."""

    # -- conditional writes (compare-and-swap on one object) --------------------------------

    @abstractmethod
    def create_if_absent(self, url: str, data: bytes) -> str | None:
        """Store `data` under `url` only if nothing is there; its version, or None if an
        object already exists."""

    @abstractmethod
    def read_versioned(self, url: str) -> tuple[bytes, str] | None:
        """(content, version) of the object, or None if nothing is at `url`."""

    @abstractmethod
    def replace_if(self, url: str, version: str, data: bytes) -> str | None:
        """Replace the object with `data` only if it is still at `version`; the new version,
        or None if it changed or is gone."""

    @abstractmethod
    def delete_if(self, url: str, version: str) -> bool:
        """Delete the object only if it is still at `version`; False if it changed or is
        gone."""

    # -- names --------------------------------------------------------------------------------

    def join_url(self, base: str, *parts: str) -> str:
        """`base` + "/" + each non-empty part (slashes at the joins collapsed)."""
        out = str(base).rstrip("/")
        for p in parts:
            if p.strip("/"):
                out += "/" + p.strip("/")
        return out

    # -- what other libraries need --------------------------------------------------------------

    @abstractmethod
    def ray_storage(self, url: str) -> tuple[str, Any]:
        """What Ray Train's `RunConfig` needs for `storage_path=url`: (storage_path,
        storage_filesystem), the filesystem a `pyarrow.fs.FileSystem` or None when Ray can
        take the path as it is (local)."""

    def is_transient_error(self, exc: BaseException) -> bool:
        """True if `exc` is a passing failure of this store (worth retrying the operation)."""
        return False
