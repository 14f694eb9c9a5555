"""`p2p data download NAME`: the paper's aligned datasets, fetched, checked, imported.

The pix2pix authors publish each dataset as `http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/
NAME.tar.gz`: a folder NAME/ with train/, val/ (and for some test/) of A|B images side by side
(the reference's "aligned" layout). `download_dataset`:

1. downloads to DEST/NAME.tar.gz.part, resuming an interrupted download with an HTTP Range
   request, then renames it to DEST/NAME.tar.gz;
2. measures its size and sha256 and checks them against the registry below (where known) and
   against the sidecar DEST/NAME.tar.gz.json written by an earlier download (nobody publishes
   checksums for these files, so none are invented here: the first download records what it
   got, and every later download or re-use must match it);
3. extracts it safely: only regular files and folders, no absolute paths, no `..`, no links or
   devices (checked member by member, then tarfile's `filter="data"` as a second guard);
   into DEST/NAME (kept: it is `data.source` of params/NAME.yaml, so `p2p data prepare` can
   re-import it);
4. imports it with `p2p.data.importer.import_pairs` (aligned format) into data/raw/NAME, and
   optionally versions that with DVC (`p2p data version`'s code path).

The base URL can be overridden with P2P_DATASETS_URL (mirrors, tests). The direction each
dataset needs is recorded here and in params/NAME.yaml (facades and cityscapes are BtoA).
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import logging
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from p2p.atomic import file_sha256, write_bytes_atomic
from p2p.config import DataConfig
from p2p.errors import DataError

log = logging.getLogger(__name__)

BASE_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets"
BASE_URL_ENV = "P2P_DATASETS_URL"
CHUNK = 1 << 20
TIMEOUT_S = 60


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One published dataset. `size` / `sha256`: expected values where known (None: unknown;
    the first download's measured values are recorded in the sidecar instead)."""

    name: str
    direction: Literal["AtoB", "BtoA"]  # the paper's task: which half is the input
    task: str
    note: str = ""
    size: int | None = None
    sha256: str | None = None


# The six aligned datasets of the authors' download script (docs/datasets.md of the reference).
DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec("facades", "BtoA", "labels -> facade photo", "CMP Facades, 400 images"),
        DatasetSpec(
            "cityscapes",
            "BtoA",
            "semantic labels -> street photo",
            "2975 Cityscapes training images; the authors' script no longer serves it (license):"
            " get it from cityscapes-dataset.com and build it with the reference's "
            "datasets/prepare_cityscapes_dataset.py, or point P2P_DATASETS_URL at a mirror",
        ),
        DatasetSpec(
            "maps", "AtoB", "aerial photo -> map", "1096 Google Maps images; BtoA = map -> aerial"
        ),
        DatasetSpec("edges2shoes", "AtoB", "edges -> shoe photo", "UT Zappos50K, HED edges"),
        DatasetSpec("edges2handbags", "AtoB", "edges -> handbag photo", "iGAN Amazon handbags"),
        DatasetSpec(
            "night2day",
            "BtoA",
            "day -> night (the paper's task; A is night, B is day)",
            "Transient Attributes webcams; AtoB = night -> day",
        ),
    )
}


def base_url() -> str:
    return (os.environ.get(BASE_URL_ENV) or BASE_URL).rstrip("/")


def spec_of(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(
            f"{name}: not a published pix2pix dataset; one of {', '.join(DATASETS)}"
        ) from None


@dataclasses.dataclass(frozen=True)
class Download:
    """What `download_dataset` did."""

    name: str
    url: str
    archive: Path
    size: int
    sha256: str
    direction: str
    raw_dir: Path | None  # the imported dataset (None with import_=False)
    counts: dict[str, int]
    resumed_from: int  # bytes already in the .part file when this download started
    cached: bool  # the archive was already here and matched its sidecar
    data_version: str | None  # DVC md5 with version=True


def download_dataset(
    name: str,
    *,
    dest: str | Path = "data/downloads",
    out: str | Path | None = None,
    data: DataConfig | None = None,
    import_: bool = True,
    version: bool = False,
    remote: str | None = None,
    repo: str | Path = ".",
) -> Download:
    """Download, verify, extract and import the published dataset `name`.

    Args:
        name: one of DATASETS.
        dest: where NAME.tar.gz, its .part file, its sidecar and the extracted NAME/ live.
        out: the canonical dataset to write (default data/raw/NAME).
        data: channels etc. for validation (default: DataConfig with the dataset's direction).
        import_: extract and import (False: download and verify only).
        version: DVC-version `out` afterwards (`p2p data version` code path), pushed to
            `remote` (default: as `p2p data version`).
        repo: the DVC repository root, for `version`.

    Raises:
        DataError: unknown name, HTTP/network failure (the .part file is kept: rerun to
            resume), size/checksum mismatch, an unsafe archive, or invalid pairs.
    """
    spec = spec_of(name)
    url = f"{base_url()}/{name}.tar.gz"
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / f"{name}.tar.gz"
    sidecar = dest / f"{name}.tar.gz.json"
    recorded = _read_sidecar(sidecar)

    resumed_from, cached = 0, False
    if archive.exists() and recorded is not None:
        size, digest = archive.stat().st_size, file_sha256(archive)
        _check(archive, spec, recorded, size, digest)
        cached = True
    else:
        resumed_from = _fetch(url, archive, spec)
        size, digest = archive.stat().st_size, file_sha256(archive)
        try:
            _check(archive, spec, recorded, size, digest)
        except DataError:
            archive.unlink()  # a bad file is not kept: the next run downloads it again
            raise
    if recorded is None:
        doc = {
            "name": name,
            "url": url,
            "size": size,
            "sha256": digest,
            "direction": spec.direction,
        }
        write_bytes_atomic(sidecar, (json.dumps(doc, indent=2) + "\n").encode())
    log.info("%s: %d bytes, sha256 %s%s", archive, size, digest, " (cached)" if cached else "")

    raw_dir, counts, data_version = None, {}, None
    if import_:
        from p2p.data.importer import import_pairs

        data = data or DataConfig(direction=spec.direction)
        raw_dir = Path(out) if out is not None else Path("data/raw") / name
        src = extract_once(archive, dest / name, digest)
        report = import_pairs(src, raw_dir, fmt="aligned", data=data, name=name)
        counts = dict(report.counts)
        if version:
            from p2p.data.versioning import version_dataset

            data_version = version_dataset(raw_dir.resolve(), remote=remote, repo=repo).md5
    return Download(
        name=name,
        url=url,
        archive=archive,
        size=size,
        sha256=digest,
        direction=spec.direction,
        raw_dir=raw_dir,
        counts=counts,
        resumed_from=resumed_from,
        cached=cached,
        data_version=data_version,
    )


# ----------------------------------------------------------------------------- download


def _fetch(url: str, archive: Path, spec: DatasetSpec) -> int:
    """Download `url` to `archive` via `archive.part`, resuming it; returns the bytes the
    .part file already held."""
    part = archive.with_name(archive.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "p2p"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=TIMEOUT_S)  # noqa: S310 - http(s) URL only
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the .part file may be complete
            total = _range_total(e.headers.get("Content-Range"))
            if total == have:
                part.replace(archive)
                return have
            part.unlink()  # the server's file shrank or changed: start over next time
        hint = f" ({spec.note})" if e.code == 404 and spec.note else ""
        raise DataError(f"{url}: HTTP {e.code} {e.reason}{hint}") from None
    except (urllib.error.URLError, OSError) as e:
        raise DataError(f"{url}: cannot connect ({getattr(e, 'reason', e)})") from None
    with resp:
        if have and resp.status == 206:
            start = _range_start(resp.headers.get("Content-Range"))
            if start != have:
                raise DataError(f"{url}: server resumed at byte {start}, expected {have}")
            total = _range_total(resp.headers.get("Content-Range"))
            mode = "ab"
        else:  # 200: the whole file (no Range support, or nothing to resume)
            if have:
                log.info("%s: server ignored the Range request; downloading from the start", url)
            have, mode = 0, "wb"
            total = _int(resp.headers.get("Content-Length"))
        got = have
        try:
            with open(part, mode) as f:
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
                    got += len(chunk)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, http.client.HTTPException) as e:  # connection dropped mid-transfer
            raise DataError(
                f"{url}: download interrupted at {got} bytes ({e}); run it again to resume "
                f"from {part}"
            ) from None
    if total is not None and got != total:
        raise DataError(
            f"{url}: download interrupted at {got} of {total} bytes; run it again to resume "
            f"from {part}"
        )
    part.replace(archive)
    return have


def _int(v: str | None) -> int | None:
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def _range_start(content_range: str | None) -> int | None:
    # "bytes 100-199/200"
    try:
        return int(content_range.split()[1].split("-")[0])  # type: ignore[union-attr]
    except (AttributeError, IndexError, ValueError):
        return None


def _range_total(content_range: str | None) -> int | None:
    try:
        return int(content_range.rsplit("/", 1)[1])  # type: ignore[union-attr]
    except (AttributeError, IndexError, ValueError):
        return None


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
        int(doc["size"]), str(doc["sha256"])
        return doc
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(
            f"{path}: unreadable download record ({e}); delete it to re-record"
        ) from None


def _check(
    archive: Path, spec: DatasetSpec, recorded: dict[str, Any] | None, size: int, digest: str
) -> None:
    """The measured size/sha256 against the registry (where known) and the sidecar."""
    for what, want in (("registry", spec), ("recorded download", recorded)):
        if want is None:
            continue
        w_size = want.size if isinstance(want, DatasetSpec) else want.get("size")
        w_sha = want.sha256 if isinstance(want, DatasetSpec) else want.get("sha256")
        if w_size is not None and int(w_size) != size:
            raise DataError(f"{archive}: {size} bytes, but the {what} says {w_size}")
        if w_sha is not None and w_sha != digest:
            raise DataError(f"{archive}: sha256 {digest}, but the {what} says {w_sha}")


# ----------------------------------------------------------------------------- extract

EXTRACTED_MARK = ".p2p-extracted"  # in the extracted folder: the sha256 of its archive


def extract_once(archive: Path, folder: Path, digest: str) -> Path:
    """The archive's dataset folder at `folder` (DEST/NAME, the `data.source` of the recipes),
    extracted safely into a temp dir and renamed into place; kept and re-used while it was
    extracted from an archive with this sha256."""
    mark = folder / EXTRACTED_MARK
    if mark.exists() and mark.read_text().strip() == digest:
        return folder
    with tempfile.TemporaryDirectory(prefix=f".{folder.name}-", dir=folder.parent) as tmp:
        root = safe_extract(archive, Path(tmp) / "x")
        (root / EXTRACTED_MARK).write_text(digest + "\n")
        if folder.exists():
            old = Path(tmp) / "old"
            folder.rename(old)  # removed with the temp dir
        root.rename(folder)
    return folder


def safe_extract(archive: str | Path, dest: str | Path) -> Path:
    """Extract a dataset tarball into `dest` after checking every member; returns the one
    top-level folder (the dataset root).

    Raises:
        DataError: naming the member: an absolute path, `..`, a symlink or hard link, a
            device or fifo, or an archive that is not a readable tar.gz.
    """
    archive, dest = Path(archive), Path(dest)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                _check_member(archive, m)
            # second guard: tarfile's own "data" filter refuses the same and more
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{archive}: cannot extract ({e})") from None
    tops = {PurePosixPath(m.name).parts[0] for m in members if PurePosixPath(m.name).parts}
    tops.discard(".")
    if len(tops) == 1 and (dest / next(iter(tops))).is_dir():
        return dest / next(iter(tops))
    return dest


def _check_member(archive: Path, m: tarfile.TarInfo) -> None:
    p = PurePosixPath(m.name)
    if p.is_absolute() or m.name.startswith(("/", "\\")) or ".." in p.parts:
        raise DataError(f"{archive}: unsafe member {m.name!r} (path outside the archive root)")
    if not (m.isreg() or m.isdir()):
        kind = "link" if (m.issym() or m.islnk()) else "special file"
        raise DataError(f"{archive}: unsafe member {m.name!r} ({kind}; only files and folders)")
