"""`DatasetWriter`: write a canonical dataset into a temp dir, then swap it into place.

Crash safety: the temp dir (`.NAME.tmp-PID-HEX`) is renamed onto `out` only when complete
(`p2p.atomic.swap_dir_into_place`); a writer killed half-way leaves a temp dir (or, between the
two renames of the swap, the previous dataset as `.NAME.old-PID-HEX`) that the next writer for
the same `out` removes (or puts back).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from PIL import Image

from p2p.atomic import swap_dir_into_place
from p2p.config import DataConfig
from p2p.data.images import encode_png
from p2p.data.manifest import (
    FORMAT_VERSION,
    KEY_BAD,
    MANIFEST,
    SPLITS,
    Manifest,
    Pair,
    count_splits,
    is_dataset,
    load_manifest,
    write_manifest,
)
from p2p.data.reports import REPORT, InvalidDataset, Problem
from p2p.errors import DataError

log = logging.getLogger(__name__)


class DatasetWriter:
    """Writes a canonical dataset into a temp dir beside `out`, then renames it into place.

    Usage: `w.add(key, split, a, b)` for each pair, then `w.commit(...)` (writes the manifest
    and report, swaps the dir in) or `w.abort()`. Also a context manager that aborts on error.
    Each file's sha256 is taken from the bytes as they are written: nothing is read back.
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
        self._dirs: set[Path] = set()
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
        if split not in SPLITS or not key or KEY_BAD.search(key):
            raise ValueError(f"bad split/key {split!r}/{key!r}")
        if (split, key) in self._pairs:
            raise ValueError(f"duplicate key {key!r} in split {split}")
        if tuple(a_size) != tuple(b_size):
            raise ValueError(f"{split}/{key}: A is {a_size} but B is {b_size}")
        hashes = []
        for side, blob in (("A", a_png), ("B", b_png)):
            d = self.tmp / side / split
            if d not in self._dirs:
                d.mkdir(parents=True, exist_ok=True)
                self._dirs.add(d)
            with open(d / f"{key}.png", "wb") as f:
                f.write(blob)
            self.bytes += len(blob)
            hashes.append(hashlib.sha256(blob).hexdigest())
        size = (int(a_size[0]), int(a_size[1]))
        self._pairs[(split, key)] = Pair(self.tmp, key, split, size, *hashes)

    def discard(self, key: str, split: str) -> None:
        """Remove a pair added earlier (no-op if it was not added)."""
        if self._pairs.pop((split, key), None) is None:
            return
        for side in ("A", "B"):
            f = self.tmp / side / split / f"{key}.png"
            self.bytes -= f.stat().st_size
            f.unlink()

    @property
    def counts(self) -> dict[str, int]:
        return count_splits(self._pairs.values())

    def commit(
        self, *, report: dict[str, Any], warnings: list[str], data: DataConfig | None = None
    ) -> Manifest:
        """Write manifest.jsonl + report.json, rename the temp dir onto `out`.

        The pairs were checked when they were decoded, and `data` is not needed (accepted for
        older callers): nothing is decoded again here.

        Raises:
            InvalidDataset: the train split is empty (nothing is replaced).
        """
        if not self.counts["train"]:
            raise InvalidDataset(
                str(self.out), [Problem(str(self.out), "train split is empty (no valid pairs)")]
            )
        order = sorted(self._pairs, key=lambda sk: (SPLITS.index(sk[0]), sk[1]))
        write_manifest(self.tmp / MANIFEST, self.name, (self._pairs[sk] for sk in order))
        write_json(
            self.tmp / REPORT,
            {"format_version": FORMAT_VERSION, "name": self.name, "counts": self.counts}
            | report
            | {"warnings": warnings},
        )
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


def write_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


def _check_replaceable(out: Path) -> None:
    """Refuse to clobber something that is not a p2p dataset (a photo folder given as --out)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise DataError(f"{out}: exists and is not a directory; refusing to replace it")
    if out.is_dir() and any(out.iterdir()) and not is_dataset(out):
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
