"""`p2p bench import`: seconds to import generated pairs, beside the floor of plain PIL.

For each --pairs N, a folders source of N pairs is generated (A: JPEG, B: PNG, --px square,
smooth random content so the codecs do realistic work), then timed in the same process:

- import: `import_pairs` (scan, decode + validate once, encode PNG, hash, write, manifest);
- floor: the same files decoded with plain PIL and re-encoded to PNG in memory with the same
  settings and the same number of threads (no validation, no writing): what any importer pays.

Also the manifest reader at --manifest-pairs lines (synthetic): `iter_pairs` (streamed) and
`load_manifest` (whole), with the process's peak RSS after each.
"""

from __future__ import annotations

import argparse
import io
import resource
import tempfile
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pairs", type=int, nargs="+", default=[1000, 5000], help="sizes to time")
    p.add_argument("--px", type=int, default=128, help="side of each generated image")
    p.add_argument("--threads", type=int, help="decode/encode threads (default: the importer's)")
    p.add_argument(
        "--manifest-pairs", type=int, default=1_000_000, help="manifest lines to read (0: skip)"
    )


def run(args: argparse.Namespace) -> int:
    from p2p.config import DataConfig
    from p2p.data.importer import default_workers, import_pairs

    threads = args.threads or default_workers()
    data = DataConfig(load_size=args.px, crop_size=args.px)
    print(f"p2p bench import: {args.px}x{args.px} px, {threads} thread(s)", flush=True)
    for n in args.pairs:
        with tempfile.TemporaryDirectory(prefix="p2p-bench-import-") as tmp:
            src = Path(tmp) / "src"
            files = _generate(src, n, args.px)
            t0 = time.perf_counter()
            import_pairs(src, Path(tmp) / "out", fmt="folders", data=data, workers=threads)
            t_import = time.perf_counter() - t0
            t_floor = _floor(files, threads)
        print(
            f"{n} pairs: import {t_import:.1f} s ({n / t_import:.0f} pairs/s), "
            f"PIL decode+encode floor {t_floor:.1f} s ({n / t_floor:.0f} pairs/s), "
            f"ratio {t_import / t_floor:.2f}",
            flush=True,
        )
    if args.manifest_pairs:
        _manifest(args.manifest_pairs)
    return 0


def _generate(src: Path, n: int, px: int) -> list[Path]:
    """n folder pairs of smooth random images (upscaled noise: compressible like photos)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    files = []
    for side in ("A", "B"):
        (src / side).mkdir(parents=True)
    for i in range(n):
        small = rng.integers(0, 256, (px // 8, px // 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((px, px), Image.Resampling.BICUBIC)
        a, b = src / "A" / f"p{i:06d}.jpg", src / "B" / f"p{i:06d}.png"
        img.save(a, quality=90)
        img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(b)
        files += [a, b]
    return files


def _floor(files: list[Path], threads: int) -> float:
    from PIL import Image

    from p2p.data.images import PNG_COMPRESS_LEVEL
    from p2p.data.importer import map_ordered

    def one(f: Path) -> int:
        with Image.open(f) as im:
            im.load()
            buf = io.BytesIO()
            im.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        return len(buf.getvalue())

    t0 = time.perf_counter()
    for _ in map_ordered(one, files, threads):
        pass
    return time.perf_counter() - t0


def _manifest(n: int) -> None:
    from p2p.data.manifest import Pair, iter_pairs, load_manifest, write_manifest

    def rss_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    with tempfile.TemporaryDirectory(prefix="p2p-bench-manifest-") as tmp:
        root = Path(tmp)
        sha = "0" * 64
        pairs = (Pair(root, f"k{i:07d}", "train", (256, 256), sha, sha) for i in range(n))
        write_manifest(root / "manifest.jsonl", "bench", pairs)
        size = (root / "manifest.jsonl").stat().st_size
        before = rss_mb()
        t0 = time.perf_counter()
        count = sum(1 for _ in iter_pairs(root))
        t_iter = time.perf_counter() - t0
        after_iter = rss_mb()
        t0 = time.perf_counter()
        m = load_manifest(root)
        t_load = time.perf_counter() - t0
        print(
            f"manifest of {count} pairs ({size / 1e6:.0f} MB, {size / count:.0f} B/pair): "
            f"iter_pairs {t_iter:.1f} s (peak RSS +{after_iter - before:.0f} MB), "
            f"load_manifest {t_load:.1f} s (peak RSS +{rss_mb() - before:.0f} MB, {len(m)} pairs)",
            flush=True,
        )
