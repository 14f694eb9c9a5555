"""The tasks of `p2p data build`: each turns a photo tile B into its input A (numpy + PIL
only), registered by name in `TASKS` (`build.task`). See `p2p.data.build` for the tiling.

    edges     A = Canny-like edge map (dark lines on white)   edges -> photo
    colorize  A = luma of B (ITU-R 601)                        grayscale -> colour
    superres  A = B downscaled x4 then upscaled bicubic        low-res -> high-res
    denoise   A = B + Gaussian noise (std 75 of 255 grey levels) noisy -> clean (the demo)

Each task's classical baseline (what a model must beat) is p2p.evaluation.baselines.CLASSICAL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
from PIL import Image


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W) float array, reflect-padded."""
    r = max(1, int(3 * sigma + 0.5))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    h, w = x.shape
    p = np.pad(x, r, mode="reflect")  # (H + 2r, W + 2r)
    rows = sum(k[i] * p[:, i : i + w] for i in range(2 * r + 1))  # blur along x: (H + 2r, W)
    return sum(k[i] * rows[i : i + h, :] for i in range(2 * r + 1))  # blur along y: (H, W)


def edge_map(photo: Image.Image, sigma: float = 1.4) -> Image.Image:
    """Canny-like edges of a photo: blur, Sobel, non-maximum suppression, hysteresis.

    Returns an "L" image of the same size: 0 (black) on edges, 255 (white) elsewhere.
    """
    g = _gaussian_blur(np.asarray(photo.convert("L"), dtype=np.float32), sigma)  # (H, W)
    p = np.pad(g, 1, mode="edge")  # (H + 2, W + 2): p[1 + y, 1 + x] == g[y, x]

    def s(dy: int, dx: int) -> np.ndarray:  # g shifted: s(dy, dx)[y, x] == g[y + dy, x + dx]
        return p[1 + dy : p.shape[0] - 1 + dy, 1 + dx : p.shape[1] - 1 + dx]

    # Sobel gradients (x right, y down) and their magnitude
    gx = (s(-1, 1) + 2 * s(0, 1) + s(1, 1)) - (s(-1, -1) + 2 * s(0, -1) + s(1, -1))
    gy = (s(1, -1) + 2 * s(1, 0) + s(1, 1)) - (s(-1, -1) + 2 * s(-1, 0) + s(-1, 1))
    mag = np.hypot(gx, gy)

    # Non-maximum suppression: keep a pixel only if it beats both neighbours along its gradient
    # direction, quantised to 0, 45, 90, 135 degrees. This thins edges to one pixel.
    q = (((np.rad2deg(np.arctan2(gy, gx)) % 180) + 22.5) // 45).astype(np.int64) % 4
    m = np.pad(mag, 1, mode="constant")

    def ms(dy: int, dx: int) -> np.ndarray:
        return m[1 + dy : m.shape[0] - 1 + dy, 1 + dx : m.shape[1] - 1 + dx]

    steps = [(0, 1), (1, 1), (1, 0), (1, -1)]  # neighbour offset (dy, dx) per direction bin
    peak = np.zeros_like(mag, dtype=bool)
    for d, (dy, dx) in enumerate(steps):
        keep = (mag >= ms(dy, dx)) & (mag >= ms(-dy, -dx))
        peak |= (q == d) & keep

    # Hysteresis: strong edges, plus weak ones touching a strong one. Thresholds follow the
    # image's contrast (a percentile of peak magnitudes) with a floor so flat tiles stay blank.
    vals = mag[peak]
    hi = max(float(np.percentile(vals, 75)) if vals.size else 0.0, 60.0)
    strong = peak & (mag >= hi)
    weak = peak & (mag >= 0.4 * hi)
    sp = np.pad(strong, 1)
    near = np.zeros_like(strong)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            near |= sp[1 + dy : sp.shape[0] - 1 + dy, 1 + dx : sp.shape[1] - 1 + dx]
    edges = strong | (weak & near)
    return Image.fromarray(np.where(edges, 0, 255).astype(np.uint8))


def grayscale(photo: Image.Image) -> Image.Image:
    """ITU-R 601 luma ("L")."""
    return photo.convert("L")


def low_res(photo: Image.Image, factor: int = 4) -> Image.Image:
    """Downscale by `factor` (antialiased bicubic), then upscale bicubic back to the size."""
    w, h = photo.size
    small = photo.resize((max(1, w // factor), max(1, h // factor)), Image.Resampling.BICUBIC)
    return small.resize((w, h), Image.Resampling.BICUBIC)


DENOISE_SIGMA = 75.0  # grey levels (of 255): strong noise, where a Gaussian blur is a fair fight


def noisy(photo: Image.Image, sigma: float = DENOISE_SIGMA) -> Image.Image:
    """Additive Gaussian noise of std `sigma` grey levels, rounded and clipped to [0, 255].

    The noise is seeded by the tile's own pixels (sha256), so a build is byte-identical on any
    machine and executor, and adding or removing other tiles never changes this one.
    """
    x = np.asarray(photo.convert("RGB"), dtype=np.float64)  # (H, W, 3)
    seed = int.from_bytes(hashlib.sha256(x.astype(np.uint8).tobytes()).digest()[:8], "big")
    x = x + np.random.default_rng(seed).normal(0.0, sigma, x.shape)
    return Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))


# task name -> (photo tile B -> input A); the explicit registry of `build.task`. Each task's
# classical baseline is p2p.evaluation.baselines.CLASSICAL[task] (a test keeps both in step).
TASKS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "edges": edge_map,
    "colorize": grayscale,
    "superres": low_res,
    "denoise": noisy,
}
