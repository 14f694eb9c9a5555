"""Local paths (and shared filesystems mounted as paths): the `""` scheme of p2p.data.storage.

Writes go to a temp name in the same directory, are fsynced, then renamed into place
(p2p.atomic), so a reader sees the old file or the new one; files get the mode a plain
`open(path, "w")` would give them (0666 minus the umask).

Conditional writes: a version is the SHA-256 of the content. `create_if_absent` hard-links a
complete temp file into place (link fails if the name exists); `replace_if` / `delete_if`
compare and write under a lock file `<name>.lock` (O_EXCL), held for one read and one rename;
a lock older than `LOCK_STALE_S` was left by a crashed writer and is broken.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from p2p.atomic import write_atomic, write_bytes_atomic
from p2p.data.storage.base import ObjectNotFound, Storage, StorageError

LOCK_WAIT_S = 10.0  # how long a conditional write waits for another writer's lock
LOCK_STALE_S = 60.0  # a lock this old belongs to a writer that died holding it


def _version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold `<path>.lock` (created with O_EXCL) for a compare-and-write on `path`."""
    lock = path.with_name(path.name + ".lock")
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            break
        except FileExistsError:
            with contextlib.suppress(OSError):  # gone meanwhile: just try again
                if time.time() - lock.stat().st_mtime > LOCK_STALE_S:
                    lock.unlink()
                    continue
            if time.monotonic() > deadline:
                raise StorageError(
                    f"{path}: another writer holds {lock.name} (delete it if no writer is alive)"
                ) from None
            time.sleep(0.01)
        except FileNotFoundError:  # no folder: nothing there to compare with
            raise ObjectNotFound(f"{path}: not found") from None
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


class LocalStorage(Storage):
    scheme = ""

    def upload_file(
        self, local: Path, url: str, *, metadata: dict[str, str] | None = None, **options: Any
    ) -> int:
        size = local.stat().st_size
        write_atomic(url, lambda tmp: shutil.copyfile(local, tmp))  # no metadata on local files
        return size

    def write_bytes(self, url: str, data: bytes, **options: Any) -> None:
        write_bytes_atomic(url, data)

    def remove(self, url: str, *, missing_ok: bool = True) -> None:
        try:
            Path(url).unlink()
        except FileNotFoundError:
            if not missing_ok:
                raise ObjectNotFound(f"{url}: not found") from None

    def open_url(self, url: str, *, buffer_size: int = 1 << 20) -> IO[bytes]:
        try:
            return open(url, "rb")  # noqa: SIM115 - the caller owns the stream
        except FileNotFoundError:
            raise ObjectNotFound(f"{url}: not found") from None

    def exists(self, url: str) -> bool:
        return Path(url).exists()

    def stat(self, url: str) -> dict[str, Any] | None:
        p = Path(url)
        return {"size": p.stat().st_size, "metadata": {}} if p.is_file() else None

    def list_urls(self, prefix: str, *, suffix: str = "") -> list[str]:
        root = Path(prefix)
        if not root.is_dir():
            return []
        return sorted(str(p) for p in root.rglob("*") if p.is_file() and p.name.endswith(suffix))

    def create_if_absent(self, url: str, data: bytes) -> str | None:
        # Written in full under a temp name, then hard-linked into place: link() fails if the
        # name exists, and a reader never sees a half-written file.
        path = Path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)
        except FileExistsError:
            return None
        finally:
            tmp.unlink(missing_ok=True)
        return _version(data)

    def read_versioned(self, url: str) -> tuple[bytes, str] | None:
        try:
            data = Path(url).read_bytes()
        except FileNotFoundError:
            return None
        return data, _version(data)

    def replace_if(self, url: str, version: str, data: bytes) -> str | None:
        try:
            with _locked(Path(url)):
                current = self.read_versioned(url)
                if current is None or current[1] != version:
                    return None
                write_bytes_atomic(url, data)
        except ObjectNotFound:
            return None
        return _version(data)

    def delete_if(self, url: str, version: str) -> bool:
        try:
            with _locked(Path(url)):
                current = self.read_versioned(url)
                if current is None or current[1] != version:
                    return False
                Path(url).unlink()
        except ObjectNotFound:
            return False
        return True

    def join_url(self, base: str, *parts: str) -> str:
        return str(Path(base, *parts))

    def ray_storage(self, url: str) -> tuple[str, Any]:
        # Ray takes a local directory as it is; absolute, since its workers' cwd differs.
        return str(Path(url).expanduser().resolve()), None
