"""`validate_dataset`: check a canonical dataset or a source layout, decoding every image.

Rejected: unreadable, corrupt or truncated images; non-image files; A/B size mismatch; odd
aligned widths; aligned images whose half shape differs from the dataset's usual shape
(`check_aspect=False` allows mixed shapes); missing partners; wrong channel counts (policy in
`p2p.data.images`); duplicate keys and keys differing only by case; an empty train split; in a
canonical dataset also files missing, changed (sha256) or not listed in the manifest. Empty
val/test splits are warnings.
"""

from __future__ import annotations

import collections
import hashlib
from pathlib import Path
from typing import Literal

from p2p.config import DataConfig
from p2p.data.images import open_image
from p2p.data.importer import decode_pairs, default_workers, empty_splits, map_ordered
from p2p.data.manifest import SPLITS, Pair, is_dataset, load_manifest, manifest_path, side_channels
from p2p.data.reports import Problem, ValidationReport, reason
from p2p.data.sources import Scan, aspect_outliers, scan, walk_files
from p2p.errors import DataError


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
    """Check a canonical dataset (has a manifest) or a source layout, decoding every image.

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
    if is_dataset(path):
        return _validate_canonical(path, data, check_hashes, workers or default_workers())
    if fmt is None:
        fmt = "folders" if (path / "A").is_dir() and (path / "B").is_dir() else "aligned"
    found = scan(path, fmt, (val_fraction, test_fraction, seed))
    checked = list(decode_pairs(found, data, workers=workers or default_workers()))
    if fmt == "aligned" and check_aspect:
        outliers = aspect_outliers(found, {c.a_file: a.size for c, (a, _) in checked})
        checked = [(c, pair) for c, pair in checked if c.a_file not in outliers]
    counts = collections.Counter(c.split for c, _ in checked)
    empty_splits(found, counts)
    found.problems.sort(key=lambda p: p.file)
    return ValidationReport(
        path, fmt, {s: counts.get(s, 0) for s in SPLITS}, found.problems, found.warnings
    )


def _validate_canonical(
    root: Path, data: DataConfig, check_hashes: bool, workers: int
) -> ValidationReport:
    report = ValidationReport(root, "canonical", {s: 0 for s in SPLITS})
    try:
        m = load_manifest(root)
    except DataError as e:
        shown = str(manifest_path(root))
        report.problems.append(Problem(shown, reason(e, shown)))
        return report
    listed_in = m.path.name

    def show(f: Path) -> str:
        return str(root / f.relative_to(m.root))

    a_nc, b_nc = side_channels(data)

    def check(p: Pair) -> list[Problem]:
        """Problems of one manifest entry: presence, hash, decode, sizes."""
        problems = []
        for f, sha, nc in ((p.a, p.a_sha256, a_nc), (p.b, p.b_sha256, b_nc)):
            try:
                blob = f.read_bytes()
            except OSError:
                problems.append(Problem(show(f), f"listed in {listed_in} but missing"))
                continue
            if check_hashes and hashlib.sha256(blob).hexdigest() != sha:
                problems.append(Problem(show(f), f"sha256 differs from {listed_in} (file changed)"))
            try:
                img = open_image(blob, name=show(f), channels=nc)
            except DataError as e:
                problems.append(Problem(show(f), reason(e, show(f))))
                continue
            if img.size != p.size:
                problems.append(Problem(show(f), f"size {img.size} differs from {listed_in}"))
        return problems

    seen: set[tuple[str, str]] = set()
    unique = []
    for p in m.entries:
        if (p.split, p.key) in seen:
            report.problems.append(Problem(show(p.a), f"duplicate key {p.key!r} in {listed_in}"))
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
                    report.problems.append(Problem(show(f), f"not listed in {listed_in}"))
    found = Scan(m.root, "canonical")
    empty_splits(found, report.counts)
    report.problems += [Problem(str(root), p.reason) for p in found.problems]
    report.warnings += found.warnings
    return report
