"""WebDataset shards from a canonical raw dataset: deterministic tars + an index.

Layout of a shard set (a local directory or an `s3://bucket/prefix`):

    {split}-{bucket:06d}-{sha12}.tar   one sample = 3 adjacent members:
                                         {key}.input.png   the input image (A for AtoB, B for BtoA)
                                         {key}.target.png  the target image
                                         {key}.json        key, split, source files, size, sha256s
                                       sha12 = the first 12 hex digits of the tar's sha256
    index.json                         per split: shard names, sample counts, bytes, sha256;
                                       totals; the source data version; the params used
    keys-{split}.txt                   the split's sample keys, sorted; line 1 ties it to
                                       index.json (p2p.data.shard_index.read_keys)

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
into place. Output to a URL (S3, or any scheme p2p.data.storage serves) is streamed: each
finished shard is uploaded at once by a small thread pool (at most a few shards are staged on
local disk, in `TMPDIR/p2p-shards-PID-HEX`), shards whose name and sha256 the old index
already lists are not uploaded, index.json is replaced LAST (one atomic write), and only then
are shards the new index no longer names deleted. A run killed at any point leaves the old
index and every shard it names in place; its temp folder is removed by the next run (temp
folders of dead processes are cleaned at start).

Distributed (`p2p data shard --address`, `write_shards(executor=...)`): each bucket is one
Ray task. The driver reads the bucket's files (workers need not see them) and ships the bytes;
the task encodes, builds the bucket's tars with the same writer and sends them back (not those
the old index already holds); the driver writes them to its workdir and publishes them as
above, in bucket order. Output, index.json and every guarantee above are the same as a local run.

Modules: `shard_index` (the typed index, validation), `shard_tar` (the deterministic tar
writer), `shard_pack` (a pair's files -> a tar sample; a bucket's tars in a remote task),
`shard_publish` (local swap, uploads to a URL, stale temp cleanup); this module assigns pairs
to buckets and runs the whole write. Their public names are re-exported here.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2p.atomic import swap_dir_into_place
from p2p.config import DataConfig
from p2p.data import storage
from p2p.data.manifest import SPLITS
from p2p.data.shard_index import (
    FORMAT,
    FORMAT_VERSION,
    INDEX,
    ShardIndex,
    ShardInfo,
    SplitInfo,
    _index_bytes,
    read_index,
    shard_urls,
    write_keys,
)
from p2p.data.shard_pack import JPEG_QUALITY, _encode_pair, _pack_bucket, _read_pair
from p2p.data.shard_publish import STAGED_MAX, UPLOAD_THREADS, _local_workdir, _RemoteSink, _Sink
from p2p.data.shard_tar import _BLOCK, _member_header, _ShardWriter
from p2p.errors import DataError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "INDEX",
    "JPEG_QUALITY",
    "STAGED_MAX",
    "UPLOAD_THREADS",
    "ShardIndex",
    "ShardInfo",
    "SplitInfo",
    "_member_header",
    "read_index",
    "shard_urls",
    "write_shards",
]

log = logging.getLogger(__name__)

ASSIGN_SEED = "p2p-shards-assign-v2"  # fixed: the assignment is part of the format
FILL = 0.75  # average bucket fill aimed at, as a fraction of the shard limits
# `p2p data shard --address`: bytes of buckets in flight at most (inputs shipped out, tars back)
REMOTE_BUFFER = 4 * 2**30


def write_shards(
    raw_dir: str | os.PathLike,
    out: str | os.PathLike,
    data: DataConfig,
    *,
    max_count: int | None = None,
    max_size: int | None = None,
    progress: Callable[[str], None] | None = None,
    executor: Any | None = None,
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
        executor: where each bucket's tars are built instead of this process, e.g. a
            `p2p.raycluster.RayExecutor` (one bucket per item: `chunk=1`). The pairs' bytes are
            read here and shipped with the tasks; the tars come back and are published here,
            so the output is byte-identical to a local run. Shards the old S3 index already
            holds are not sent back.

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
    remote = not storage.is_local(out_s)  # any URL (s3://, or a scheme registered later)
    old = None
    if remote:
        storage.list_urls(out_s)  # fail fast (missing bucket, no access) before any work
        try:
            old = read_index(out_s)
        except DataError:  # none yet, or unreadable: every shard is uploaded
            old = None

    workdir = _local_workdir(out_s)
    sink: _Sink = _RemoteSink(out_s, old, say) if remote else _Sink()
    try:
        known = {s.name: s.sha256 for s in old.all_shards()} if old else {}
        splits, skipped = _write_tars(
            manifest, workdir, data, (max_count, max_size), say, sink, executor, known
        )
        index = _make_index(manifest, Path(raw_dir), data, max_count, max_size, splits, skipped)
        (workdir / INDEX).write_bytes(_index_bytes(index))
        write_keys(workdir, out_s, manifest, index)  # keys-{split}.txt (uploaded before index)
        if remote:
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
    limits: tuple[int, int],
    say: Callable[[str], None],
    sink: _Sink,
    executor: Any | None = None,
    known: dict[str, str] | None = None,
) -> tuple[dict[str, SplitInfo], list[dict[str, str]]]:
    """Read + pack every pair and write the tars of each bucket into workdir (then the sink):
    here, or on the executor (see `write_shards`). Shards, problems and skipped files come out
    in the same order either way: splits, then buckets, then pairs."""
    from p2p.data.reports import InvalidDataset

    run = _Run(manifest, workdir, data, limits, say, sink, problems=[])
    problems = run.problems
    shards: dict[str, list[ShardInfo]] = {split: [] for split in SPLITS}
    max_count, max_size = limits
    jobs = (
        (split, bucket, pairs)
        for split in SPLITS
        for bucket, pairs in _buckets(manifest.pairs(split), split, max_count, max_size)
    )
    done = (
        _local_buckets(jobs, run)
        if executor is None
        else _remote_buckets(jobs, run, executor, known)
    )
    for split, bucket_shards in done:
        shards[split] += bucket_shards
    splits = {
        split: SplitInfo(sum(s.samples for s in ss), sum(s.bytes for s in ss), tuple(ss))
        for split, ss in shards.items()
    }
    if problems and data.on_error == "fail":
        raise InvalidDataset(str(manifest.root), problems, "no shards written")
    if not splits["train"].samples:
        raise DataError(f"{manifest.root}: no valid train pairs to shard")
    # paths relative to the dataset, so index.json does not depend on where it lives
    skipped = [{"file": _relative(p.file, manifest.root), "reason": p.reason} for p in problems]
    return splits, skipped


@dataclass(frozen=True)
class _Run:
    """What every bucket of one shard run shares: the source, where tars go, the limits."""

    manifest: Any
    workdir: Path
    data: DataConfig
    limits: tuple[int, int]  # (max_count, max_size) per shard
    say: Callable[[str], None]  # progress lines
    sink: _Sink  # finished shards go here (local dir, or the S3 uploader)
    problems: list[Any]  # appended in pair order

    def parts(self) -> tuple[Any, Path, DataConfig, tuple[int, int], Any, _Sink, list[Any]]:
        return (self.manifest, self.workdir, self.data, self.limits, self.say, self.sink,
                self.problems)  # fmt: skip


def _local_buckets(
    jobs: Iterator[tuple[str, int, list[Any]]], run: _Run
) -> Iterator[tuple[str, list[ShardInfo]]]:
    """(split, shards) per bucket, written by this process; problems are appended in order."""
    from p2p.data.reports import Problem

    manifest, workdir, data, limits, say, sink, problems = run.parts()

    # png output copies bytes: reading in this thread was faster than a pool (measured);
    # jpg output decodes and re-encodes, which threads overlap
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        mapper = map if data.image_format == "png" else pool.map
        for split, bucket, pairs in jobs:
            writer = _ShardWriter(workdir, split, bucket, *limits, say, sink)
            for batch in _chunks(pairs, 32):  # read (in parallel for jpg), write in order
                for result in mapper(lambda p: _encode_pair(p, manifest, data), batch):
                    if isinstance(result, Problem):
                        problems.append(result)
                    elif not problems or data.on_error == "skip":
                        writer.add(result)  # "fail": nothing is added after the first problem
            yield split, writer.close()


def _remote_buckets(
    jobs: Iterator[tuple[str, int, list[Any]]],
    run: _Run,
    executor: Any,
    known: dict[str, str] | None,
) -> Iterator[tuple[str, list[ShardInfo]]]:
    """(split, shards) per bucket, built by executor tasks: this process reads each bucket's
    files (the workers may not see them), the task packs and tars them and sends back the tar
    bytes, which are written to workdir and handed to the sink here, in bucket order."""
    manifest, workdir, data, limits, say, sink, problems = run.parts()
    where = (manifest.name, manifest.root, data, limits, dict(known or {}))

    def items() -> Iterator[tuple[str, int, list[tuple[Any, Any]]]]:
        for split, bucket, pairs in jobs:  # pulled lazily: a few buckets in memory at a time
            yield split, bucket, [(p, _read_pair(p, data)) for p in pairs]

    for split, bucket_problems, tars, lines in executor.map(
        lambda item: _pack_bucket(item, where), items()
    ):
        problems += bucket_problems
        keep = not problems or data.on_error == "skip"  # "fail": publish nothing more
        for line in lines:
            say(line)
        shards = []
        for shard, blob in tars:
            shards.append(shard)
            if keep:
                path = workdir / shard.name
                if blob is not None:  # None: the old index holds it (the sink keeps it)
                    path.write_bytes(blob)
                sink.add(path, shard)
        yield split, shards


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
