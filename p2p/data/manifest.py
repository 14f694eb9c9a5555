"""The canonical dataset layout, its manifest, keys and the split rule.

    data/raw/NAME/
      A/<split>/<key>.png        split in SPLITS; keys match [A-Za-z0-9_-]+
      B/<split>/<key>.png        the partner of A/<split>/<key>.png, same size
      manifest.jsonl             JSON lines: a header, then one line per pair (see below)
      report.json                what was skipped and why, warnings (no timestamps)

manifest.jsonl (format_version 2), sorted by split (train, val, test) then key:

    {"format": "p2p-pairs", "format_version": 2, "name": "facades"}
    {"split": "train", "key": "1", "size": [256, 256], "a_sha256": "...", "b_sha256": "..."}
    ...

The file paths are not stored: they follow from split and key. The format streams (`iter_pairs`
reads one line at a time, flat memory) and appends (one more line per pair). Datasets written
before it (`manifest.json`, format_version 1, one JSON document) are still read.

Split rule (`split_of`): a pair whose source has no split folders goes to the split given by a
hash of (seed, key), so adding or removing pairs never moves any other pair, and raising a
fraction only moves pairs out of train.
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2p.config import DataConfig
from p2p.errors import DataError

SPLITS = ("train", "val", "test")  # the only split names, in manifest order
FORMAT = "p2p-pairs"
FORMAT_VERSION = 2
MANIFEST = "manifest.jsonl"
LEGACY_MANIFEST = "manifest.json"  # format_version 1: one JSON document
KEY_BAD = re.compile(r"[^A-Za-z0-9_-]")


# ----------------------------------------------------------------------------- keys, splits


def sanitize_key(stem: str) -> str:
    """A key from a file path without extension: [A-Za-z0-9_-] only ("a b.v2" -> "a_b_v2")."""
    return KEY_BAD.sub("_", stem) or "_"


def split_draw(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by (seed, key) alone: the first 8 bytes of sha256("seed:key")."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(key: str, val_fraction: float, test_fraction: float, seed: int) -> str:
    """The split of one key: test if its draw is below test_fraction, then val, else train.

    Depends on nothing but the key, fractions and seed (never on the other keys).
    """
    u = split_draw(key, seed)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def assign_splits(
    keys: Iterable[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, str]:
    """key -> split for many keys (`split_of` each)."""
    return {k: split_of(k, val_fraction, test_fraction, seed) for k in keys}


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


def side_channels(data: DataConfig) -> tuple[int, int]:
    """Channels of the A and B sides: the input side has input_nc (A for AtoB, B for BtoA)."""
    if data.direction == "AtoB":
        return data.input_nc, data.output_nc
    return data.output_nc, data.input_nc


# ----------------------------------------------------------------------------- manifest


@dataclass(frozen=True, slots=True)
class Pair:
    """One canonical pair; `a` and `b` (absolute paths) follow from root, split and key."""

    root: Path
    key: str
    split: str
    size: tuple[int, int]  # (width, height) of both sides
    a_sha256: str
    b_sha256: str

    @property
    def a(self) -> Path:
        return self.root / "A" / self.split / f"{self.key}.png"

    @property
    def b(self) -> Path:
        return self.root / "B" / self.split / f"{self.key}.png"

    @property
    def a_size(self) -> tuple[int, int]:
        return self.size

    @property
    def b_size(self) -> tuple[int, int]:
        return self.size

    def to_line(self) -> str:
        """The pair's manifest line (no newline)."""
        return json.dumps(
            {
                "split": self.split,
                "key": self.key,
                "size": list(self.size),
                "a_sha256": self.a_sha256,
                "b_sha256": self.b_sha256,
            }
        )


@dataclass(frozen=True)
class Manifest:
    """A canonical dataset loaded whole (small datasets; `iter_pairs` streams big ones)."""

    root: Path
    name: str
    entries: tuple[Pair, ...]
    path: Path  # the manifest file it was read from

    def pairs(self, split: str | None = None) -> list[Pair]:
        """Pairs of one split (or all, in split then key order)."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        return [p for p in self.entries if split is None or p.split == split]

    @property
    def counts(self) -> dict[str, int]:
        return count_splits(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def count_splits(pairs: Iterable[Pair]) -> dict[str, int]:
    c = collections.Counter(p.split for p in pairs)
    return {s: c.get(s, 0) for s in SPLITS}


def manifest_path(raw_dir: str | Path) -> Path | None:
    """The manifest file of a dataset dir (new or legacy format), or None if it has none."""
    for name in (MANIFEST, LEGACY_MANIFEST):
        if (Path(raw_dir) / name).is_file():
            return Path(raw_dir) / name
    return None


def is_dataset(path: str | Path) -> bool:
    """True if `path` holds a p2p dataset (a manifest)."""
    return manifest_path(path) is not None


def write_manifest(path: Path, name: str, pairs: Iterable[Pair]) -> None:
    """Write a manifest.jsonl (the caller orders the pairs)."""
    header = json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "name": name})
    with open(path, "w", encoding="utf-8") as f:
        f.write(header + "\n")
        for p in pairs:
            f.write(p.to_line() + "\n")


def read_header(raw_dir: str | Path) -> tuple[Path, str]:
    """(manifest file, dataset name) of a dataset dir; DataError if it has no valid manifest."""
    path = _find(raw_dir)
    if path.name == LEGACY_MANIFEST:
        return path, _legacy_doc(path)[0]
    with open(path, encoding="utf-8") as f:
        return path, _header(path, f.readline())


def iter_pairs(raw_dir: str | Path) -> Iterator[Pair]:
    """The pairs of a dataset, one manifest line at a time (checks structure, not images).

    Raises:
        DataError: no manifest, unknown format, or a malformed line (named by its number).
    """
    path = _find(raw_dir)
    root = Path(raw_dir).resolve()
    if path.name == LEGACY_MANIFEST:
        yield from _legacy_doc(path)[1](root)
        return
    with open(path, encoding="utf-8") as f:
        _header(path, f.readline())
        for n, line in enumerate(f, start=2):
            if line.strip():
                yield _pair(path, n, root, line)


def load_manifest(raw_dir: str | Path) -> Manifest:
    """The whole manifest in memory (see `iter_pairs` for errors and big datasets)."""
    path, name = read_header(raw_dir)
    entries = tuple(iter_pairs(raw_dir))
    return Manifest(root=Path(raw_dir).resolve(), name=name, entries=entries, path=path)


# ----------------------------------------------------------------------------- internals


def _find(raw_dir: str | Path) -> Path:
    path = manifest_path(raw_dir)
    if path is None:
        raise DataError(
            f"{raw_dir}: not a p2p dataset (no {MANIFEST}); create one with "
            "`p2p data import`, `p2p data build` or `p2p data demo`"
        )
    return path


def _header(path: Path, line: str) -> str:
    try:
        doc = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: line 1 is not a JSON header ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DataError(f"{path}: line 1 is not a {FORMAT} header")
    if doc.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{path}: format_version {doc.get('format_version')!r} is not {FORMAT_VERSION}"
        )
    return str(doc.get("name") or path.parent.name)


def _pair(path: Path, n: int, root: Path, line: str) -> Pair:
    try:
        e = json.loads(line)
        split, key = e["split"], e["key"]
        _check_split_key(split, key)
        w, h = (int(x) for x in e["size"])
        return Pair(root, key, split, (w, h), str(e["a_sha256"]), str(e["b_sha256"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise DataError(f"{path}: line {n} is malformed ({err})") from None


def _check_split_key(split: Any, key: Any) -> None:
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    if not isinstance(key, str) or not key or KEY_BAD.search(key):
        raise ValueError(f"key {key!r} has characters other than [A-Za-z0-9_-]")


def _legacy_doc(path: Path):
    """format_version 1 (one JSON document): (name, root -> iterator of pairs)."""
    redo = "re-import the dataset with `p2p data import` to write a manifest.jsonl"
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e}); {redo}") from None
    if not isinstance(doc, dict) or doc.get("format_version") != 1:
        got = doc.get("format_version") if isinstance(doc, dict) else None
        raise DataError(f"{path}: format_version {got!r} is not 1; {redo}")

    def pairs(root: Path) -> Iterator[Pair]:
        for i, e in enumerate(doc.get("pairs") or []):
            try:
                split, key = e["split"], e["key"]
                _check_split_key(split, key)
                size = tuple(int(x) for x in e["a_size"])
                if size != tuple(int(x) for x in e["b_size"]) or len(size) != 2:
                    raise ValueError(f"a_size {e['a_size']} differs from b_size {e['b_size']}")
                pair = Pair(root, key, split, size, str(e["a_sha256"]), str(e["b_sha256"]))
                for side, got, want in (("a", e["a"], pair.a), ("b", e["b"], pair.b)):
                    if (root / str(got)).resolve() != want:
                        raise ValueError(f"{side} path {got!r} is not {want.relative_to(root)}")
            except (KeyError, TypeError, ValueError) as err:
                raise DataError(f"{path}: pair #{i} is malformed ({err}); {redo}") from None
            yield pair

    return str(doc.get("name", path.parent.name)), pairs
