"""The deterministic tar writer of `p2p.data.shards`: GNU tar members with fixed metadata, each
shard hashed while it is written and renamed to its content-hashed name."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2p.data.shard_index import ShardInfo
from p2p.data.shard_publish import _Sink

_BLOCK = tarfile.BLOCKSIZE  # 512


@dataclass(frozen=True)
class _Sample:
    """One encoded sample, ready for the tar."""

    key: str
    members: tuple[tuple[str, bytes], ...]  # (member name, bytes), in tar order

    @property
    def tar_bytes(self) -> int:
        # header + data padded to 512 per member (GNU long names add 2+ blocks; rare)
        return sum(_BLOCK + -(-len(b) // _BLOCK) * _BLOCK for _, b in self.members)


def _member_header(name: str, size: int) -> bytes:
    """The GNU tar header tarfile writes for a regular member with the fixed metadata (mode
    0644, uid/gid 0, mtime 0, uname/gname "p2p"), built directly: tarfile's generic header
    code was a fifth of the shard time. Names of 100+ bytes go through tarfile (LongLink)."""
    raw = name.encode()
    if len(raw) >= 100:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uid, info.gid = size, 0, 0o644, 0, 0
        info.uname = info.gname = "p2p"
        return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
    buf = bytearray(_HEADER_TEMPLATE)
    buf[0 : len(raw)] = raw
    buf[124:136] = b"%011o\0" % size
    buf[148:155] = b"%06o\0" % sum(buf)  # checksum over the header with the field as spaces
    return bytes(buf)


def _header_template() -> bytes:
    buf = bytearray(_BLOCK)
    for offset, value in (
        (100, b"0000644\0"),  # mode
        (108, b"0000000\0"),  # uid
        (116, b"0000000\0"),  # gid
        (136, b"00000000000\0"),  # mtime
        (148, b"        "),  # checksum, spaces while summing
        (156, b"0"),  # regular file
        (257, b"ustar  \0"),  # GNU magic
        (265, b"p2p"),  # uname
        (297, b"p2p"),  # gname; devmajor/devminor stay NUL for regular files
    ):
        buf[offset : offset + len(value)] = value
    return bytes(buf)


_HEADER_TEMPLATE = _header_template()


class _HashingWriter:
    """File wrapper for tarfile: hashes and counts the bytes as they are written."""

    def __init__(self, f: Any) -> None:
        self.f, self.sha, self.n = f, hashlib.sha256(), 0

    def write(self, b: bytes) -> int:
        self.sha.update(b)
        self.n += len(b)
        return self.f.write(b)

    def tell(self) -> int:
        return self.n


class _ShardWriter:
    """Deterministic tar writer of one bucket; rolls over at max_count samples / max_size bytes.

    Each finished tar is renamed to its content-hashed name and handed to the sink."""

    def __init__(
        self,
        workdir: Path,
        split: str,
        bucket: int,
        max_count: int,
        max_size: int,
        say: Callable[[str], None],
        sink: _Sink,
    ) -> None:
        self.workdir, self.split, self.bucket = workdir, split, bucket
        self.max_count, self.max_size, self.say, self.sink = max_count, max_size, say, sink
        self.shards: list[ShardInfo] = []
        self.tar: io.BufferedWriter | None = None
        self.count = self.size = 0
        self.t0 = time.perf_counter()

    def add(self, sample: _Sample) -> None:
        n = sample.tar_bytes
        if self.tar is not None and (
            self.count >= self.max_count or _file_size(self.size + n) > self.max_size
        ):
            self._finish()
        if self.tar is None:
            self.path = self.workdir / f".{self.split}-{self.bucket:06d}.part"
            self.tar = open(self.path, "wb")  # noqa: SIM115 - closed in _finish
            self.hashing = _HashingWriter(self.tar)
            self.count = self.size = 0
            self.t0 = time.perf_counter()
        # GNU format, as tarfile writes it: header, data, zero padding to 512 per member
        for member, blob in sample.members:
            pad = b"\0" * (-len(blob) % _BLOCK)
            self.hashing.write(b"".join((_member_header(member, len(blob)), blob, pad)))
        self.count += 1
        self.size += n

    def _finish(self) -> None:
        assert self.tar is not None
        # end of archive: two zero blocks, then zeros up to a whole record (as tarfile does)
        end = 2 * _BLOCK
        end += -(self.hashing.n + end) % tarfile.RECORDSIZE
        self.hashing.write(b"\0" * end)
        self.tar.close()
        self.tar = None
        sha = self.hashing.sha.hexdigest()
        name = f"{self.split}-{self.bucket:06d}-{sha[:12]}.tar"
        path = self.workdir / name
        os.replace(self.path, path)
        shard = ShardInfo(name, self.count, self.hashing.n, sha)
        self.shards.append(shard)
        dt = max(time.perf_counter() - self.t0, 1e-9)
        self.say(
            f"  {name}: {self.count} samples, {shard.bytes / 1e6:.2f} MB "
            f"({shard.bytes / 1e6 / dt:.1f} MB/s)"
        )
        self.sink.add(path, shard)

    def close(self) -> list[ShardInfo]:
        if self.tar is not None:
            self._finish()
        return self.shards


def _file_size(member_bytes: int) -> int:
    """Size of a tar file holding members of this many bytes: + end blocks, record padding."""
    return -(-(member_bytes + 2 * _BLOCK) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE
