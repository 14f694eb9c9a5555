"""One pair's files -> one tar sample, and one bucket's pairs -> its tars in a remote task.

Used by p2p.data.shards on both paths: a local run reads and packs each pair here
(`_encode_pair`); a distributed run reads the pairs on the driver (`_read_pair`) and ships the
bytes to a task that packs them and builds the bucket's tars (`_pack_bucket`), with the same
tar writer, so both give byte-identical shards. Packing keeps PNG bytes as they are and
re-encodes anything else with fixed settings (the bytes are part of the format).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from p2p.config import DataConfig
from p2p.data.shard_index import ShardInfo
from p2p.data.shard_publish import _Sink
from p2p.data.shard_tar import _Sample, _ShardWriter
from p2p.errors import DataError

JPEG_QUALITY = 95  # data.image_format = "jpg": fixed settings, 4:4:4 chroma
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _encode_pair(pair: Any, manifest: Any, data: DataConfig) -> _Sample | Any:
    """Read and pack one pair (the manifest's hashes and sizes are trusted: import validated
    them); a reports.Problem if a file cannot be read."""
    from p2p.data.reports import Problem

    blobs = _read_pair(pair, data)
    if isinstance(blobs, Problem):
        return blobs
    return _pack_pair(pair, blobs, manifest.name, manifest.root, data)


def _read_pair(pair: Any, data: DataConfig) -> tuple[bytes, bytes] | Any:
    """The bytes of A and B, or a reports.Problem (sizes differ, too big, unreadable)."""
    from p2p.data.reports import Problem

    if tuple(pair.a_size) != tuple(pair.b_size):
        return Problem(str(pair.a), f"A is {pair.a_size} but its partner {pair.b} is {pair.b_size}")
    blobs = []
    for path in (pair.a, pair.b):
        try:
            size = path.stat().st_size
            if size > data.shard_max_member:
                return Problem(
                    str(path),
                    f"{size} bytes, more than data.shard_max_member ({data.shard_max_member})",
                )
            blobs.append(path.read_bytes())
        except OSError as e:
            return Problem(str(path), f"cannot read file ({e.strerror or e})")
    return blobs[0], blobs[1]


def _pack_pair(
    pair: Any, blobs: tuple[bytes, bytes], name: str, root: Path, data: DataConfig
) -> _Sample | Any:
    """One sample from a pair's bytes (no file access: runs in remote tasks too), or a
    reports.Problem if an image cannot be re-encoded."""
    from p2p.data.manifest import side_channels
    from p2p.data.reports import Problem

    a_blob, b_blob = blobs
    a_nc, b_nc = side_channels(data)
    if data.direction == "AtoB":
        inp, tgt = (a_blob, pair.a, a_nc), (b_blob, pair.b, b_nc)
    else:
        inp, tgt = (b_blob, pair.b, b_nc), (a_blob, pair.a, a_nc)
    ext = data.image_format
    meta = {
        "key": pair.key,
        "split": pair.split,
        "dataset": name,
        "direction": data.direction,
        "a": pair.a.relative_to(root).as_posix(),
        "b": pair.b.relative_to(root).as_posix(),
        "a_sha256": pair.a_sha256,
        "b_sha256": pair.b_sha256,
        "size": list(pair.a_size),
    }
    try:
        members = (
            (f"{pair.key}.input.{ext}", _encode(*inp, ext)),
            (f"{pair.key}.target.{ext}", _encode(*tgt, ext)),
            (f"{pair.key}.json", json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()),
        )
    except DataError as e:
        return Problem(str(pair.a), str(e))
    return _Sample(pair.key, members)


def _encode(blob: bytes, path: Path, channels: int, ext: str) -> bytes:
    """Original bytes when they are already in the shard format; else a fixed re-encode."""
    if ext == "png" and blob.startswith(_PNG_MAGIC):
        return blob
    from p2p.data.images import encode_png, open_image

    img = open_image(blob, name=str(path), channels=channels)
    if ext == "png":
        return encode_png(img)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
    return buf.getvalue()


def _pack_bucket(
    item: tuple[str, int, list[tuple[Any, Any]]],
    where: tuple[str, Path, DataConfig, tuple[int, int], dict[str, str]],
) -> tuple[str, list[Any], list[tuple[ShardInfo, bytes | None]], list[str]]:
    """The body of one remote task: pack one bucket's pairs (bytes included) into its tars.
    Returns (split, problems, [(shard, tar bytes or None if `known` holds it)], progress)."""
    import tempfile

    from p2p.data.reports import Problem

    name, root, data, limits, known = where
    split, bucket, pairs = item
    problems: list[Any] = []
    lines: list[str] = []
    collect = _CollectSink()
    with tempfile.TemporaryDirectory(prefix="p2p-shard-task-") as tmp:
        writer = _ShardWriter(Path(tmp), split, bucket, *limits, lines.append, collect)
        for pair, blobs in pairs:
            result = (
                blobs if isinstance(blobs, Problem) else _pack_pair(pair, blobs, name, root, data)
            )
            if isinstance(result, Problem):
                problems.append(result)
            elif not problems or data.on_error == "skip":
                writer.add(result)
        writer.close()
        tars = [
            (shard, None if known.get(shard.name) == shard.sha256 else path.read_bytes())
            for path, shard in collect.shards
        ]
    return split, problems, tars, lines


class _CollectSink(_Sink):
    """A remote task's sink: the finished tars stay in its temp dir until they are sent back."""

    def __init__(self) -> None:
        self.shards: list[tuple[Path, ShardInfo]] = []

    def add(self, path: Path, shard: ShardInfo) -> None:
        self.shards.append((path, shard))
