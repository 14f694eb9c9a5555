"""Scan a source layout into candidate pairs (no decoding; `importer` decodes them).

Source layouts:

- "aligned" (the reference pix2pix layout): `SRC/{train,val,test}/**/*.jpg|png|...`, each file
  holds A | B side by side; A is the left half, split at w // 2 (odd widths are rejected).
  Files directly in SRC or in other top-level folders (README...) are ignored and reported.
- "folders": `SRC/A/` and `SRC/B/` with matching names. Either both have split subfolders
  (`A/train/x.jpg` + `B/train/x.png`), or both are flat (`A/x.jpg` + `B/x.png`). Partners are
  matched by key, so A may be JPEG and B PNG.
Without split folders each pair's split is `manifest.split_of(key, val, test, seed)`.
The wrong --format for a layout is detected (A/ + B/ given as aligned, and the converse).

Keys are the file path below the split folder without extension, with every character other than
[A-Za-z0-9_-] replaced by "_" (so "a b.v2.jpg" -> "a_b_v2"). Two files giving the same key in one
split are both rejected as duplicates, and so are keys that differ only by case ("Dup", "dup":
they collide on case-insensitive filesystems). Hidden files and folders (".*") are ignored.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from p2p.data.images import is_image_file
from p2p.data.manifest import SPLITS, sanitize_key, split_of
from p2p.data.reports import Problem
from p2p.errors import DataError

_ASPECT_TOL = 0.02  # relative difference of half-image aspect ratios treated as "the same shape"


@dataclass
class Candidate:
    """A would-be pair from a source layout (aligned: b_file is None)."""

    key: str
    split: str
    a_file: Path
    b_file: Path | None


@dataclass
class Scan:
    root: Path
    kind: str
    candidates: list[Candidate] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    splits_found: set[str] = field(default_factory=set)
    unsplit: bool = False  # no split folders: splits drawn by `split_of`

    def show(self, path: Path) -> str:
        return str(self.root / path.relative_to(self.root))

    def bad(self, path: Path, reason: str) -> None:
        self.problems.append(Problem(self.show(path), reason))


Fractions = tuple[float, float, int]  # val_fraction, test_fraction, seed


def scan(src: Path, fmt: str, fractions: Fractions) -> Scan:
    """Candidate pairs of `src` in layout `fmt`, with the problems found without opening files
    (the aspect check of aligned files, `aspect_outliers`, runs on the decoded sizes)."""
    if not src.is_dir():
        raise DataError(f"{src}: source folder not found")
    if fmt == "aligned":
        return _scan_aligned(src, fractions)
    if fmt == "folders":
        return _scan_folders(src, fractions)
    raise ValueError(f"unknown source format {fmt!r} (aligned | folders)")


def walk_files(d: Path) -> Iterator[Path]:
    """Files under d, sorted, skipping hidden files and folders."""
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        for n in sorted(filenames):
            if not n.startswith("."):
                yield Path(dirpath) / n


def _keyed(scan: Scan, files: Iterable[Path], base: Path, split: str) -> dict[str, Path]:
    """key -> file for the image files of one split; non-images, duplicate keys and keys that
    differ only by case are problems."""
    groups: dict[str, list[tuple[str, Path]]] = collections.defaultdict(list)
    for f in files:
        if not is_image_file(f):
            scan.bad(f, f"not an image file (extension {f.suffix or 'none'!r})")
            continue
        key = sanitize_key(f.relative_to(base).with_suffix("").as_posix())
        groups[key.lower()].append((key, f))
    where = f" in split {split}" if split in SPLITS else ""
    out = {}
    for members in groups.values():
        if len(members) == 1:
            key, f = members[0]
            out[key] = f
            continue
        for key, f in members:
            others = ", ".join(g.relative_to(base).as_posix() for _, g in members if g != f)
            if all(k == key for k, _ in members):
                scan.bad(f, f"duplicate key {key!r}{where} (also {others})")
            else:
                scan.bad(
                    f,
                    f"key {key!r} differs only by case from {others}{where} "
                    "(they collide on case-insensitive filesystems): rename one",
                )
    return out


def _scan_aligned(src: Path, fractions: Fractions) -> Scan:
    result = Scan(src, "aligned")
    split_dirs = [s for s in SPLITS if (src / s).is_dir()]
    if not split_dirs and (src / "A").is_dir() and (src / "B").is_dir():
        raise DataError(
            f"{src}: has A/ and B/ folders, the folders layout (A and B as separate files): "
            "use --format folders (aligned means A|B side by side in one file)"
        )
    if split_dirs:
        for entry in sorted(src.iterdir()):
            if entry.name.startswith(".") or entry.name in split_dirs:
                continue
            result.warnings.append(f"ignored {result.show(entry)} (outside {'/ '.join(SPLITS)}/)")
        for split in split_dirs:
            result.splits_found.add(split)
            for key, f in _keyed(result, walk_files(src / split), src / split, split).items():
                result.candidates.append(Candidate(key, split, f, None))
    else:
        keyed = _keyed(result, walk_files(src), src, "(unsplit)")
        result.candidates = [
            Candidate(k, split_of(k, *fractions), f, None) for k, f in keyed.items()
        ]
        result.unsplit = True
    return result


def _scan_folders(src: Path, fractions: Fractions) -> Scan:
    result = Scan(src, "folders")
    da, db = src / "A", src / "B"
    missing = [str(d) for d in (da, db) if not d.is_dir()]
    if missing:
        hint = ""
        if any((src / s).is_dir() for s in SPLITS):
            hint = (
                f" ({src} has {'/ '.join(s for s in SPLITS if (src / s).is_dir())}/ folders: "
                "if its files hold A|B side by side, use --format aligned)"
            )
        raise DataError(
            f"{' and '.join(missing)}: missing; the folders layout needs SRC/A and SRC/B{hint}"
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
                result.bad(f, f"not under {side}/train, {side}/val or {side}/test")
        sides[side] = {
            s: _keyed(result, fs, d / s if s else d, s or "(unsplit)") for s, fs in by_split.items()
        }
    splits = sorted(set(sides["A"]) | set(sides["B"]), key=lambda s: (s not in SPLITS, s))
    for split in splits:
        a_keys, b_keys = sides["A"].get(split, {}), sides["B"].get(split, {})
        sub = f"{split}/" if split else ""
        for key in sorted(set(a_keys) - set(b_keys)):
            result.bad(a_keys[key], f"missing partner: no B/{sub}{key}.* image")
        for key in sorted(set(b_keys) - set(a_keys)):
            result.bad(b_keys[key], f"missing partner: no A/{sub}{key}.* image")
        for k in sorted(set(a_keys) & set(b_keys)):
            s = split or split_of(k, *fractions)
            result.candidates.append(Candidate(k, s, a_keys[k], b_keys[k]))
        if split:
            result.splits_found.add(split)
        else:
            result.unsplit = True
    result.candidates.sort(key=lambda c: (SPLITS.index(c.split), c.key))
    return result


def aspect_outliers(found: Scan, a_sizes: dict[Path, tuple[int, int]]) -> set[Path]:
    """Aligned: files whose half shape differs from the dataset's usual half shape.

    A|B files of one dataset share a shape (facades 512x256, maps 1200x600); a file whose
    halves have another aspect ratio was not made by putting A and B side by side. `a_sizes`
    maps each decoded aligned file to the size of its A half; each outlier is also recorded
    as a problem of `found`.
    """
    ratios = {f: w / h for f, (w, h) in a_sizes.items() if h > 0}
    if len(ratios) < 3:
        return set()
    common, n = collections.Counter(round(r, 2) for r in ratios.values()).most_common(1)[0]
    if n * 2 <= len(ratios):  # no clear majority: mixed shapes are this dataset's normal
        return set()
    out = set()
    for f in sorted(ratios):
        r = ratios[f]
        if abs(r - common) > _ASPECT_TOL * common:
            found.bad(
                f,
                f"halves have aspect ratio {r:.2f} (w/2 : h) but {n} of {len(ratios)} files in "
                f"this dataset have {common:.2f}: not an A|B side-by-side pair "
                "(pass --allow-mixed-shapes if that is intended)",
            )
            out.add(f)
    return out
