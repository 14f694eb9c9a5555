"""Scoring a generator on batches: the one place that turns outputs into L1 / PSNR / SSIM.

Both `p2p evaluate` (p2p.evaluation.evaluate) and the training loop's per-epoch validation
(p2p.training.validation) score through `score_batches`, so val/l1, val/psnr and val/ssim in
MLflow are the numbers `p2p evaluate` computes on the same images in the same mode.

Scores are per image (p2p.evaluation.metrics, `reduction="none"`), summed in float64 and divided
by the image count at the end: exact means over a whole split, whatever the batch size. The sums
are one tensor, so ranks can add theirs (`ScoreSums.tensor`, an all-reduce) before the means.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from p2p.evaluation.metrics import l1, psnr, ssim

SCORES = {"l1": l1, "psnr": psnr, "ssim": ssim}  # name -> per-image metric


class ScoreSums:
    """Per-image scores summed over the images seen, and their count."""

    def __init__(self, tensor: torch.Tensor | None = None) -> None:
        # [sum l1, sum psnr, sum ssim, images], float64
        self.tensor = torch.zeros(len(SCORES) + 1, dtype=torch.float64)
        if tensor is not None:
            self.tensor.copy_(tensor)

    def add(self, fake: torch.Tensor, real: torch.Tensor) -> None:
        """Add the scores of `fake` against `real`, two (B, C, H, W) batches in [-1, 1]."""
        if fake.shape[0] == 0:
            return
        fake, real = fake.float(), real.float()
        row = [float(score(fake, real, reduction="none").sum()) for score in SCORES.values()]
        self.tensor += torch.tensor([*row, fake.shape[0]], dtype=torch.float64)

    @property
    def n(self) -> int:
        return int(self.tensor[-1])

    def means(self) -> dict[str, float]:
        """{l1, psnr, ssim}: the means over the images added (0.0 for none)."""
        total = max(float(self.tensor[-1]), 1.0)
        return {k: float(self.tensor[i] / total) for i, k in enumerate(SCORES)}


OnBatch = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], None]


@torch.no_grad()
def score_batches(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    generate: Callable[[torch.Tensor], torch.Tensor],
    *,
    limit: int | None = None,
    on_batch: OnBatch | None = None,
) -> ScoreSums:
    """Run `generate` on every (input, target) batch and score the outputs against the targets.

    Args:
        batches: (input, target) batches, already where `generate` runs.
        generate: input batch -> output batch (the generator, in the mode the caller set).
        limit: score only the first `limit` images in all: the rest are a loader's padding
            (repeats that keep batch counts equal). The padded batches still run through
            `generate` whole, as they were loaded (batch statistics see the whole batch).
        on_batch: called with (input, output, target, kept) before each batch is scored, where
            `kept` is how many of its leading images count: sample grids, shape checks,
            extra metrics.

    Returns:
        The sums; `.means()` gives {l1, psnr, ssim}.
    """
    sums = ScoreSums()
    left = limit
    for real_a, real_b in batches:
        fake_b = generate(real_a)
        kept = real_a.shape[0] if left is None else max(0, min(real_a.shape[0], left))
        if left is not None:
            left -= kept
        if on_batch is not None:
            on_batch(real_a, fake_b, real_b, kept)
        sums.add(fake_b[:kept], real_b[:kept])
    return sums
