"""WebDataset shards from a canonical raw dataset: deterministic tars + an index.

Layout of a shard set (a local directory or an `s3://bucket/prefix`):

    {split}-{bucket:06d}-{sha12}.tar   one sample = 3 adjacent members:
                                         {key}.input.png   the input image (A for AtoB, B for BtoA)
                                         {key}.target.png  the target image
                                         {key}.json        key, split, source files, size, sha256s
                                       sha12 = the first 12 hex digits of the tar's sha256
    index.json                         per split: shard names, sample counts, bytes, sha256;
                                       totals; the source data version; the params used

Stable assignment: a pair goes to bucket `H(split, key) mod B` of its split, where H is
sha256 and B, the number of buckets, is the smallest power of two that keeps buckets at
about 3/4 of data.shard_max_count / data.shard_max_size on average (so B doubles only when the
split doubles). Within a bucket, samples are ordered by H (a fixed shuffle: neighbouring
crops of one photo do not sit together); a bucket larger than the limits rolls over into more
shards. Adding or removing one pair therefore changes one shard (two when its bucket rolls
over), and the shard name carries the content hash, so unchanged shards keep their names.

Determinism: the same raw data and params give byte-identical tars and index.json, so DVC
hashes stay stable and `dvc repro` does not retrain for nothing. Members carry mtime 0,
uid/gid 0, uname/gname "p2p", mode 0644 (GNU tar format); images are the raw dataset's
original PNG bytes (re-encoded only when data.image_format is "jpg", with fixed settings);
the JSON is written with sorted keys.

Trust: `p2p data import|build` validated every image (decode, channels, sizes) and recorded
its sha256 in the manifest, so sharding copies bytes without decoding or re-hashing them; the
tar is hashed while it is written. Readers verify every shard against index.json (see
`p2p.data.dataset.iter_tar_samples`) and treat index.json itself as untrusted (`ShardIndex`).

Atomicity: local output is built in a temp dir beside `out` (`.NAME.tmp-PID-HEX`) and renamed
into place. S3 output is streamed: each finished shard is uploaded at once by a small thread
pool (at most a few shards are staged on local disk, in `TMPDIR/p2p-shards-PID-HEX`), shards
whose name and sha256 the old index already lists are not uploaded, index.json is replaced
LAST (one atomic PUT), and only then are shards the new index no longer names deleted. A run
killed at any point leaves the old index and every shard it names in place; its temp folder
is removed by the next run (temp folders of dead processes are cleaned at start).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2p.atomic import swap_dir_into_place
from p2p.config import DataConfig
from p2p.data import storage
from p2p.data.manifest import SPLITS
from p2p.errors import DataError

log = logging.getLogger(__name__)

INDEX = "index.json"
FORMAT = "p2p-webdataset"
FORMAT_VERSION = 2  # 2: stable buckets, content-hashed names; 1 (sequential names) still reads
JPEG_QUALITY = 95  # data.image_format = "jpg": fixed settings, 4:4:4 chroma
ASSIGN_SEED = "p2p-shards-assign-v2"  # fixed: the assignment is part of the format
FILL = 0.75  # average bucket fill aimed at, as a fraction of the shard limits
UPLOAD_THREADS = 4  # S3: shards uploaded at once
STAGED_MAX = 2 * UPLOAD_THREADS  # S3: finished shards on local disk at most (queued + uploading)
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_BLOCK = tarfile.BLOCKSIZE  # 512
_SHA256 = re.compile(r"[0-9a-f]{64}")
# v2 names, and v1's sequential names (read only)
_NAME = re.compile(r"(?P<split>[a-z]+)-(?P<num>\d{6})(?:-(?P<sha>[0-9a-f]{12}))?\.tar")
_WORKDIR = re.compile(r"(?:p2p-shards|\..+\.tmp)-(?P<pid>\d+)-[0-9a-f]{8}")


# ----------------------------------------------------------------------------- index


@dataclass(frozen=True)
class ShardInfo:
    """One shard as index.json lists it."""

    name: str  # a plain file name in the shard folder / prefix
    samples: int
    bytes: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "samples": self.samples,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class SplitInfo:
    samples: int
    bytes: int
    shards: tuple[ShardInfo, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "bytes": self.bytes,
            "shards": [s.to_json() for s in self.shards],
        }


@dataclass(frozen=True)
class ShardIndex:
    """A validated index.json: what every reader of a shard set uses (never the raw JSON)."""

    name: str
    data_version: dict[str, str | None]  # manifest_sha256, dvc_md5, dvc_source
    params: dict[str, Any]
    splits: dict[str, SplitInfo]
    skipped: tuple[dict[str, str], ...] = ()
    format_version: int = FORMAT_VERSION

    @property
    def totals(self) -> dict[str, int]:
        return {
            "samples": sum(s.samples for s in self.splits.values()),
            "shards": sum(len(s.shards) for s in self.splits.values()),
            "bytes": sum(s.bytes for s in self.splits.values()),
        }

    def samples(self, split: str) -> int:
        """Samples of one split; 0 if the index has no such split."""
        entry = self.splits.get(split)
        return entry.samples if entry else 0

    def split(self, split: str, where: str = "") -> SplitInfo:
        entry = self.splits.get(split)
        if entry is None:
            raise DataError(f"{where or self.name}: index.json has no split {split!r}")
        return entry

    def all_shards(self) -> list[ShardInfo]:
        return [s for entry in self.splits.values() for s in entry.shards]

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "format_version": self.format_version,
            "name": self.name,
            "data_version": dict(self.data_version),
            "params": dict(self.params),
            "splits": {k: v.to_json() for k, v in self.splits.items()},
            "totals": self.totals,
        }
        if self.skipped:
            doc["skipped"] = [dict(s) for s in self.skipped]
        return doc

    @classmethod
    def from_json(cls, doc: Any, where: str) -> ShardIndex:
        """Validate an untrusted index.json document; DataError naming the key otherwise."""

        def bad(key: str, reason: str) -> DataError:
            return DataError(f"{where}: {key} {reason}")

        def integer(v: Any, key: str) -> int:
            if type(v) is not int or v < 0:
                raise bad(key, f"must be a whole number >= 0, got {v!r}")
            return v

        def mapping(v: Any, key: str) -> dict:
            if not isinstance(v, dict):
                raise bad(key, f"must be an object, got {type(v).__name__}")
            return v

        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise DataError(f"{where}: not a p2p shard index")
        version = doc.get("format_version")
        if version not in (1, FORMAT_VERSION):
            raise DataError(f"{where}: format_version {version!r} is not {FORMAT_VERSION}")
        name = doc.get("name")
        if not isinstance(name, str):
            raise bad("name", f"must be a string, got {name!r}")
        dv = mapping(doc.get("data_version", {}), "data_version")
        data_version: dict[str, str | None] = {}
        for k in ("manifest_sha256", "dvc_md5", "dvc_source"):
            v = dv.get(k)
            if v is not None and not isinstance(v, str):
                raise bad(f"data_version.{k}", f"must be a string or null, got {v!r}")
            data_version[k] = v
        params = mapping(doc.get("params", {}), "params")
        splits: dict[str, SplitInfo] = {}
        seen: set[str] = set()
        for split, entry in mapping(doc.get("splits"), "splits").items():
            if split not in SPLITS:
                raise bad("splits", f"has unknown split {split!r} (not {', '.join(SPLITS)})")
            entry = mapping(entry, f"splits.{split}")
            listed = entry.get("shards")
            if not isinstance(listed, list):
                raise bad(f"splits.{split}.shards", "must be a list")
            shards = []
            for i, s in enumerate(listed):
                key = f"splits.{split}.shards[{i}]"
                s = mapping(s, key)
                sname = s.get("name")
                m = _NAME.fullmatch(sname) if isinstance(sname, str) else None
                if m is None or m["split"] != split:
                    raise bad(
                        f"{key}.name",
                        f"{sname!r} is not a shard file name of this folder "
                        f"({split}-NNNNNN-HASH.tar)",
                    )
                if (m["sha"] is None) != (version == 1):
                    raise bad(f"{key}.name", f"{sname!r} does not fit format_version {version}")
                if sname in seen:
                    raise bad(f"{key}.name", f"{sname!r} is listed twice")
                seen.add(sname)
                sha = s.get("sha256")
                if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
                    raise bad(f"{key}.sha256", f"must be 64 lowercase hex digits, got {sha!r}")
                if m["sha"] is not None and not sha.startswith(m["sha"]):
                    raise bad(f"{key}.name", f"{sname!r} does not match its sha256")
                shards.append(
                    ShardInfo(
                        sname,
                        integer(s.get("samples"), f"{key}.samples"),
                        integer(s.get("bytes"), f"{key}.bytes"),
                        sha,
                    )
                )
            info = SplitInfo(
                integer(entry.get("samples"), f"splits.{split}.samples"),
                integer(entry.get("bytes"), f"splits.{split}.bytes"),
                tuple(shards),
            )
            for what in ("samples", "bytes"):
                total = sum(getattr(s, what) for s in shards)
                if getattr(info, what) != total:
                    raise bad(
                        f"splits.{split}.{what}",
                        f"is {getattr(info, what)} but its shards add up to {total}",
                    )
            splits[split] = info
        skipped = doc.get("skipped", [])
        if not isinstance(skipped, list) or not all(
            isinstance(s, dict) and all(isinstance(v, str) for v in s.values()) for s in skipped
        ):
            raise bad("skipped", "must be a list of {file, reason} objects")
        index = cls(name, data_version, dict(params), splits, tuple(skipped), version)
        if "totals" in doc and doc["totals"] != index.totals:
            raise bad("totals", f"{doc['totals']!r} do not match the splits ({index.totals})")
        return index


def read_index(shards_url: str | os.PathLike) -> ShardIndex:
    """The validated index.json of a shard set (a directory or s3://bucket/prefix).

    Raises:
        DataError: no index (not sharded yet), not a p2p shard index, or a malformed one
            (names outside the folder, wrong types, counts that do not add up).
    """
    url = storage.join_url(shards_url, INDEX)
    try:
        doc = json.loads(storage.read_bytes(url))
    except storage.ObjectNotFound:
        raise DataError(
            f"{shards_url}: no shard index ({INDEX}); write shards with `p2p data shard`"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{url}: not valid JSON ({e})") from None
    return ShardIndex.from_json(doc, url)


def shard_urls(shards_url: str | os.PathLike, split: str, index: ShardIndex) -> list[str]:
    """URLs of one split's shards, in index order."""
    entry = index.split(split, str(shards_url))
    return [storage.join_url(shards_url, s.name) for s in entry.shards]


def _index_bytes(index: ShardIndex) -> bytes:
    return (json.dumps(index.to_json(), indent=1, sort_keys=True) + "\n").encode()


# ----------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class _Sample:
    """One encoded sample, ready for the tar."""

    key: str
    members: tuple[tuple[str, bytes], ...]  # (member name, bytes), in tar order

    @property
    def tar_bytes(self) -> int:
        # header + data padded to 512 per member (GNU long names add 2+ blocks; rare)
        return sum(_BLOCK + -(-len(b) // _BLOCK) * _BLOCK for _, b in self.members)


def write_shards(
    raw_dir: str | os.PathLike,
    out: str | os.PathLike,
    data: DataConfig,
    *,
    max_count: int | None = None,
    max_size: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> ShardIndex:
    """Shard a canonical raw dataset into `out` (a directory or s3://bucket/prefix).

    Args:
        raw_dir: canonical dataset dir (manifest, A/, B/), validated by import/build.
        out: destination directory or `s3://bucket/prefix`.
        data: data config: direction, image_format, on_error, defaults for the shard limits.
        max_count: samples per shard at most (default data.shard_max_count).
        max_size: bytes per shard at most (default data.shard_max_size); a single sample
            larger than this gets a shard of its own.
        progress: called with one human-readable line per written shard (CLI output).

    Returns:
        The index (also written as `out/index.json`).

    Raises:
        DataError: no/invalid manifest, bad pairs (on_error="fail": all of them listed),
            or an output location that is not a shard set.
    """
    from p2p.data.manifest import load_manifest

    t0 = time.perf_counter()
    max_count = max_count or data.shard_max_count
    max_size = max_size or data.shard_max_size
    if max_count <= 0 or max_size <= 0:
        raise DataError(f"shard limits must be > 0 (max_count={max_count}, max_size={max_size})")
    manifest = load_manifest(raw_dir)
    if not manifest.entries:
        raise DataError(f"{raw_dir}: the manifest lists no pairs")
    out_s = str(out)
    say = progress or (lambda line: log.info("%s", line))
    s3 = storage.is_s3_url(out_s)
    old = None
    if s3:
        storage.list_urls(out_s)  # fail fast (missing bucket, no access) before any work
        try:
            old = read_index(out_s)
        except DataError:  # none yet, or unreadable: every shard is uploaded
            old = None

    workdir = _local_workdir(out_s)
    sink: _Sink = _S3Sink(out_s, old, say) if s3 else _Sink()
    try:
        splits, skipped = _write_tars(manifest, workdir, data, max_count, max_size, say, sink)
        index = _make_index(manifest, Path(raw_dir), data, max_count, max_size, splits, skipped)
        (workdir / INDEX).write_bytes(_index_bytes(index))
        if s3:
            sink.publish(workdir / INDEX, index)
        else:
            swap_dir_into_place(workdir, Path(out_s))
            workdir = None  # renamed; nothing to clean up
    finally:
        sink.close()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)

    dt = time.perf_counter() - t0
    tot = index.totals
    say(
        f"wrote {tot['samples']} samples in {tot['shards']} shards to {out_s}: "
        f"{tot['bytes'] / 1e6:.1f} MB in {dt:.1f} s ({tot['bytes'] / 1e6 / max(dt, 1e-9):.1f} MB/s)"
    )
    return index


def _write_tars(
    manifest: Any,
    workdir: Path,
    data: DataConfig,
    max_count: int,
    max_size: int,
    say: Callable[[str], None],
    sink: _Sink,
) -> tuple[dict[str, SplitInfo], list[dict[str, str]]]:
    """Read + pack every pair and write the tars of each split into workdir (then the sink)."""
    from p2p.data.reports import InvalidDataset, Problem

    problems: list[Problem] = []
    splits: dict[str, SplitInfo] = {}
    # png output copies bytes: reading in this thread was faster than a pool (measured);
    # jpg output decodes and re-encodes, which threads overlap
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        mapper = map if data.image_format == "png" else pool.map
        for split in SPLITS:
            shards: list[ShardInfo] = []
            for bucket, pairs in _buckets(manifest.pairs(split), split, max_count, max_size):
                writer = _ShardWriter(workdir, split, bucket, max_count, max_size, say, sink)
                for batch in _chunks(pairs, 32):  # read (in parallel for jpg), write in order
                    for result in mapper(lambda p: _encode_pair(p, manifest, data), batch):
                        if isinstance(result, Problem):
                            problems.append(result)
                        elif not problems or data.on_error == "skip":
                            writer.add(result)
                shards += writer.close()
            splits[split] = SplitInfo(
                sum(s.samples for s in shards), sum(s.bytes for s in shards), tuple(shards)
            )
    if problems and data.on_error == "fail":
        raise InvalidDataset(str(manifest.root), problems, "no shards written")
    if not splits["train"].samples:
        raise DataError(f"{manifest.root}: no valid train pairs to shard")
    # paths relative to the dataset, so index.json does not depend on where it lives
    skipped = [{"file": _relative(p.file, manifest.root), "reason": p.reason} for p in problems]
    return splits, skipped


def _assign_hash(split: str, key: str) -> bytes:
    return hashlib.sha256(f"{ASSIGN_SEED}:{split}:{key}".encode()).digest()


def _buckets(
    pairs: list[Any], split: str, max_count: int, max_size: int
) -> Iterator[tuple[int, list[Any]]]:
    """(bucket number, its pairs in write order) for the non-empty buckets of one split."""
    if not pairs:
        return
    est = 0  # estimated tar bytes of the split: file sizes + headers
    for p in pairs:
        with contextlib.suppress(OSError):  # an unreadable file is reported when it is read
            est += p.a.stat().st_size + p.b.stat().st_size + 6 * _BLOCK + 512
    need = max(len(pairs) / (FILL * max_count), est / (FILL * max_size), 1.0)
    n = 1 << math.ceil(math.log2(need))  # a power of two: grows only when the split doubles
    groups: dict[int, list[tuple[bytes, Any]]] = {}
    for p in pairs:
        h = _assign_hash(split, p.key)
        groups.setdefault(int.from_bytes(h[:8], "big") % n, []).append((h, p))
    for b in sorted(groups):
        yield b, [p for _, p in sorted(groups[b], key=lambda hp: hp[0])]


def _relative(path: str, root: Path) -> str:
    p = Path(path)
    return p.relative_to(root).as_posix() if p.is_relative_to(root) else path


def _encode_pair(pair: Any, manifest: Any, data: DataConfig) -> _Sample | Any:
    """Read and pack one pair (the manifest's hashes and sizes are trusted: import validated
    them); a reports.Problem if a file cannot be read."""
    from p2p.data.manifest import side_channels
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
        "dataset": manifest.name,
        "direction": data.direction,
        "a": pair.a.relative_to(manifest.root).as_posix(),
        "b": pair.b.relative_to(manifest.root).as_posix(),
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


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _make_index(
    manifest: Any,
    raw_dir: Path,
    data: DataConfig,
    max_count: int,
    max_size: int,
    splits: dict[str, SplitInfo],
    skipped: list[dict[str, str]],
) -> ShardIndex:
    manifest_sha = hashlib.sha256(manifest.path.read_bytes()).hexdigest()
    dvc_md5, dvc_source = _dvc_md5(raw_dir)
    return ShardIndex(
        name=manifest.name,
        data_version={
            "manifest_sha256": manifest_sha,
            "dvc_md5": dvc_md5,
            "dvc_source": dvc_source,
        },
        params={
            "data.direction": data.direction,
            "data.input_nc": data.input_nc,
            "data.output_nc": data.output_nc,
            "data.image_format": data.image_format,
            "data.shard_max_count": max_count,
            "data.shard_max_size": max_size,
        },
        splits=splits,
        skipped=tuple(skipped),
    )


def _dvc_md5(raw_dir: Path) -> tuple[str | None, str | None]:
    """The DVC hash recorded for raw_dir (its .dvc file, or a dvc.lock stage out), if any.

    This is what DVC last recorded, which lags the files if they were changed without
    `dvc add` / `dvc repro`; `manifest_sha256` is the content.
    """
    from p2p.data.versioning import recorded_version  # the one reader of DVC's files

    v = recorded_version(raw_dir)
    return (v.md5, v.dvc_file) if v is not None else (None, None)


# ----------------------------------------------------------------------------- publishing


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _clean_stale(parent: Path, prefix: str) -> None:
    """Remove temp folders `prefix...-PID-HEX` in parent whose process is gone (a killed run's).
    A pid reused since is taken as alive: the folder then waits for a later run."""
    if not parent.is_dir():
        return
    for p in parent.iterdir():
        m = _WORKDIR.fullmatch(p.name)
        if m and p.name.startswith(prefix) and p.is_dir() and not _alive(int(m["pid"])):
            log.info("removing %s, left by a killed shard run", p)
            shutil.rmtree(p, ignore_errors=True)


def _local_workdir(out: str) -> Path:
    """A fresh temp dir: beside a local `out` (same filesystem, so the final rename is atomic),
    or `TMPDIR/p2p-shards-PID-HEX` for S3 output. Stale ones of killed runs are removed first."""
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if storage.is_s3_url(out):
        tmp_root = Path(tempfile.gettempdir())
        _clean_stale(tmp_root, "p2p-shards-")
        tmp = tmp_root / f"p2p-shards-{tag}"
        tmp.mkdir()
        return tmp
    dst = Path(out)
    if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
        raise DataError(f"{dst}: exists and is not a directory; refusing to replace it")
    if dst.is_dir() and any(dst.iterdir()) and not (dst / INDEX).is_file():
        raise DataError(
            f"{dst}: exists, is not empty and is not a shard set (no {INDEX}); "
            "refusing to replace it"
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(dst.parent, f".{dst.name}.tmp-")
    tmp = dst.parent / f".{dst.name}.tmp-{tag}"
    tmp.mkdir()
    return tmp


class _Sink:
    """Where finished shards go. Local output: they stay in the workdir (renamed as a whole)."""

    def add(self, path: Path, shard: ShardInfo) -> None:
        pass

    def publish(self, index_file: Path, index: ShardIndex) -> None:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        pass


@dataclass
class _S3Sink(_Sink):
    """Uploads each finished shard at once (a few in parallel; the writer waits when
    STAGED_MAX shards are on local disk), then index.json, then deletes stale shards."""

    out: str
    old: ShardIndex | None
    say: Callable[[str], None]
    sent: int = 0
    uploaded: int = 0
    kept: int = 0
    staged: int = 0  # shard files on local disk now / at most
    staged_max: int = 0
    _futures: list[Future] = field(default_factory=list)

    def __post_init__(self) -> None:
        prefix = self.out.rstrip("/") + "/"
        listed = {u[len(prefix) :] for u in storage.list_urls(self.out)}
        self.existing = {name for name in listed if "/" not in name}  # direct children only
        self.old_shas = {s.name: s.sha256 for s in self.old.all_shards()} if self.old else {}
        self.pool = ThreadPoolExecutor(max_workers=UPLOAD_THREADS)
        self.slots = threading.BoundedSemaphore(STAGED_MAX)
        self.lock = threading.Lock()
        self.t0 = time.perf_counter()

    def add(self, path: Path, shard: ShardInfo) -> None:
        self._raise_failed()
        if self._already_there(shard):
            path.unlink()
            self.kept += 1
            return
        self.slots.acquire()  # blocks the writer while STAGED_MAX shards wait or upload
        with self.lock:
            self.staged += 1
            self.staged_max = max(self.staged_max, self.staged)
        self._futures.append(self.pool.submit(self._upload, path, shard))

    def _already_there(self, shard: ShardInfo) -> bool:
        """Same name and sha256 in the old index, or an object a killed run uploaded whose
        stored sha256 matches (content-hashed names: a HEAD only for those)."""
        if self.old_shas.get(shard.name) == shard.sha256:
            return True
        if shard.name in self.existing:
            st = storage.stat(storage.join_url(self.out, shard.name))
            return bool(st and st["metadata"].get("sha256") == shard.sha256)
        return False

    def _upload(self, path: Path, shard: ShardInfo) -> None:
        try:
            n = storage.upload_file(
                path, storage.join_url(self.out, shard.name), metadata={"sha256": shard.sha256}
            )
            with self.lock:
                self.sent += n
                self.uploaded += 1
        finally:
            path.unlink(missing_ok=True)
            with self.lock:
                self.staged -= 1
            self.slots.release()

    def _raise_failed(self) -> None:
        for f in self._futures:
            if f.done() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]

    def publish(self, index_file: Path, index: ShardIndex) -> None:
        for f in self._futures:
            f.result()  # the first failed upload raises: the old index stays in place
        dt = max(time.perf_counter() - self.t0, 1e-9)
        if self.uploaded:
            self.say(
                f"  uploaded {self.uploaded} shard(s) to {self.out}: {self.sent / 1e6:.1f} MB "
                f"({self.sent / 1e6 / dt:.1f} MB/s); {self.kept} unchanged; at most "
                f"{self.staged_max} staged on local disk"
            )
        else:
            self.say(f"  all {self.kept} shard(s) already up to date in {self.out}")
        # the swap: one atomic PUT; readers see the old set or the new one
        storage.write_bytes(storage.join_url(self.out, INDEX), index_file.read_bytes())
        names = {s.name for s in index.all_shards()}
        for name in sorted(self.existing - names):
            if _is_shard_name(name):
                storage.remove(storage.join_url(self.out, name))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _is_shard_name(name: str) -> bool:
    m = _NAME.fullmatch(name)
    return m is not None and m["split"] in SPLITS
