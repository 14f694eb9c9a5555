"""The sample grid: one row per test image, columns input | output | target, labelled.

One renderer for `p2p evaluate` (samples.png) and the training run's MLflow grids
(p2p.training.tracking.sample_grid). Small crops are upscaled with nearest neighbour by an
integer factor (no invented detail, pixels stay sharp) so each cell is at least `min_cell` px
wide: a 64 px demo crop becomes 256 px, big enough to judge by eye.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw

LABELS = ("input", "output", "target")
GAP = 4  # px between cells
HEADER = 22  # px of the label row


def pick_rows(n_total: int, num_rows: int) -> list[int]:
    """`num_rows` sample indices spread evenly over `n_total` (different photos, not the first
    few neighbouring crops of one photo); all of them when there are fewer."""
    if num_rows <= 0 or n_total <= 0:
        return []
    if n_total <= num_rows:
        return list(range(n_total))
    return sorted({i * n_total // num_rows for i in range(num_rows)})


def render_grid(
    rows: Sequence[Sequence[torch.Tensor]],
    labels: Sequence[str] = LABELS,
    *,
    min_cell: int = 256,
) -> Image.Image:
    """An RGB image with a header of column labels and one row per entry of `rows`.

    Args:
        rows: per row, one (C, H, W) tensor in [-1, 1] per column (C 1 or 3; all one size).
        labels: column titles, as many as columns.
        min_cell: upscale (nearest, integer factor) until a cell is at least this wide.
    """
    from p2p.inference import tensor_to_image

    if not rows:
        return Image.new("RGB", (1, 1), "white")
    cols = len(labels)
    if any(len(r) != cols for r in rows):
        raise ValueError(f"every row needs {cols} images ({', '.join(labels)})")
    h, w = rows[0][0].shape[-2:]
    scale = max(1, -(-min_cell // w))  # ceil
    cw, ch = w * scale, h * scale
    grid = Image.new(
        "RGB", (cols * cw + (cols + 1) * GAP, HEADER + len(rows) * (ch + GAP)), "white"
    )
    draw = ImageDraw.Draw(grid)
    for c, label in enumerate(labels):
        x = GAP + c * (cw + GAP)
        tw = draw.textlength(label)
        draw.text((x + (cw - tw) / 2, 5), label, fill="black")
    for r, images in enumerate(rows):
        for c, t in enumerate(images):
            cell = tensor_to_image(t).convert("RGB")
            if scale > 1:
                cell = cell.resize((cw, ch), Image.Resampling.NEAREST)
            grid.paste(cell, (GAP + c * (cw + GAP), HEADER + r * (ch + GAP)))
    return grid
