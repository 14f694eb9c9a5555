"""Paired datasets made from plain photos, and the embedded demo dataset.

A task (`build.task`, registered in `p2p.data.build_tasks.TASKS`: edges, colorize, superres,
denoise)
turns a square photo tile B into its input A.

Tiles: `build.num_pairs` square crops of `build.size` pixels, spread round-robin over the photos,
each with a random scale and position from `random.Random(build.seed)` (side between ~30% and
100% of the photo's short side, never below `size` unless the photo is smaller, in which case
the whole short side is taken and upscaled). Whole photos are assigned to splits by a hash of
their key (`manifest.split_of`: adding or removing photos never moves another photo's tiles), so
val/test tiles never overlap train tiles; the number of tiles per split follows
`build.val_fraction` / `build.test_fraction`. A split no photo drew borrows one train photo, and
with too few photos the tiles themselves are split (both reported).
Everything is written through `writer.DatasetWriter`, so the output is swapped into
place atomically, and is byte-identical for the same photos and params.

`TASKS` and the task functions are re-exported here from `p2p.data.build_tasks`.
"""

from __future__ import annotations

import collections
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from p2p.config import BuildConfig, DataConfig
from p2p.data.build_tasks import TASKS, edge_map, grayscale, low_res, noisy
from p2p.data.images import encode_png, is_image_file, open_image
from p2p.data.importer import Executor, ThreadExecutor, map_ordered
from p2p.data.manifest import (
    SPLITS,
    sanitize_key,
    side_channels,
    split_counts,
    split_draw,
    split_of,
)
from p2p.data.reports import ImportReport, InvalidDataset, Problem
from p2p.data.sources import walk_files
from p2p.data.writer import DatasetWriter
from p2p.errors import DataError

__all__ = [
    "TASKS",
    "build_demo",
    "build_pairs",
    "demo_photos",
    "edge_map",
    "grayscale",
    "low_res",
    "noisy",
]

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- tiling plan


@dataclass(frozen=True)
class _Photo:
    path: Path
    name: str  # how reports name it
    size: tuple[int, int]  # after EXIF orientation
    key: str  # fixes the photo's split (`split_of`) and prefixes its tiles' keys


@dataclass(frozen=True)
class _Tile:
    photo: int  # index into the photo list
    split: str
    box: tuple[int, int, int, int]  # (left, top, right, bottom) in the photo
    key: str


def _crop_box(rng: random.Random, w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """A random square: side in [max(size, 0.3 * short), short] (the short side if < size)."""
    short = min(w, h)
    lo = min(short, max(size, int(0.3 * short)))
    side = rng.randint(lo, short)
    x, y = rng.randint(0, w - side), rng.randint(0, h - side)
    return (x, y, x + side, y + side)


def _plan(
    photos: list[_Photo], build: BuildConfig
) -> tuple[list[_Tile], list[str], dict[int, str]]:
    """Which tiles to cut (deterministic for the seed), warnings, photo -> split ("" = mixed).

    Each photo goes to `split_of(photo key)`, so adding or removing photos never moves another
    photo (or its tiles, keyed "<photo key>_<n>") to another split. Tile counts per split follow
    `split_counts(build.num_pairs, ...)`, spread round-robin over that split's photos.
    """
    rng = random.Random(build.seed)
    n = split_counts(build.num_pairs, build.val_fraction, build.test_fraction)
    wanted = [(s, k) for s, k in zip(SPLITS, n, strict=True) if k > 0]
    fractions = (build.val_fraction, build.test_fraction, build.seed)
    photo_split = {i: split_of(p.key, *fractions) for i, p in enumerate(photos)}
    warnings = []
    # A wanted split no photo drew borrows one photo (lowest draw) from the split with the most
    # photos, if that has two or more. Only this rescue depends on the other photos (reported).
    for s, _ in wanted:
        if s in photo_split.values():
            continue
        by_split = collections.defaultdict(list)
        for i, t in photo_split.items():
            by_split[t].append(i)
        donor = max(SPLITS, key=lambda t: (len(by_split[t]), t == "train"))
        if len(by_split[donor]) > 1:
            i = min(by_split[donor], key=lambda i: split_draw(photos[i].key, build.seed))
            photo_split[i] = s
            warnings.append(
                f"no photo drew the {s} split: {photos[i].name} moved there from {donor} "
                "(add photos for stable splits)"
            )
    groups = {s: [i for i, t in sorted(photo_split.items()) if t == s] for s in SPLITS}
    if not all(groups[s] for s, _ in wanted):  # too few photos: split the tiles instead
        photo_split = {i: "" for i in photo_split}
        if len(wanted) > 1:
            warnings.append(
                f"only {len(photos)} photo(s): val/test tiles are cut from the same photos as "
                "train tiles (add photos for a held-out split)"
            )
    tiles = []
    for s, k in wanted:
        idx = groups[s] if photo_split and all(photo_split.values()) else sorted(photo_split)
        for j in range(k):  # round-robin over this split's photos
            i = idx[j % len(idx)]
            w, h = photos[i].size
            key = f"{photos[i].key}_{j // len(idx):04d}" + ("" if photo_split[i] else f"_{s}")
            tiles.append(_Tile(i, s, _crop_box(rng, w, h, build.size), key))
    return tiles, warnings, photo_split


# ----------------------------------------------------------------------------- build


def _collect(
    src: str | Path | Sequence[str | Path], names: dict[Path, str] | None
) -> tuple[list[tuple[Path, str, str]], list[Problem]]:
    """(path, display name, key) of each image file; non-image files in a folder are problems.

    The key (the path below the folder, or the label, without extension) fixes the split.
    """
    if isinstance(src, (str, Path)):
        root = Path(src)
        if not root.is_dir():
            raise DataError(f"{root}: photo folder not found")
        files, problems = [], []
        for f in walk_files(root):
            shown = str(root / f.relative_to(root))
            if is_image_file(f):
                key = sanitize_key(f.relative_to(root).with_suffix("").as_posix())
                files.append((f, shown, key))
            else:
                problems.append(Problem(shown, f"not an image file (extension {f.suffix!r})"))
        return files, problems
    files = []
    for f in src:
        shown = (names or {}).get(Path(f), str(f))
        files.append((Path(f), shown, sanitize_key(str(Path(shown).with_suffix("")))))
    return files, []


def build_pairs(
    photos: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    build: BuildConfig,
    data: DataConfig,
    on_error: Literal["fail", "skip"] = "fail",
    name: str | None = None,
    source: str | None = None,
    photo_names: dict[Path, str] | None = None,
    workers: int | None = None,
    executor: Executor | None = None,
) -> ImportReport:
    """Make `build.num_pairs` pairs of `build.size` px for `build.task` from photos.

    Args:
        photos: a folder (searched recursively, hidden files skipped) or a list of image files.
        out: the dataset dir to write (canonical layout, replaced atomically).
        build: task, num_pairs, size, seed, val_fraction, test_fraction.
        data: direction and channels (A = task input side; edges/gray are replicated to RGB
            when that side has 3 channels).
        on_error: "fail": any unreadable photo or non-image file stops the build, nothing
            written; "skip": bad files are left out and listed in report.json.
        name: manifest name (default: the name of `out`).
        source, photo_names: how report.json names the source and each photo (stable labels
            keep the output byte-identical across machines).
        workers: threads cutting and encoding tiles (default: `importer.default_workers()`).
        executor: where tiles are cut and encoded instead of local threads, e.g. a
            `p2p.raycluster.RayExecutor` (the output is byte-identical either way).

    Returns:
        An ImportReport.
    """
    t0 = time.perf_counter()
    out = Path(out)
    run_on = executor or ThreadExecutor(workers)
    task = TASKS.get(build.task)
    if task is None:
        raise DataError(f"build.task {build.task!r} is not one of {', '.join(TASKS)}")
    a_nc, b_nc = side_channels(data)
    if build.task == "colorize" and b_nc != 3:
        raise DataError("build.task=colorize makes colour B images: the B side needs 3 channels")

    # 1) Check every photo (decode fully) and record its size.
    files, problems = _collect(photos, photo_names)
    good: list[_Photo] = []
    for path, shown, key in files:
        try:
            img = open_image(path, name=shown, channels=3, exif_transpose=True)
        except DataError as e:
            problems.append(Problem(shown, str(e).removeprefix(f"{shown}: ")))
            continue
        if build.task == "colorize" and _is_gray(img):
            problems.append(Problem(shown, "grayscale photo: colorize needs colour photos"))
            continue
        good.append(_Photo(path, shown, img.size, key))
    problems.sort(key=lambda p: p.file)
    if problems and on_error == "fail":
        raise InvalidDataset(str(source or photos), problems, "nothing written")
    if not good:
        where = str(source or photos)
        raise InvalidDataset(where, problems or [Problem(where, "no photos found")])

    # 2) Plan the tiles, then cut them photo by photo (one decoded photo in memory at a time).
    tiles, warnings, photo_split = _plan(good, build)
    by_photo = collections.defaultdict(list)
    for t in tiles:
        by_photo[t.photo].append(t)
    size = (build.size, build.size)
    with DatasetWriter(out, name or out.name) as writer:
        for i in sorted(by_photo):
            photo = open_image(good[i].path, name=good[i].name, channels=3, exif_transpose=True)

            def cut(t: _Tile, photo: Image.Image = photo) -> tuple[bytes, bytes]:
                b = photo.resize(size, Image.Resampling.BICUBIC, box=t.box)  # (size, size) RGB
                a = task(b)
                return encode_png(_as_channels(a, a_nc)), encode_png(_as_channels(b, b_nc))

            for t, (a_png, b_png) in zip(
                by_photo[i], map_ordered(cut, by_photo[i], run_on), strict=True
            ):
                writer.add_png(t.key, t.split, a_png, b_png, size, size)
            log.info("%s: %d tiles", good[i].name, len(by_photo[i]))
        counts = collections.Counter(t.split for t in tiles)
        for s in ("val", "test"):
            if not counts[s]:
                warnings.append(f"{s} split is empty (build.num_pairs / fractions)")
        per_photo = collections.Counter(t.photo for t in tiles)
        writer.commit(
            data=data,
            report={
                "source": str(source or photos),
                "source_format": "photos",
                "build": {
                    "task": build.task,
                    "num_pairs": build.num_pairs,
                    "size": build.size,
                    "seed": build.seed,
                    "val_fraction": build.val_fraction,
                    "test_fraction": build.test_fraction,
                },
                "photos": [
                    {"file": p.name, "split": photo_split[i] or "all", "pairs": per_photo[i]}
                    for i, p in enumerate(good)
                ],
                "skipped": [{"file": p.file, "reason": p.reason} for p in problems],
            },
            warnings=warnings,
        )
        report = ImportReport(
            out=out,
            name=writer.name,
            counts=writer.counts,
            skipped=problems,
            warnings=warnings,
            bytes=writer.bytes,
            seconds=time.perf_counter() - t0,
        )
    log.debug(report.summary())
    return report


def _is_gray(img: Image.Image) -> bool:
    a = np.asarray(img)  # (H, W, 3)
    return bool((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())


def _as_channels(img: Image.Image, nc: int) -> Image.Image:
    # Our own derived images: gray is replicated to RGB, colour reduced to luma, as configured.
    mode = "RGB" if nc == 3 else "L"
    return img if img.mode == mode else img.convert(mode)


# ----------------------------------------------------------------------------- demo

# Real photographs shipped by installed packages: (package, file inside its data folder).
# Left out on purpose: grayscale-only (camera, coins, moon...), synthetic (color wheel, phantom,
# chessboards, logo) and near-duplicates (motorcycle_right).
DEMO_PHOTOS: tuple[tuple[str, str], ...] = (
    ("skimage", "data/astronaut.png"),
    ("skimage", "data/chelsea.png"),
    ("skimage", "data/coffee.png"),
    ("skimage", "data/rocket.jpg"),
    ("skimage", "data/motorcycle_left.png"),
    ("skimage", "data/retina.jpg"),
    ("skimage", "data/hubble_deep_field.jpg"),
    ("skimage", "data/ihc.png"),
    ("sklearn", "datasets/images/china.jpg"),
    ("sklearn", "datasets/images/flower.jpg"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
)


def demo_photos() -> dict[Path, str]:
    """Installed demo photos: path -> stable label ("skimage/data/astronaut.png").

    Packages are located with importlib.util.find_spec, without importing them.
    """
    import importlib.util

    found = {}
    for pkg, rel in DEMO_PHOTOS:
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = Path(next(iter(spec.submodule_search_locations))) / rel
        if path.is_file():
            found[path] = f"{pkg}/{rel}"
    return found


def build_demo(
    out: str | Path, build: BuildConfig, data: DataConfig, *, workers: int | None = None
) -> ImportReport:
    """The embedded demo dataset: `build` applied to the photos installed packages ship.

    Byte-deterministic for the same params and package files (fixed PNG settings, sorted
    manifest, no timestamps or absolute paths).
    """
    photos = demo_photos()
    if not photos:
        raise DataError(
            "no demo photos found: install scikit-image (it ships astronaut.png, chelsea.png...)"
        )
    ordered = sorted(photos, key=lambda p: photos[p])  # stable order: by label
    return build_pairs(
        ordered,
        out,
        build=build,
        data=data,
        on_error="fail",
        name=Path(out).name,
        source="demo photos from installed packages",
        photo_names=photos,
        workers=workers,
    )
