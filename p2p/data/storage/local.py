"""Local paths (and shared filesystems mounted as paths): the `""` scheme of p2p.data.storage.

Writes go to a temp name in the same directory, are fsynced, then renamed into place
(p2p.atomic), so a reader sees the old file or the new one; files get the mode a plain
`open(path, "w")` would give them (0666 minus the umask).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import IO, Any

from p2p.atomic import write_atomic, write_bytes_atomic
from p2p.data.storage.base import ObjectNotFound, Storage


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

    def join_url(self, base: str, *parts: str) -> str:
        return str(Path(base, *parts))

    def ray_storage(self, url: str) -> tuple[str, Any]:
        # Ray takes a local directory as it is; absolute, since its workers' cwd differs.
        return str(Path(url).expanduser().resolve()), None
