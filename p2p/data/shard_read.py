"""Reading one shard as untrusted input: `iter_tar_samples` streams a WebDataset tar (local or
s3://), rejecting links, oversized and duplicate members, and with its index.json entry checks
the sha256, byte count and sample count at the end. Also the `s3://` handler that lets plain
`webdataset.WebDataset` read through p2p.data.storage (registered at import). Used by
`p2p.data.dataset`, which re-exports these names.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterator
from typing import Any

from p2p.config import DataConfig
from p2p.data import storage
from p2p.data.shard_index import ShardInfo
from p2p.errors import DataError, P2PError

DEFAULT_MAX_MEMBER = DataConfig.shard_max_member
Sample = dict[str, Any]


class _VerifyingReader:
    """Reads a shard for tarfile while hashing and counting its bytes; refuses to read more
    bytes than index.json lists."""

    def __init__(self, f: Any, url: str, limit: int | None) -> None:
        self.f, self.url, self.limit = f, url, limit
        self.sha, self.n = hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.sha.update(data)
        self.n += len(data)
        if self.limit is not None and self.n > self.limit:
            raise DataError(
                f"{self.url}: longer than the {self.limit} bytes index.json lists; "
                "the shards changed after the index was written (re-run `p2p data shard`)"
            )
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def iter_tar_samples(
    url: str, *, shard: ShardInfo | None = None, max_member: int = DEFAULT_MAX_MEMBER
) -> Iterator[Sample]:
    """Samples of one WebDataset tar, streamed from a local path or s3://.

    Members are grouped by key the way WebDataset does it (key = name up to the first dot of
    the basename; members of a sample are adjacent): `{"__key__": key, "input.png": bytes, ...}`.
    A shard is untrusted input: members larger than `max_member` bytes are rejected before
    they are read, as are links, other non-file members and duplicate names; a truncated or
    garbage tar is a DataError naming the shard and the last member. With `shard` (its
    index.json entry) the bytes are hashed as they stream, and at the end of the tar the sha256,
    byte count and sample count must match the index.
    """
    from webdataset.tariterators import base_plus_ext

    with storage.open_url(url) as f:
        reader = _VerifyingReader(f, url, shard.bytes if shard else None)
        sample: Sample | None = None
        count = 0
        names: set[str] = set()
        for info, blob in _tar_members(reader, url, max_member):
            if info.name in names:
                raise DataError(f"{url}: duplicate member {info.name!r}")
            names.add(info.name)
            key, ext = base_plus_ext(info.name)
            if key is None:
                continue
            if sample is None or key != sample["__key__"]:
                if sample is not None:
                    yield sample
                    count += 1
                sample = {"__key__": key}
            ext = ext.lower()
            if ext in sample:
                raise DataError(f"{url}: duplicate member {info.name!r}")
            sample[ext] = blob
        if sample is not None:
            yield sample
            count += 1
        if shard is None:
            return
        reader.drain()  # the zero blocks and record padding after the last member
        if count != shard.samples:
            raise DataError(
                f"{url}: has {count} samples but index.json lists {shard.samples}; "
                "the shards changed after the index was written (re-run `p2p data shard`)"
            )
        if reader.n != shard.bytes or reader.sha.hexdigest() != shard.sha256:
            raise DataError(
                f"{url}: sha256 differs from index.json ({reader.n} bytes read, "
                f"{shard.bytes} listed); the shard is corrupt or was replaced"
            )


def _tar_members(
    reader: _VerifyingReader, url: str, max_member: int
) -> Iterator[tuple[Any, bytes]]:
    """(TarInfo, bytes) of each regular member, checked before its data is read."""
    last = None
    try:
        tar = tarfile.open(fileobj=reader, mode="r|")  # type: ignore[call-overload]  # noqa: SIM115
        while True:
            info = tar.next()
            if info is None:
                return
            tar.members = []  # stream mode keeps every header otherwise
            if info.issym() or info.islnk():
                raise DataError(f"{url}: member {info.name!r} is a link; shards hold only files")
            if not info.isreg():
                raise DataError(f"{url}: member {info.name!r} is not a regular file")
            if info.size > max_member:
                raise DataError(
                    f"{url}: member {info.name!r} is {info.size} bytes, more than "
                    f"data.shard_max_member ({max_member})"
                )
            last = info.name
            yield info, tar.extractfile(info).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        if isinstance(e, P2PError):
            raise
        after = f" after member {last!r}" if last else " at its first member"
        raise DataError(f"{url}: not a valid tar{after} ({e or type(e).__name__})") from None


def _gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any) -> Any:
    """`webdataset.gopen` handler for s3:// (boto3 streaming via p2p.data.storage)."""
    if not mode.startswith("r"):
        raise ValueError(f"{url}: only reading is supported, got mode {mode!r}")
    return storage.open_url(url)


def register_webdataset_s3() -> None:
    """Let plain `webdataset.WebDataset("s3://...")` read through p2p.data.storage."""
    from webdataset.gopen import gopen_schemes  # the dispatch dict, mutated in place

    gopen_schemes.setdefault("s3", _gopen_s3)


register_webdataset_s3()  # at import, so DataLoader worker processes have it too
