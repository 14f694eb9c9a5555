"""Canonical paired datasets: layout, manifest, import, validation and a local reader.

The canonical raw layout (what `p2p data import|build|demo` write, what shards read):

    data/raw/NAME/
      A/<split>/<key>.png        split in train | val | test; keys have no dots
      B/<split>/<key>.png        the partner of A/<split>/<key>.png, same size
      manifest.json              {"format_version": 1, "name", "pairs": [{"key", "split", "a", "b",
                                  "a_size": [w, h], "b_size": [w, h], "a_sha256", "b_sha256"}],
                                  "counts": {split: n}}  (paths relative to the dataset dir)
      report.json                what was skipped and why, warnings (no timestamps)

Source layouts `import_pairs` accepts:

- "aligned" (the reference pix2pix layout): `SRC/{train,val,test}/**/*.jpg|png|...`, each file
  holds A | B side by side; A is the left half, split at w // 2 (odd widths are rejected).
  Files directly in SRC or in other top-level folders (README...) are ignored and reported.
- "folders": `SRC/A/` and `SRC/B/` with matching names. Either both have split subfolders
  (`A/train/x.jpg` + `B/train/x.png`), or both are flat (`A/x.jpg` + `B/x.png`). Partners are
  matched by key (the sanitised path without extension), so A may be JPEG and B PNG.
Without split folders (flat aligned or flat folders) pairs are split by the seeded
`val_fraction` / `test_fraction` (default: everything in train).

Keys are the file path below the split folder without extension, with every character other than
[A-Za-z0-9_-] replaced by "_" (so "a b.v2.jpg" -> "a_b_v2"). Two files giving the same key in one
split are both rejected as duplicates. Hidden files and folders (".*") are ignored.

Validation (during import and `validate_dataset`) rejects: unreadable, corrupt or truncated
images; non-image files; A/B size mismatch; odd aligned widths; aligned images whose half shape
differs from the dataset's usual shape (A|B not side by side; `check_aspect=False` allows mixed
shapes); missing partners; wrong channel counts (policy in `p2p.data.images`); duplicate keys;
an empty train split. Empty val/test splits are warnings. With on_error="fail" every offending
file is listed in one DataError and nothing is written; with "skip" only good pairs are written
and report.json lists the rest. Output goes to a temp dir beside `out` and is renamed into
place; an existing dataset at `out` is replaced only once the new one is complete and valid.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import random
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from p2p.atomic import swap_dir_into_place
from p2p.config import DataConfig
from p2p.data.images import encode_png, is_image_file, open_image, to_channels
from p2p.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REPORT = "report.json"
_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]")
_ASPECT_TOL = 0.02  # relative difference of half-image aspect ratios treated as "the same shape"


# ----------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class Pair:
    """One canonical pair. `a` and `b` are absolute paths; sizes are (width, height)."""

    key: str
    split: str
    a: Path
    b: Path
    a_size: tuple[int, int]
    b_size: tuple[int, int]
    a_sha256: str
    b_sha256: str

    def to_json(self, root: Path) -> dict[str, Any]:
        return {
            "key": self.key,
            "split": self.split,
            "a": self.a.relative_to(root).as_posix(),
            "b": self.b.relative_to(root).as_posix(),
            "a_size": list(self.a_size),
            "b_size": list(self.b_size),
            "a_sha256": self.a_sha256,
            "b_sha256": self.b_sha256,
        }


@dataclass(frozen=True)
class Manifest:
    """A canonical dataset: `manifest.pairs("train")` lists the train pairs in key order."""

    root: Path
    name: str
    entries: tuple[Pair, ...]

    def pairs(self, split: str | None = None) -> list[Pair]:
        """Pairs of one split (or all, in split then key order)."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        return [p for p in self.entries if split is None or p.split == split]

    @property
    def counts(self) -> dict[str, int]:
        c = collections.Counter(p.split for p in self.entries)
        return {s: c.get(s, 0) for s in SPLITS}

    def __len__(self) -> int:
        return len(self.entries)

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "pairs": [p.to_json(self.root) for p in self.entries],
            "counts": self.counts,
        }


def load_manifest(raw_dir: str | Path) -> Manifest:
    """Read `raw_dir/manifest.json` (checks its structure, not the image files).

    Raises:
        DataError: no manifest, invalid JSON, unknown format version or a malformed entry.
    """
    root = Path(raw_dir)
    path = root / MANIFEST
    if not path.is_file():
        raise DataError(
            f"{root}: not a p2p dataset (no {MANIFEST}); create one with "
            "`p2p data import`, `p2p data build` or `p2p data demo`"
        )
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format_version") != FORMAT_VERSION:
        got = doc.get("format_version") if isinstance(doc, dict) else None
        raise DataError(f"{path}: format_version {got!r} is not {FORMAT_VERSION}")
    root_abs = root.resolve()
    entries = []
    for i, e in enumerate(doc.get("pairs") or []):
        try:
            split, key = e["split"], e["key"]
            if split not in SPLITS:
                raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
            if not key or _KEY_BAD.search(key):
                raise ValueError(f"key {key!r} has characters other than [A-Za-z0-9_-]")
            a, b = (_inside(root_abs, e[s]) for s in ("a", "b"))
            entries.append(
                Pair(
                    key=key,
                    split=split,
                    a=a,
                    b=b,
                    a_size=_size(e["a_size"]),
                    b_size=_size(e["b_size"]),
                    a_sha256=str(e["a_sha256"]),
                    b_sha256=str(e["b_sha256"]),
                )
            )
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{path}: pair #{i} is malformed ({err})") from None
    return Manifest(root=root_abs, name=str(doc.get("name", root.name)), entries=tuple(entries))


def _inside(root: Path, rel: str) -> Path:
    p = (root / rel).resolve()
    if not str(rel) or Path(rel).is_absolute() or not p.is_relative_to(root):
        raise ValueError(f"path {rel!r} is not inside the dataset")
    return p


def _size(v: Any) -> tuple[int, int]:
    w, h = (int(x) for x in v)
    return (w, h)


# ----------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class Problem:
    """One offending file and why (`file` is the path as the user knows it)."""

    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


class InvalidDataset(DataError):
    """Validation failed; `.problems` lists every offending file. The message names them all."""

    def __init__(self, where: str, problems: list[Problem], note: str = "") -> None:
        self.problems = list(problems)
        tail = f" ({note})" if note else ""
        if len(self.problems) == 1:
            msg = f"{self.problems[0]}{tail}"
        else:
            lines = "\n".join(f"  {p}" for p in self.problems)
            msg = f"{len(self.problems)} problems in {where}{tail}:\n{lines}"
        super().__init__(msg)


@dataclass
class ValidationReport:
    """What `validate_dataset` found: good pair counts per split, problems, warnings."""

    path: Path
    kind: str  # "canonical" | "aligned" | "folders"
    counts: dict[str, int]
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_bad(self) -> None:
        if self.problems:
            raise InvalidDataset(str(self.path), self.problems)


@dataclass
class ImportReport:
    """What import/build wrote: per-split counts, skipped files, size, time."""

    out: Path
    name: str
    counts: dict[str, int]
    skipped: list[Problem]
    warnings: list[str]
    bytes: int
    seconds: float

    @property
    def num_pairs(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        counts = ", ".join(f"{s} {n}" for s, n in self.counts.items())
        lines = [
            f"wrote {self.num_pairs} pairs ({counts}) to {self.out}: "
            f"{self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s"
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} file(s) (see {self.out / REPORT}):")
            lines += [f"  {p}" for p in self.skipped]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- keys, splits


def sanitize_key(stem: str) -> str:
    """A key from a file path without extension: [A-Za-z0-9_-] only ("a b.v2" -> "a_b_v2")."""
    return _KEY_BAD.sub("_", stem) or "_"


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) sizes for n items; a non-zero fraction gets >= 1 item when n >= 3."""
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    if n >= 3:
        n_val = max(n_val, 1 if val_fraction > 0 else 0)
        n_test = max(n_test, 1 if test_fraction > 0 else 0)
    while n_val + n_test >= n and (n_val or n_test):  # train keeps at least one item
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n - n_val - n_test, n_val, n_test


def assign_splits(
    keys: Iterable[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, str]:
    """Seeded split of keys: the same keys, fractions and seed always give the same split."""
    order = sorted(keys)
    random.Random(seed).shuffle(order)
    _, n_val, n_test = split_counts(len(order), val_fraction, test_fraction)
    out = {k: "test" for k in order[:n_test]}
    out.update({k: "val" for k in order[n_test : n_test + n_val]})
    out.update({k: "train" for k in order[n_test + n_val :]})
    return out


def side_channels(data: DataConfig) -> tuple[int, int]:
    """Channels of the A and B sides: the input side has input_nc (A for AtoB, B for BtoA)."""
    if data.direction == "AtoB":
        return data.input_nc, data.output_nc
    return data.output_nc, data.input_nc


# ----------------------------------------------------------------------------- writer


class DatasetWriter:
    """Writes a canonical dataset into a temp dir beside `out`, then renames it into place.

    Usage: `w.add(key, split, a, b)` for each pair, then `w.commit(...)` (validates the temp dir
    fully, then swaps it in) or `w.abort()`. Also a context manager that aborts on error.
    """

    def __init__(self, out: str | Path, name: str) -> None:
        self.out = Path(out) if Path(out).name else Path(out).resolve()  # "." has no name
        self.name = name
        _recover_leftovers(self.out)
        _check_replaceable(self.out)
        missing = [d for d in self.out.absolute().parents if not d.exists()]
        self._made = missing[::-1]  # parent folders this writer creates, outermost first
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out.parent / f".{self.out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir()
        self._pairs: dict[tuple[str, str], Pair] = {}
        self.bytes = 0

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp.exists():
            self.abort()

    def add(self, key: str, split: str, a: Image.Image, b: Image.Image) -> None:
        """Encode one pair as PNG and add it (A and B must have the same size)."""
        self.add_png(key, split, encode_png(a), encode_png(b), a.size, b.size)

    def add_png(
        self,
        key: str,
        split: str,
        a_png: bytes,
        b_png: bytes,
        a_size: tuple[int, int],
        b_size: tuple[int, int],
    ) -> None:
        """Add one pair already encoded with `encode_png` (sizes are (width, height))."""
        if split not in SPLITS or not key or _KEY_BAD.search(key):
            raise ValueError(f"bad split/key {split!r}/{key!r}")
        if (split, key) in self._pairs:
            raise ValueError(f"duplicate key {key!r} in split {split}")
        if a_size != b_size:
            raise ValueError(f"{split}/{key}: A is {a_size} but B is {b_size}")
        files = []
        for side, blob in (("A", a_png), ("B", b_png)):
            path = self.tmp / side / split / f"{key}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
            self.bytes += len(blob)
            files.append((path, hashlib.sha256(blob).hexdigest()))
        (pa, ha), (pb, hb) = files
        self._pairs[(split, key)] = Pair(key, split, pa, pb, a_size, b_size, ha, hb)

    @property
    def counts(self) -> dict[str, int]:
        c = collections.Counter(s for s, _ in self._pairs)
        return {s: c.get(s, 0) for s in SPLITS}

    def commit(self, *, data: DataConfig, report: dict[str, Any], warnings: list[str]) -> Manifest:
        """Write manifest.json + report.json, validate the temp dir, rename it onto `out`."""
        order = sorted(self._pairs, key=lambda sk: (SPLITS.index(sk[0]), sk[1]))
        manifest = Manifest(self.tmp, self.name, tuple(self._pairs[sk] for sk in order))
        _write_manifest(self.tmp / MANIFEST, manifest)
        _write_json(
            self.tmp / REPORT,
            {"format_version": FORMAT_VERSION, "name": self.name, "counts": manifest.counts}
            | report
            | {"warnings": warnings},
        )
        # Validate what was written before it replaces anything (decodes every file again).
        check = validate_dataset(self.tmp, data=data)
        if not check.ok:
            raise InvalidDataset(str(self.out), check.problems, "output failed validation")
        swap_dir_into_place(self.tmp, self.out)
        return load_manifest(self.out)

    def abort(self) -> None:
        """Remove the temp dir, and the parent folders this writer made if they are empty."""
        shutil.rmtree(self.tmp, ignore_errors=True)
        for d in reversed(self._made):
            try:
                d.rmdir()
            except OSError:
                break  # not empty (or gone): leave it


def _write_manifest(path: Path, manifest: Manifest) -> None:
    """manifest.json with one pair per line: readable, diffable, byte-deterministic."""
    doc = manifest.to_json()
    pairs = ",\n".join("  " + json.dumps(p, ensure_ascii=False) for p in doc["pairs"])
    path.write_text(
        "{\n"
        f' "format_version": {doc["format_version"]},\n'
        f' "name": {json.dumps(doc["name"], ensure_ascii=False)},\n'
        f' "counts": {json.dumps(doc["counts"])},\n'
        f' "pairs": [\n{pairs}\n ]\n'
        "}\n"
    )


def _write_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


def _check_replaceable(out: Path) -> None:
    """Refuse to clobber something that is not a p2p dataset (a photo folder given as --out)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise DataError(f"{out}: exists and is not a directory; refusing to replace it")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise DataError(
            f"{out}: exists, is not empty and is not a p2p dataset (no {MANIFEST}); "
            "refusing to replace it"
        )


def _recover_leftovers(out: Path) -> None:
    """Tidy up after a writer that was killed: drop its temp dir; if it died between the two
    renames of `swap_dir_into_place`, put the previous dataset back."""
    if not out.parent.is_dir():
        return
    for kind in ("old", "tmp"):
        for d in sorted(out.parent.glob(f".{out.name}.{kind}-*")):
            pid = d.name.split("-")[-2]
            if pid.isdigit() and _alive(int(pid)):
                continue  # another writer is working on it
            if kind == "old" and not out.exists():
                os.replace(d, out)
                log.warning("restored %s from %s (an earlier write was interrupted)", out, d)
            else:
                shutil.rmtree(d, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------- source scan


@dataclass
class _Candidate:
    """A would-be pair from a source layout (aligned: b_file is None)."""

    key: str
    split: str
    a_file: Path
    b_file: Path | None


@dataclass
class _Scan:
    root: Path
    kind: str
    candidates: list[_Candidate] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    splits_found: set[str] = field(default_factory=set)
    unsplit: bool = False  # no split folders: splits drawn by fraction

    def show(self, path: Path) -> str:
        return str(self.root / path.relative_to(self.root))

    def bad(self, path: Path, reason: str) -> None:
        self.problems.append(Problem(self.show(path), reason))


def walk_files(d: Path) -> Iterator[Path]:
    """Files under d, sorted, skipping hidden files and folders."""
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        for n in sorted(filenames):
            if not n.startswith("."):
                yield Path(dirpath) / n


def _keyed(scan: _Scan, files: Iterable[Path], base: Path, split: str) -> dict[str, Path]:
    """key -> file for the image files of one split; non-images and duplicates are problems."""
    groups: dict[str, list[Path]] = collections.defaultdict(list)
    for f in files:
        if not is_image_file(f):
            scan.bad(f, f"not an image file (extension {f.suffix or 'none'!r})")
            continue
        rel = f.relative_to(base).with_suffix("")
        groups[sanitize_key(rel.as_posix())].append(f)
    out = {}
    for key, fs in groups.items():
        if len(fs) == 1:
            out[key] = fs[0]
            continue
        for f in fs:
            others = ", ".join(g.relative_to(base).as_posix() for g in fs if g != f)
            scan.bad(f, f"duplicate key {key!r} in split {split} (also {others})")
    return out


def _scan_aligned(src: Path, fractions: tuple[float, float, int]) -> _Scan:
    scan = _Scan(src, "aligned")
    split_dirs = [s for s in SPLITS if (src / s).is_dir()]
    if split_dirs:
        for entry in sorted(src.iterdir()):
            if entry.name.startswith(".") or entry.name in split_dirs:
                continue
            scan.warnings.append(f"ignored {scan.show(entry)} (outside {'/ '.join(SPLITS)}/)")
        for split in split_dirs:
            scan.splits_found.add(split)
            for key, f in _keyed(scan, walk_files(src / split), src / split, split).items():
                scan.candidates.append(_Candidate(key, split, f, None))
    else:
        keyed = _keyed(scan, walk_files(src), src, "(unsplit)")
        splits = assign_splits(keyed, *fractions)
        scan.candidates = [_Candidate(k, splits[k], f, None) for k, f in keyed.items()]
        scan.unsplit = True
    return scan


def _scan_folders(src: Path, fractions: tuple[float, float, int]) -> _Scan:
    scan = _Scan(src, "folders")
    da, db = src / "A", src / "B"
    missing = [str(d) for d in (da, db) if not d.is_dir()]
    if missing:
        raise DataError(
            f"{' and '.join(missing)}: missing; the folders layout needs SRC/A and SRC/B"
        )
    split_mode = any((d / s).is_dir() for d in (da, db) for s in SPLITS)
    sides: dict[str, dict[str, dict[str, Path]]] = {}  # side -> split -> key -> file
    for side, d in (("A", da), ("B", db)):
        by_split: dict[str, list[Path]] = collections.defaultdict(list)
        for f in walk_files(d):
            top = f.relative_to(d).parts[0]
            if not split_mode:
                by_split[""].append(f)
            elif top in SPLITS and len(f.relative_to(d).parts) > 1:
                by_split[top].append(f)
            else:
                scan.bad(f, f"not under {side}/train, {side}/val or {side}/test")
        sides[side] = {
            s: _keyed(scan, fs, d / s if s else d, s or "(unsplit)") for s, fs in by_split.items()
        }
    splits = sorted(set(sides["A"]) | set(sides["B"]), key=lambda s: (s not in SPLITS, s))
    for split in splits:
        a_keys, b_keys = sides["A"].get(split, {}), sides["B"].get(split, {})
        sub = f"{split}/" if split else ""
        for key in sorted(set(a_keys) - set(b_keys)):
            scan.bad(a_keys[key], f"missing partner: no B/{sub}{key}.* image")
        for key in sorted(set(b_keys) - set(a_keys)):
            scan.bad(b_keys[key], f"missing partner: no A/{sub}{key}.* image")
        both = sorted(set(a_keys) & set(b_keys))
        if split:
            scan.splits_found.add(split)
            scan.candidates += [_Candidate(k, split, a_keys[k], b_keys[k]) for k in both]
        else:
            assigned = assign_splits(both, *fractions)
            scan.unsplit = True
            scan.candidates += [_Candidate(k, assigned[k], a_keys[k], b_keys[k]) for k in both]
    scan.candidates.sort(key=lambda c: (SPLITS.index(c.split), c.key))
    return scan


def _aspect_outliers(scan: _Scan) -> None:
    """Aligned: flag files whose half shape differs from the dataset's usual half shape.

    A|B files of one dataset share a shape (facades 512x256, maps 1200x600); a file whose
    halves have another aspect ratio was not made by putting A and B side by side.
    """
    ratios = {}
    for c in scan.candidates:
        try:
            with Image.open(c.a_file) as im:  # header only: cheap
                w, h = im.size
        except Exception:  # noqa: BLE001 - unreadable files are reported by the decode pass
            continue
        if w % 2 == 0 and h > 0:
            ratios[c.a_file] = (w / 2) / h
    if len(ratios) < 3:
        return
    common, n = collections.Counter(round(r, 2) for r in ratios.values()).most_common(1)[0]
    if n * 2 <= len(ratios):  # no clear majority: mixed shapes are this dataset's normal
        return
    keep = []
    for c in scan.candidates:
        r = ratios.get(c.a_file)
        if r is not None and abs(r - common) > _ASPECT_TOL * common:
            scan.bad(
                c.a_file,
                f"halves have aspect ratio {r:.2f} (w/2 : h) but {n} of {len(ratios)} files in "
                f"this dataset have {common:.2f}: not an A|B side-by-side pair "
                "(pass --allow-mixed-shapes if that is intended)",
            )
        else:
            keep.append(c)
    scan.candidates = keep


def _scan(src: Path, fmt: str, fractions: tuple[float, float, int], check_aspect: bool) -> _Scan:
    if not src.is_dir():
        raise DataError(f"{src}: source folder not found")
    if fmt == "aligned":
        scan = _scan_aligned(src, fractions)
        if check_aspect:
            _aspect_outliers(scan)
    elif fmt == "folders":
        scan = _scan_folders(src, fractions)
    else:
        raise ValueError(f"unknown source format {fmt!r} (aligned | folders)")
    return scan


def default_workers() -> int:
    """Threads for decode/encode: PIL releases the GIL while it (de)compresses."""
    return max(1, min(8, os.cpu_count() or 1))


def map_ordered(fn: Callable[[Any], Any], items: Iterable[Any], workers: int) -> Iterator[Any]:
    """`map(fn, items)` on a thread pool, results in input order, at most 2 * workers in flight."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        window: collections.deque = collections.deque()
        for item in items:
            window.append(pool.submit(fn, item))
            if len(window) >= 2 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def _check_candidate(
    scan: _Scan, c: _Candidate, data: DataConfig, encode: bool
) -> tuple[list[Problem], bool, tuple | None]:
    """Decode and check one candidate: (problems, converted?, (a, b) or PNG bytes + sizes)."""
    a_nc, b_nc = side_channels(data)
    local = _Scan(scan.root, scan.kind)  # per-call problem list: threads never share one
    notes: list[str] = []
    if c.b_file is None:
        pair = _decode_aligned(local, c.a_file, a_nc, b_nc, notes)
    else:
        pair = _decode_folder_pair(local, c, a_nc, b_nc, notes)
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


def _decode_pairs(
    scan: _Scan, data: DataConfig, *, encode: bool = False, workers: int = 1
) -> Iterator[tuple[_Candidate, tuple]]:
    """Check every candidate (in a thread pool); yield (candidate, pair) for the good ones and
    record problems for the rest, in candidate order (so reports are deterministic)."""
    converted = 0
    results = map_ordered(
        lambda c: _check_candidate(scan, c, data, encode), scan.candidates, workers
    )
    for i, (c, (problems, conv, pair)) in enumerate(zip(scan.candidates, results, strict=True)):
        if i and i % 500 == 0:
            log.info("checked %d / %d pairs", i, len(scan.candidates))
        scan.problems += problems
        converted += conv and pair is not None
        if pair is not None:
            yield c, pair
    if converted:
        a_nc, b_nc = side_channels(data)
        scan.warnings.append(
            f"{converted} pair(s) had grayscale/palette/opaque-alpha/16-bit images converted "
            f"to {a_nc}/{b_nc} channels (A/B)"
        )


def _decode_aligned(
    scan: _Scan, f: Path, a_nc: int, b_nc: int, notes: list[str]
) -> tuple[Image.Image, Image.Image] | None:
    name = scan.show(f)
    try:
        img = open_image(f, name=name, channels=max(a_nc, b_nc), notes=notes)
        w, h = img.size
        if w % 2:
            raise DataError(f"{name}: odd width {w}: cannot split into equal A | B halves")
        a = img.crop((0, 0, w // 2, h))  # A = left half
        b = img.crop((w // 2, 0, w, h))  # B = right half
        a = to_channels(a, name=f"{name} (left half, A)", channels=a_nc)
        b = to_channels(b, name=f"{name} (right half, B)", channels=b_nc)
    except DataError as e:
        scan.bad(f, _reason(e, name))
        return None
    return a, b


def _decode_folder_pair(
    scan: _Scan, c: _Candidate, a_nc: int, b_nc: int, notes: list[str]
) -> tuple[Image.Image, Image.Image] | None:
    imgs = []
    for f, nc in ((c.a_file, a_nc), (c.b_file, b_nc)):
        name = scan.show(f)
        try:
            imgs.append(open_image(f, name=name, channels=nc, notes=notes))
        except DataError as e:
            scan.bad(f, _reason(e, name))
    if len(imgs) < 2:
        return None
    a, b = imgs
    if a.size != b.size:
        scan.bad(
            c.b_file,
            f"size {b.size[0]}x{b.size[1]} does not match its partner "
            f"{scan.show(c.a_file)} ({a.size[0]}x{a.size[1]})",
        )
        return None
    return a, b


def _reason(e: DataError, name: str) -> str:
    msg = str(e)
    return msg[len(name) + 2 :] if msg.startswith(f"{name}: ") else msg


def _empty_splits(scan: _Scan, counts: dict[str, int]) -> None:
    """Train must have pairs (a problem otherwise); empty val/test are warnings."""
    aligned_split = scan.kind == "aligned" and not scan.unsplit
    if counts.get("train", 0) == 0:
        where = scan.root / "train" if aligned_split else scan.root
        scan.problems.append(Problem(str(where), "train split is empty (no valid pairs)"))
    for s in ("val", "test"):
        if counts.get(s, 0) == 0:
            if scan.kind == "canonical":
                why = "no pairs in the manifest"
            elif scan.unsplit:
                why = "no split folders; its fraction is 0 or there are too few pairs"
            else:
                why = "folder has no valid pairs" if s in scan.splits_found else "no such folder"
            scan.warnings.append(f"{s} split is empty ({why})")


# ----------------------------------------------------------------------------- import


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
        val_fraction, test_fraction, seed: the split of a source without split folders.
        check_aspect: aligned only; reject files whose halves are shaped unlike the rest.
        workers: decode/encode threads (default: `default_workers()`).

    Returns:
        An ImportReport (counts per split, skipped files, bytes, seconds).

    Raises:
        InvalidDataset (a DataError): problems with on_error="fail", or no train pairs left.
    """
    t0 = time.perf_counter()
    src, out = Path(src), Path(out)
    workers = workers or default_workers()
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be fail or skip, got {on_error!r}")
    _check_not_nested(src, out)
    scan = _scan(src, fmt, (val_fraction, test_fraction, seed), check_aspect)
    log.info("%s: %d candidate pairs (%s layout)", src, len(scan.candidates), fmt)
    good: collections.Counter[str] = collections.Counter()
    with DatasetWriter(out, name or out.name) as writer:
        for c, pair in _decode_pairs(scan, data, encode=True, workers=workers):
            good[c.split] += 1
            if on_error == "skip" or not scan.problems:
                writer.add_png(c.key, c.split, *pair)  # "fail": stop writing at the 1st problem
        _empty_splits(scan, good)
        scan.problems.sort(key=lambda p: p.file)
        if scan.problems and (on_error == "fail" or not good["train"]):
            raise InvalidDataset(str(src), scan.problems, "nothing written")
        writer.commit(
            data=data,
            report={
                "source": str(src),
                "source_format": fmt,
                "skipped": [{"file": p.file, "reason": p.reason} for p in scan.problems],
            },
            warnings=scan.warnings,
        )
        report = ImportReport(
            out=out,
            name=writer.name,
            counts=writer.counts,
            skipped=list(scan.problems),
            warnings=scan.warnings,
            bytes=writer.bytes,
            seconds=time.perf_counter() - t0,
        )
    log.debug(report.summary())
    return report


def _check_not_nested(src: Path, out: Path) -> None:
    s, o = src.resolve(), out.resolve()
    if s == o or s.is_relative_to(o) or o.is_relative_to(s):
        raise DataError(f"{out}: --out must be outside --src ({src}) and not contain it")


# ----------------------------------------------------------------------------- validation


def validate_dataset(
    path: str | Path,
    *,
    data: DataConfig | None = None,
    fmt: Literal["aligned", "folders"] | None = None,
    check_hashes: bool = True,
    check_aspect: bool = True,
    val_fraction: float = 0.0,
    test_fraction: float = 0.0,
    seed: int = 0,
    workers: int | None = None,
) -> ValidationReport:
    """Check a canonical dataset (has manifest.json) or a source layout, decoding every image.

    Args:
        path: a canonical dataset dir, or an aligned / folders source dir.
        data: channel counts and direction to check against (default: DataConfig()).
        fmt: source layout; default: "folders" if path has A/ and B/, else "aligned".
        check_hashes: canonical only; compare files with the manifest's sha256.
        check_aspect, val_fraction, test_fraction, seed, workers: as in `import_pairs`.

    Returns:
        A ValidationReport; `.ok` is False when any file is bad (`.problems` names each one).
    """
    path = Path(path)
    data = data or DataConfig()
    if (path / MANIFEST).is_file():
        return _validate_canonical(path, data, check_hashes, workers or default_workers())
    if fmt is None:
        fmt = "folders" if (path / "A").is_dir() and (path / "B").is_dir() else "aligned"
    scan = _scan(path, fmt, (val_fraction, test_fraction, seed), check_aspect)
    checked = _decode_pairs(scan, data, workers=workers or default_workers())
    counts = collections.Counter(c.split for c, _ in checked)
    _empty_splits(scan, counts)
    scan.problems.sort(key=lambda p: p.file)
    return ValidationReport(
        path, fmt, {s: counts.get(s, 0) for s in SPLITS}, scan.problems, scan.warnings
    )


def _validate_canonical(
    root: Path, data: DataConfig, check_hashes: bool, workers: int
) -> ValidationReport:
    report = ValidationReport(root, "canonical", {s: 0 for s in SPLITS})
    try:
        m = load_manifest(root)
    except DataError as e:
        report.problems.append(Problem(str(root / MANIFEST), _reason(e, str(root / MANIFEST))))
        return report

    def show(f: Path) -> str:
        return str(root / f.relative_to(m.root))

    a_nc, b_nc = side_channels(data)

    def check(p: Pair) -> list[Problem]:
        """Problems of one manifest entry: location, presence, hash, decode, sizes."""
        problems, sizes = [], []
        for side, f, size, sha, nc in (
            ("A", p.a, p.a_size, p.a_sha256, a_nc),
            ("B", p.b, p.b_size, p.b_sha256, b_nc),
        ):
            if f != m.root / side / p.split / f"{p.key}.png":
                problems.append(Problem(show(f), f"not at {side}/{p.split}/{p.key}.png"))
                continue
            try:
                blob = f.read_bytes()
            except OSError:
                problems.append(Problem(show(f), f"listed in {MANIFEST} but missing"))
                continue
            if check_hashes and hashlib.sha256(blob).hexdigest() != sha:
                problems.append(Problem(show(f), f"sha256 differs from {MANIFEST} (file changed)"))
            try:
                img = open_image(blob, name=show(f), channels=nc)
            except DataError as e:
                problems.append(Problem(show(f), _reason(e, show(f))))
                continue
            if img.size != size:
                problems.append(Problem(show(f), f"size {img.size} differs from {MANIFEST}"))
            sizes.append(img.size)
        if not problems and sizes[0] != sizes[1]:
            problems.append(Problem(show(p.b), f"size {sizes[1]} differs from A {sizes[0]}"))
        return problems

    seen: set[tuple[str, str]] = set()
    unique = []
    for p in m.entries:
        if (p.split, p.key) in seen:
            report.problems.append(Problem(show(p.a), f"duplicate key {p.key!r} in {MANIFEST}"))
        else:
            seen.add((p.split, p.key))
            unique.append(p)
    for p, problems in zip(unique, map_ordered(check, unique, workers), strict=True):
        report.problems += problems
        report.counts[p.split] += not problems
    listed = {f for p in m.entries for f in (p.a, p.b)}
    for side in ("A", "B"):
        if (m.root / side).is_dir():
            for f in walk_files(m.root / side):
                if f not in listed:
                    report.problems.append(Problem(show(f), f"not listed in {MANIFEST}"))
    scan = _Scan(m.root, "canonical")
    _empty_splits(scan, report.counts)
    report.problems += [Problem(str(root), p.reason) for p in scan.problems]
    report.warnings += scan.warnings
    return report


# ----------------------------------------------------------------------------- local reader


class PairedImageDataset:
    """Map-style dataset over a canonical raw dir: item i -> (real_a, real_b) tensors.

    `direction` is applied here: AtoB gives (A, B), BtoA gives (B, A), i.e. always
    (input, target), each (C, H, W) float32 in [-1, 1]. For single-process use and the loader
    benchmark; training streams shards instead (`p2p.data.dataset.make_loader`).

    Args:
        root: canonical dataset dir.
        split: "train", "val" or "test".
        data: the data config (direction, channels, preprocess sizes).
        train: random crop/flip (train) or deterministic resize (eval).
        seed: if set, item i of epoch e always gets the same crop/flip (see `set_epoch`);
            otherwise the `random` module draws them (seeded per DataLoader worker by torch).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        data: DataConfig,
        train: bool,
        *,
        seed: int | None = None,
    ) -> None:
        from p2p.data.transforms import PairedTransform  # imports torch

        self.manifest = load_manifest(root)
        self.items = self.manifest.pairs(split)
        if not self.items:
            raise DataError(f"{root}: split {split!r} has no pairs")
        self.data = data
        self.transform = PairedTransform(data, train)
        self.seed = seed
        self.epoch = 0
        self._a_nc, self._b_nc = side_channels(data)

    def set_epoch(self, epoch: int) -> None:
        """New crops/flips per epoch when a seed is set."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        p = self.items[i]
        a = open_image(p.a, name=str(p.a), channels=self._a_nc)
        b = open_image(p.b, name=str(p.b), channels=self._b_nc)
        inp, tgt = (a, b) if self.data.direction == "AtoB" else (b, a)
        rng = None if self.seed is None else random.Random(f"{self.seed}:{self.epoch}:{i}")
        return self.transform(inp, tgt, rng)
