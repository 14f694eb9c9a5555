"""Small image datasets written into tmp dirs for the data tests (helpers, not fixtures).

Images are random noise: any misaligned crop, flip or half-split shows up pixel-wise.
"""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# A config small enough for CPU tests (the keys of params.yaml): 64x64 crops, a 6-level U-Net
# with 8 base channels, one worker, no loader processes.
TINY: dict[str, object] = {
    "data.load_size": 72,
    "data.crop_size": 64,
    "data.loader_workers": 0,
    "model.num_downs": 6,
    "model.base_channels": 8,
    "model.disc_channels": 8,
    "train.batch_size": 2,
    "resources.num_workers": 1,
}


def noise(h: int, w: int, seed: int, channels: int = 3) -> np.ndarray:
    """(H, W, C) or (H, W) uint8 noise; smooth enough that JPEG keeps it recognisable."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, h // 4), max(1, w // 4), channels), dtype=np.uint8)
    img = Image.fromarray(small if channels == 3 else small[..., 0])
    return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR))


def save(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def aligned_image(size: int, seed: int) -> np.ndarray:
    """An A|B file: A = noise, B = 255 - A (so B = f(A) pixel-wise), (size, 2 * size, 3)."""
    a = noise(size, size, seed)
    return np.concatenate([a, 255 - a], axis=1)


def make_aligned(
    root: Path, counts: dict[str, int] | None = None, size: int = 16, ext: str = ".png"
) -> dict[str, list[str]]:
    """An aligned source dataset: root/<split>/<i>.<ext>; returns split -> keys."""
    counts = counts or {"train": 4, "val": 2, "test": 2}
    keys: dict[str, list[str]] = {}
    for s, n in counts.items():
        keys[s] = []
        for i in range(n):
            save(
                root / s / f"{s}{i}{ext}", aligned_image(size, seed=zlib.crc32(f"{s}{i}".encode()))
            )
            keys[s].append(f"{s}{i}")
    return keys


def make_folders(
    root: Path, counts: dict[str, int] | None = None, size: int = 16, split_dirs: bool = True
) -> dict[str, list[str]]:
    """A folders source dataset: root/A/<split>/k.jpg + root/B/<split>/k.png (or flat)."""
    counts = counts or {"train": 4, "val": 2}
    keys: dict[str, list[str]] = {}
    for s, n in counts.items():
        keys[s] = []
        for i in range(n):
            a = noise(size, size, seed=100 * len(s) + i)
            sub = Path(s) if split_dirs else Path()
            save(root / "A" / sub / f"{s}{i}.jpg", a, quality=95)
            save(root / "B" / sub / f"{s}{i}.png", 255 - a)
            keys[s].append(f"{s}{i}")
    return keys


def tree_hashes(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under root (hidden ones included)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def png_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
