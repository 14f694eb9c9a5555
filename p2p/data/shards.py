"""WebDataset shards from a canonical raw dataset: deterministic tars + an index.

Layout of a shard set (a local directory or an `s3://bucket/prefix`):

    {split}-{index:06d}.tar      one sample = 3 adjacent members:
                                   {key}.input.png   the input image (A for AtoB, B for BtoA)
                                   {key}.target.png  the target image
                                   {key}.json        key, split, source files, sizes, sha256s
    index.json                   per split: shard names, sample counts, bytes, sha256;
                                 totals; the source data version; the params used

Determinism: the same raw data and params give byte-identical tars and index.json, so DVC
hashes stay stable and `dvc repro` does not retrain for nothing. Samples keep the manifest's
order (splits in train, val, test order; keys sorted), except that train samples are
permuted once with a fixed seed so that neighbouring crops of one photo do not share a shard;
members carry mtime 0, uid/gid 0, uname/gname "p2p", mode 0644 (GNU tar format); images are
the raw dataset's original PNG bytes (re-encoded only when data.image_format is "jpg", with
fixed settings); the JSON is written with sorted keys.

Validation: every pair is checked while it is written (sha256 against the manifest, full
decode, channel count for its side, input/target size). With data.on_error "fail" all
problems are reported in one error and nothing is written; with "skip" the bad pairs are left
out and listed in index.json ("skipped").

Atomicity: local output is built in a temp dir beside `out` and renamed into place. S3 output
is built locally, then the old index.json is deleted, changed shards are uploaded (each upload
atomic, see p2p.data.storage), index.json is uploaded LAST, and only then are shards the new
index no longer names deleted. Readers therefore never see an index pointing at missing or
different shards. Unchanged shards (same sha256 in the object metadata) are not re-uploaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import shutil
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2p.atomic import swap_dir_into_place
from p2p.config import DataConfig
from p2p.data import storage
from p2p.errors import DataError

log = logging.getLogger(__name__)

INDEX = "index.json"
FORMAT = "p2p-webdataset"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
JPEG_QUALITY = 95  # data.image_format = "jpg": fixed settings, 4:4:4 chroma
TRAIN_ORDER_SEED = "p2p-shards-train-order-v1"  # fixed: the write order is part of the format
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
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


# ----------------------------------------------------------------------------- writing


def write_shards(
    raw_dir: str | os.PathLike,
    out: str | os.PathLike,
    data: DataConfig,
    *,
    max_count: int | None = None,
    max_size: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Shard a canonical raw dataset into `out` (a directory or s3://bucket/prefix).

    Args:
        raw_dir: canonical dataset dir (manifest.json, A/, B/).
        out: destination directory or `s3://bucket/prefix`.
        data: data config: direction, input_nc/output_nc, image_format, on_error, defaults
            for the shard limits.
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
    from p2p.data.pairs import load_manifest

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
    if storage.is_s3_url(out_s):
        storage.list_urls(out_s)  # fail fast (missing bucket, no access) before any work

    workdir = _local_workdir(out_s)
    try:
        splits, skipped = _write_tars(manifest, workdir, data, max_count, max_size, say)
        index = _make_index(manifest, Path(raw_dir), data, max_count, max_size, splits, skipped)
        (workdir / INDEX).write_bytes(_index_bytes(index))
        if storage.is_s3_url(out_s):
            _publish_s3(workdir, out_s, index, say)
        else:
            swap_dir_into_place(workdir, Path(out_s))
            workdir = None  # renamed; nothing to clean up
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)

    dt = time.perf_counter() - t0
    tot = index["totals"]
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
) -> tuple[dict[str, dict[str, Any]], list[dict[str, str]]]:
    """Validate + encode every pair and write the tars of each split into workdir."""
    from p2p.data.pairs import InvalidDataset, Problem

    problems: list[Problem] = []
    splits: dict[str, dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for split in SPLITS:
            pairs = manifest.pairs(split)
            if split == "train":  # fixed permutation: see the module docstring
                random.Random(TRAIN_ORDER_SEED).shuffle(pairs)
            writer = _ShardWriter(workdir, split, max_count, max_size, say)
            for batch in _chunks(pairs, 32):  # decode in parallel, write in order
                for result in pool.map(lambda p: _encode_pair(p, manifest, data), batch):
                    if isinstance(result, Problem):
                        problems.append(result)
                    elif not problems or data.on_error == "skip":
                        writer.add(result)
            splits[split] = writer.close()
    if problems and data.on_error == "fail":
        raise InvalidDataset(str(manifest.root), problems, "no shards written")
    if not splits["train"]["samples"]:
        raise DataError(f"{manifest.root}: no valid train pairs to shard")
    # paths relative to the dataset, so index.json does not depend on where it lives
    skipped = [{"file": _relative(p.file, manifest.root), "reason": p.reason} for p in problems]
    return splits, skipped


def _relative(path: str, root: Path) -> str:
    p = Path(path)
    return p.relative_to(root).as_posix() if p.is_relative_to(root) else path


def _encode_pair(pair: Any, manifest: Any, data: DataConfig) -> _Sample | Any:
    """Read, verify and encode one pair; a pairs.Problem if it is bad."""
    from p2p.data.images import open_image
    from p2p.data.pairs import Problem

    a_nc, b_nc = (
        (data.input_nc, data.output_nc)
        if data.direction == "AtoB"
        else (data.output_nc, data.input_nc)
    )
    sides = []
    for path, sha, nc in ((pair.a, pair.a_sha256, a_nc), (pair.b, pair.b_sha256, b_nc)):
        try:
            blob = path.read_bytes()
        except OSError as e:
            return Problem(str(path), f"cannot read file ({e.strerror or e})")
        if hashlib.sha256(blob).hexdigest() != sha:
            return Problem(str(path), "content differs from manifest.json (sha256 mismatch)")
        try:
            img = open_image(blob, name=str(path), channels=nc)
        except DataError as e:
            return Problem(str(path), str(e).removeprefix(f"{path}: "))
        sides.append((blob, img, sha))
    (a_blob, a_img, a_sha), (b_blob, b_img, b_sha) = sides
    if a_img.size != b_img.size:
        return Problem(str(pair.a), f"A is {a_img.size} but its partner {pair.b} is {b_img.size}")
    if data.direction == "AtoB":
        inp, tgt = (a_blob, a_img), (b_blob, b_img)
    else:
        inp, tgt = (b_blob, b_img), (a_blob, a_img)
    ext = data.image_format
    meta = {
        "key": pair.key,
        "split": pair.split,
        "dataset": manifest.name,
        "direction": data.direction,
        "a": pair.a.relative_to(manifest.root).as_posix(),
        "b": pair.b.relative_to(manifest.root).as_posix(),
        "a_sha256": a_sha,
        "b_sha256": b_sha,
        "size": list(a_img.size),
    }
    members = (
        (f"{pair.key}.input.{ext}", _encode(*inp, ext)),
        (f"{pair.key}.target.{ext}", _encode(*tgt, ext)),
        (f"{pair.key}.json", json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()),
    )
    return _Sample(pair.key, members)


def _encode(blob: bytes, img: Any, ext: str) -> bytes:
    """Original bytes when they are already in the shard format; else a fixed re-encode."""
    if ext == "png":
        if blob.startswith(_PNG_MAGIC):
            return blob
        from p2p.data.images import encode_png

        return encode_png(img)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
    return buf.getvalue()


class _ShardWriter:
    """Deterministic tar writer that rolls over at max_count samples / max_size bytes."""

    def __init__(
        self, workdir: Path, split: str, max_count: int, max_size: int, say: Callable[[str], None]
    ) -> None:
        self.workdir, self.split = workdir, split
        self.max_count, self.max_size, self.say = max_count, max_size, say
        self.shards: list[dict[str, Any]] = []
        self.tar: tarfile.TarFile | None = None
        self.count = self.size = 0
        self.t0 = time.perf_counter()

    def add(self, sample: _Sample) -> None:
        n = sample.tar_bytes
        if self.tar is not None and (
            self.count >= self.max_count or _file_size(self.size + n) > self.max_size
        ):
            self._finish()
        if self.tar is None:
            name = f"{self.split}-{len(self.shards):06d}.tar"
            # GNU format: long keys get ././@LongLink entries; no pax headers with timestamps.
            self.tar = tarfile.open(  # noqa: SIM115 - closed in _finish
                self.workdir / name, "w", format=tarfile.GNU_FORMAT
            )
            self.name, self.count, self.size = name, 0, 0
            self.t0 = time.perf_counter()
        for member, blob in sample.members:
            info = tarfile.TarInfo(member)
            info.size, info.mtime, info.mode = len(blob), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "p2p"
            self.tar.addfile(info, io.BytesIO(blob))
        self.count += 1
        self.size += n

    def _finish(self) -> None:
        assert self.tar is not None
        self.tar.close()
        self.tar = None
        path = self.workdir / self.name
        blob = path.read_bytes()
        self.shards.append(
            {
                "name": self.name,
                "samples": self.count,
                "bytes": len(blob),
                "sha256": hashlib.sha256(blob).hexdigest(),
            }
        )
        dt = max(time.perf_counter() - self.t0, 1e-9)
        self.say(
            f"  {self.name}: {self.count} samples, {len(blob) / 1e6:.2f} MB "
            f"({len(blob) / 1e6 / dt:.1f} MB/s)"
        )

    def close(self) -> dict[str, Any]:
        if self.tar is not None:
            self._finish()
        return {
            "samples": sum(s["samples"] for s in self.shards),
            "bytes": sum(s["bytes"] for s in self.shards),
            "shards": self.shards,
        }


def _file_size(member_bytes: int) -> int:
    """Size of a tar file holding members of this many bytes: + end blocks, record padding."""
    return -(-(member_bytes + 2 * _BLOCK) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


# ----------------------------------------------------------------------------- index


def _make_index(
    manifest: Any,
    raw_dir: Path,
    data: DataConfig,
    max_count: int,
    max_size: int,
    splits: dict[str, dict[str, Any]],
    skipped: list[dict[str, str]],
) -> dict[str, Any]:
    manifest_sha = hashlib.sha256((manifest.root / "manifest.json").read_bytes()).hexdigest()
    dvc_md5, dvc_source = _dvc_md5(raw_dir)
    index: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": manifest.name,
        "data_version": {
            "manifest_sha256": manifest_sha,
            "dvc_md5": dvc_md5,
            "dvc_source": dvc_source,
        },
        "params": {
            "data.direction": data.direction,
            "data.input_nc": data.input_nc,
            "data.output_nc": data.output_nc,
            "data.image_format": data.image_format,
            "data.shard_max_count": max_count,
            "data.shard_max_size": max_size,
        },
        "splits": splits,
        "totals": {
            "samples": sum(s["samples"] for s in splits.values()),
            "shards": sum(len(s["shards"]) for s in splits.values()),
            "bytes": sum(s["bytes"] for s in splits.values()),
        },
    }
    if skipped:
        index["skipped"] = skipped
    return index


def _index_bytes(index: dict[str, Any]) -> bytes:
    return (json.dumps(index, indent=1, sort_keys=True) + "\n").encode()


def _dvc_md5(raw_dir: Path) -> tuple[str | None, str | None]:
    """The DVC hash recorded for raw_dir (its .dvc file, or a dvc.lock stage out), if any.

    This is what DVC last recorded, which lags the files if they were changed without
    `dvc add` / `dvc repro`; `manifest_sha256` (verified against every file) is the content.
    """
    from p2p.data.versioning import recorded_version  # the one reader of DVC's files

    v = recorded_version(raw_dir)
    return (v.md5, v.dvc_file) if v is not None else (None, None)


def read_index(shards_url: str | os.PathLike) -> dict[str, Any]:
    """The index.json of a shard set (a directory or s3://bucket/prefix).

    Raises:
        DataError: no index (not sharded yet) or not a p2p shard index.
    """
    url = storage.join_url(shards_url, INDEX)
    try:
        index = json.loads(storage.read_bytes(url))
    except storage.ObjectNotFound:
        raise DataError(
            f"{shards_url}: no shard index ({INDEX}); write shards with `p2p data shard`"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{url}: not valid JSON ({e})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataError(f"{url}: not a p2p shard index")
    if index.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{url}: format_version {index.get('format_version')!r} is not {FORMAT_VERSION}"
        )
    return index


def shard_urls(shards_url: str | os.PathLike, split: str, index: dict[str, Any]) -> list[str]:
    """URLs of one split's shards, in index order."""
    entry = index["splits"].get(split)
    if entry is None:
        raise DataError(f"{shards_url}: index.json has no split {split!r}")
    return [storage.join_url(shards_url, s["name"]) for s in entry["shards"]]


# ----------------------------------------------------------------------------- publishing


def _local_workdir(out: str) -> Path:
    """A fresh temp dir: beside a local `out` (same filesystem, so the final rename is atomic),
    or in the system temp dir for S3 output."""
    if storage.is_s3_url(out):
        return Path(tempfile.mkdtemp(prefix="p2p-shards-"))
    dst = Path(out)
    if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
        raise DataError(f"{dst}: exists and is not a directory; refusing to replace it")
    if dst.is_dir() and any(dst.iterdir()) and not (dst / INDEX).is_file():
        raise DataError(
            f"{dst}: exists, is not empty and is not a shard set (no {INDEX}); "
            "refusing to replace it"
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def _publish_s3(workdir: Path, out: str, index: dict[str, Any], say: Callable[[str], None]) -> None:
    """Upload shards, then index.json last, then delete shards the new index does not name."""
    names = [s["name"] for split in index["splits"].values() for s in split["shards"]]
    shas = {s["name"]: s["sha256"] for split in index["splits"].values() for s in split["shards"]}
    prefix = out.rstrip("/") + "/"
    existing = {u[len(prefix) :] for u in storage.list_urls(out)}
    existing = {name for name in existing if "/" not in name}  # direct children only

    todo = []
    for name in names:
        if name in existing:
            st = storage.stat(storage.join_url(out, name))
            if st and st["metadata"].get("sha256") == shas[name]:
                continue  # identical shard already there
        todo.append(name)
    if todo and INDEX in existing:
        # Shards are about to change: take the old index down first, so no reader pairs it
        # with the new shards.
        storage.remove(storage.join_url(out, INDEX))
    t0 = time.perf_counter()
    sent = 0
    for name in todo:
        sent += storage.upload_file(
            workdir / name, storage.join_url(out, name), metadata={"sha256": shas[name]}
        )
    if todo:
        dt = max(time.perf_counter() - t0, 1e-9)
        say(
            f"  uploaded {len(todo)} shard(s) to {out}: "
            f"{sent / 1e6:.1f} MB ({sent / 1e6 / dt:.1f} MB/s)"
        )
    else:
        say(f"  all {len(names)} shard(s) already up to date in {out}")
    storage.write_bytes(storage.join_url(out, INDEX), (workdir / INDEX).read_bytes())
    stale = existing - set(names) - {INDEX}
    for name in sorted(stale):
        if _is_shard_name(name):
            storage.remove(storage.join_url(out, name))


def _is_shard_name(name: str) -> bool:
    split, _, rest = name.partition("-")
    return split in SPLITS and rest.endswith(".tar") and rest[:-4].isdigit()
