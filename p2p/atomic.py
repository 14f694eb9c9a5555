"""Atomic replacement of files and directories: readers see the old content or the new one,
never a half-written file, and a failed write leaves what was there untouched. Also the
sha256 that identifies a file's bytes (`file_sha256`: checkpoints, downloaded archives).

Files: write to a temp name in the same directory, fsync it, then `os.replace` (atomic on POSIX;
the fsync keeps a crash right after the rename from leaving an empty file).
Directories: build under a temp name, move the old one aside, rename the new one in, delete
the old one last (`.NAME.old-PID-HEX`; p2p.data.writer recovers it after a crash).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from p2p.errors import P2PError


def current_umask() -> int:
    """The process umask, read without changing it where Linux exposes it (/proc), else by the
    classic set-and-restore."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call `write(tmp_path)` on a temp file beside `path`, fsync it, rename it onto `path`.
    If `write` raises, the temp file is removed and `path` is untouched. The file gets the mode
    a plain `open(path, "w")` would give it (0666 minus the umask), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def swap_dir_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished directory `tmp` onto `out`; an existing `out` is moved aside first
    and deleted only after the new one is in place (put back if the rename fails)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)  # put the previous content back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks (P2PError naming it if unreadable)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise P2PError(f"{path}: cannot read ({e.strerror or e})") from None
    return h.hexdigest()
