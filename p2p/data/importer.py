"""`import_pairs`: an aligned or folders source layout -> a canonical dataset.

Each image is decoded once: the decoded image is validated (`p2p.data.images` policy, A/B
sizes, crop size), encoded to PNG in the same worker, and the writer hashes the PNG bytes as it
writes them; nothing is read back. With on_error="fail" every offending file is listed in one
DataError and nothing is written; with "skip" only good pairs are written and report.json lists
the rest. An existing dataset at `out` is replaced only once the new one is complete.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Protocol

from PIL import Image

from p2p.config import DataConfig
from p2p.data.images import encode_png, open_image, to_channels
from p2p.data.manifest import side_channels
from p2p.data.reports import ImportReport, InvalidDataset, Problem, reason
from p2p.data.sources import Candidate, Scan, aspect_outliers, scan
from p2p.data.writer import DatasetWriter
from p2p.errors import DataError

log = logging.getLogger(__name__)


def default_workers() -> int:
    """Threads for decode/encode: PIL releases the GIL while it (de)compresses."""
    return max(1, min(8, os.cpu_count() or 1))


class ThreadExecutor:
    """Local executor: a thread pool (PIL releases the GIL while it (de)compresses).

    Executors run `fn` over items with results in input order; the other one is
    `p2p.raycluster.RayExecutor` (Ray tasks across a cluster). `remote` says whether `fn` runs
    where this machine's files may not be visible (callers then ship file bytes with the items).
    """

    remote = False

    def __init__(self, workers: int | None = None) -> None:
        self.workers = default_workers() if workers is None else workers

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        """`map(fn, items)`, results in input order, at most 2 * workers in flight."""
        if self.workers <= 1:
            yield from map(fn, items)
            return
        with ThreadPoolExecutor(self.workers) as pool:
            window: collections.deque = collections.deque()
            for item in items:
                window.append(pool.submit(fn, item))
                if len(window) >= 2 * self.workers:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()


class Executor(Protocol):
    remote: bool

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]: ...


def map_ordered(
    fn: Callable[[Any], Any], items: Iterable[Any], workers: int | Executor
) -> Iterator[Any]:
    """`map(fn, items)` in input order on `workers` threads, or on the given executor."""
    ex = ThreadExecutor(workers) if isinstance(workers, int) else workers
    yield from ex.map(fn, items)


def import_pairs(
    src: str | Path,
    out: str | Path,
    *,
    fmt: Literal["aligned", "folders"],
    on_error: Literal["fail", "skip"] = "fail",
    data: DataConfig,
    name: str | None = None,
    val_fraction: float = 0.0,
    test_fraction: float = 0.0,
    seed: int = 0,
    check_aspect: bool = True,
    workers: int | None = None,
    executor: Executor | None = None,
) -> ImportReport:
    """Import an aligned or folders source layout into the canonical layout at `out`.

    Args:
        src: the source folder.
        out: the dataset dir to write (replaced atomically if it is already a p2p dataset).
        fmt: "aligned" (A|B side by side) or "folders" (SRC/A, SRC/B).
        on_error: "fail": raise one DataError listing every offending file, write nothing;
            "skip": write the good pairs and list the rest in report.json.
        data: channel counts, direction and preprocess used for validation.
        name: dataset name in the manifest (default: the name of `out`).
        val_fraction, test_fraction, seed: the split of a source without split folders
            (`manifest.split_of`: a hash of seed and key).
        check_aspect: aligned only; reject files whose halves are shaped unlike the rest.
        workers: decode/encode threads (default: `default_workers()`).
        executor: where the per-pair work runs instead of local threads, e.g. a
            `p2p.raycluster.RayExecutor` (the output is byte-identical either way).

    Returns:
        An ImportReport (counts per split, skipped files, bytes, seconds).

    Raises:
        InvalidDataset (a DataError): problems with on_error="fail", or no train pairs left.
    """
    t0 = time.perf_counter()
    src, out = Path(src), Path(out)
    run_on = executor or ThreadExecutor(workers)
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be fail or skip, got {on_error!r}")
    _check_not_nested(src, out)
    found = scan(src, fmt, (val_fraction, test_fraction, seed))
    log.info("%s: %d candidate pairs (%s layout)", src, len(found.candidates), fmt)
    good: collections.Counter[str] = collections.Counter()
    a_sizes: dict[Path, tuple[int, int]] = {}  # aligned file -> size of its A half
    with DatasetWriter(out, name or out.name) as writer:
        for c, pair in decode_pairs(found, data, encode=True, workers=run_on):
            good[c.split] += 1
            a_sizes[c.a_file] = pair[2]
            if on_error == "skip" or not found.problems:
                writer.add_png(c.key, c.split, *pair)  # "fail": stop writing at the 1st problem
        if fmt == "aligned" and check_aspect:  # needs every file's shape: after the decode pass
            outliers = aspect_outliers(found, a_sizes)
            for c in found.candidates:
                if c.a_file in outliers:
                    good[c.split] -= 1
                    writer.discard(c.key, c.split)
        empty_splits(found, good)
        found.problems.sort(key=lambda p: p.file)
        if found.problems and (on_error == "fail" or not good["train"]):
            raise InvalidDataset(str(src), found.problems, "nothing written")
        writer.commit(
            report={
                "source": str(src),
                "source_format": fmt,
                "skipped": [{"file": p.file, "reason": p.reason} for p in found.problems],
            },
            warnings=found.warnings,
        )
        report = ImportReport(
            out=out,
            name=writer.name,
            counts=writer.counts,
            skipped=list(found.problems),
            warnings=found.warnings,
            bytes=writer.bytes,
            seconds=time.perf_counter() - t0,
        )
    log.debug(report.summary())
    return report


def decode_pairs(
    found: Scan, data: DataConfig, *, encode: bool = False, workers: int | Executor = 1
) -> Iterator[tuple[Candidate, tuple]]:
    """Check every candidate (threads, or any executor); yield (candidate, pair) for the good
    ones and record problems for the rest, in candidate order (so reports are deterministic).

    pair is (a, b) images, or with encode=True (a_png, b_png, a_size, b_size).
    """
    converted = 0
    where = Scan(found.root, found.kind)  # what `_check` needs: small to ship to Ray tasks
    if getattr(workers, "remote", False):
        # Other machines may not see these files: read them here, decode and encode there.
        items: Iterable = ((c, _read_files(c)) for c in found.candidates)
        results = map_ordered(lambda cb: _check(where, *cb, data, encode), items, workers)
    else:
        results = map_ordered(
            lambda c: _check(where, c, {}, data, encode), found.candidates, workers
        )
    for i, (c, (problems, conv, pair)) in enumerate(zip(found.candidates, results, strict=True)):
        if i and i % 500 == 0:
            log.info("checked %d / %d pairs", i, len(found.candidates))
        found.problems += problems
        converted += conv and pair is not None
        if pair is not None:
            yield c, pair
    if converted:
        a_nc, b_nc = side_channels(data)
        found.warnings.append(
            f"{converted} pair(s) had grayscale/palette/opaque-alpha/16-bit images converted "
            f"to {a_nc}/{b_nc} channels (A/B)"
        )


def empty_splits(found: Scan, counts: dict[str, int]) -> None:
    """Train must have pairs (a problem otherwise); empty val/test are warnings."""
    aligned_split = found.kind == "aligned" and not found.unsplit
    if counts.get("train", 0) == 0:
        where = found.root / "train" if aligned_split else found.root
        found.problems.append(Problem(str(where), "train split is empty (no valid pairs)"))
    for s in ("val", "test"):
        if counts.get(s, 0) == 0:
            if found.kind == "canonical":
                why = "no pairs in the manifest"
            elif found.unsplit:
                why = "no split folders; its fraction is 0 or there are too few pairs"
            else:
                why = "folder has no valid pairs" if s in found.splits_found else "no such folder"
            found.warnings.append(f"{s} split is empty ({why})")


# ----------------------------------------------------------------------------- internals


def _read_files(c: Candidate) -> dict[Path, bytes]:
    """The bytes of a candidate's files that can be read here (a file that cannot is left out:
    the worker's own read then fails with the usual message)."""
    blobs = {}
    for f in (c.a_file, c.b_file):
        if f is not None:
            with contextlib.suppress(OSError):
                blobs[f] = f.read_bytes()
    return blobs


def _check(
    found: Scan, c: Candidate, blobs: dict[Path, bytes], data: DataConfig, encode: bool
) -> tuple[list[Problem], bool, tuple | None]:
    """Decode and check one candidate: (problems, converted?, (a, b) or PNG bytes + sizes).
    `blobs` holds the bytes of files already read (else they are read from disk here)."""
    a_nc, b_nc = side_channels(data)
    local = Scan(found.root, found.kind)  # per-call problem list: threads never share one
    notes: list[str] = []
    if c.b_file is None:
        pair = _decode_aligned(local, c.a_file, blobs.get(c.a_file), a_nc, b_nc, notes)
    else:
        pair = _decode_folder_pair(local, c, blobs, a_nc, b_nc, notes)
    if pair is not None and data.preprocess == "crop" and min(pair[0].size) < data.crop_size:
        w, h = pair[0].size
        local.bad(
            c.a_file,
            f"{w}x{h} is smaller than data.crop_size {data.crop_size} (data.preprocess is crop)",
        )
        pair = None
    if pair is not None and encode:
        a, b = pair
        pair = (encode_png(a), encode_png(b), a.size, b.size)
    return local.problems, bool(notes), pair


def _decode_aligned(
    found: Scan, f: Path, blob: bytes | None, a_nc: int, b_nc: int, notes: list[str]
) -> tuple[Image.Image, Image.Image] | None:
    name = found.show(f)
    try:
        img = open_image(
            f if blob is None else blob, name=name, channels=max(a_nc, b_nc), notes=notes
        )
        w, h = img.size
        if w % 2:
            raise DataError(f"{name}: odd width {w}: cannot split into equal A | B halves")
        a = img.crop((0, 0, w // 2, h))  # A = left half
        b = img.crop((w // 2, 0, w, h))  # B = right half
        a = to_channels(a, name=f"{name} (left half, A)", channels=a_nc)
        b = to_channels(b, name=f"{name} (right half, B)", channels=b_nc)
    except DataError as e:
        found.bad(f, reason(e, name))
        return None
    return a, b


def _decode_folder_pair(
    found: Scan, c: Candidate, blobs: dict[Path, bytes], a_nc: int, b_nc: int, notes: list[str]
) -> tuple[Image.Image, Image.Image] | None:
    imgs = []
    for f, nc in ((c.a_file, a_nc), (c.b_file, b_nc)):
        name = found.show(f)
        try:
            imgs.append(open_image(blobs.get(f, f), name=name, channels=nc, notes=notes))
        except DataError as e:
            found.bad(f, reason(e, name))
    if len(imgs) < 2:
        return None
    a, b = imgs
    if a.size != b.size:
        found.bad(
            c.b_file,
            f"size {b.size[0]}x{b.size[1]} does not match its partner "
            f"{found.show(c.a_file)} ({a.size[0]}x{a.size[1]})",
        )
        return None
    return a, b


def _check_not_nested(src: Path, out: Path) -> None:
    s, o = src.resolve(), out.resolve()
    if s == o or s.is_relative_to(o) or o.is_relative_to(s):
        raise DataError(f"{out}: --out must be outside --src ({src}) and not contain it")
