"""`p2p bench shard`: `p2p data shard` vs `tar cf` of the same raw folder, in the same run.

For each --pairs N: builds a canonical dataset of N pairs (--size px PNGs; a few distinct
noise images reused, so building is quick and the PNGs do not compress), then times, best of
--repeat, with the page cache warm for both:

- `tar cf` of the dataset folder (the floor: read every file, write one archive),
- `write_shards` into a local folder (tars + index.json, content hashes, the temp folder and
  the final rename).

The ratio p2p / tar is what to watch (the target is <= 3x on local disk).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pairs", type=int, nargs="+", default=[1000, 5000], help="dataset sizes")
    p.add_argument("--size", type=int, default=128, help="side of each image in px")
    p.add_argument("--repeat", type=int, default=3, help="runs per row; the best is shown")
    p.add_argument("--tmp", help="where to build the datasets (default: the system temp dir)")


def run(args: argparse.Namespace) -> int:
    from p2p.config import load_config

    cfg = load_config(args.params, args.overrides)  # the CLI's --params / --set
    tar = shutil.which("tar")
    if tar is None:
        from p2p.errors import P2PError

        raise P2PError("p2p bench shard: needs `tar` on PATH for the comparison")
    print(
        f"p2p bench shard: {args.size}x{args.size} PNG pairs, best of {args.repeat}, "
        f"shard_max_count {cfg.data.shard_max_count}; {os.cpu_count()} CPU cores"
    )
    print("| pairs | MB | tar cf | p2p data shard | p2p / tar |")
    print("|---|---|---|---|---|")
    for n in args.pairs:
        with tempfile.TemporaryDirectory(prefix="p2p-bench-shard-", dir=args.tmp) as tmp:
            raw = _dataset(Path(tmp) / "raw", n, args.size, cfg.data)
            mb = sum(p.stat().st_size for p in raw.rglob("*") if p.is_file()) / 1e6
            t_tar, t_p2p = _time_pair(raw, Path(tmp), tar, cfg.data, args.repeat)
            print(
                f"| {n} | {mb:.0f} | {t_tar:.2f} s | {t_p2p:.2f} s | {t_p2p / t_tar:.1f}x |",
                flush=True,
            )
    return 0


def _dataset(root: Path, n: int, size: int, data) -> Path:
    import numpy as np
    from PIL import Image

    from p2p.data.images import encode_png
    from p2p.data.writer import DatasetWriter

    rng = np.random.default_rng(0)
    pool = [
        encode_png(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))
        for _ in range(16)
    ]
    n_val = n_test = max(1, n // 10)
    with DatasetWriter(root, "bench") as w:
        for i in range(n):
            split = "val" if i < n_val else "test" if i < n_val + n_test else "train"
            a, b = pool[i % 16], pool[(i * 7 + 3) % 16]
            w.add_png(f"p{i:06d}", split, a, b, (size, size), (size, size))
        w.commit(data=data, report={}, warnings=[])
    return root


def _time_pair(raw: Path, tmp: Path, tar: str, data, repeat: int) -> tuple[float, float]:
    """Best-of-repeat seconds of `tar cf` and of write_shards, interleaved."""
    from p2p.data.shards import write_shards

    archive = tmp / "raw.tar"
    out = tmp / "shards"
    cmd = [tar, "cf", str(archive), "-C", str(raw), "."]
    subprocess.run(cmd, check=True)  # warm the page cache
    best_tar = best_p2p = float("inf")
    for _ in range(repeat):
        archive.unlink(missing_ok=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        best_tar = min(best_tar, time.perf_counter() - t0)
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        write_shards(raw, out, data, progress=lambda line: None)
        best_p2p = min(best_p2p, time.perf_counter() - t0)
    return best_tar, best_p2p
