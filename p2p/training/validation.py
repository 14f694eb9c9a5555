"""Per-epoch validation of the training loop: val/l1, val/psnr, val/ssim and a sample grid.

The images are scored by p2p.evaluation.scoring, as `p2p evaluate` scores them; what is
particular to training is the data split over ranks (each rank scores its share, the sums are
added over ranks) and the mode: `eval.eval_mode` false is the paper's setting, dropout on and
batch statistics (unseeded dropout here: validation only tracks progress), true is running
statistics (p2p.inference.inference_mode, which also restores the BN running statistics).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from p2p.config import ExperimentConfig
from p2p.training.collectives import all_sum
from p2p.training.tracking import RunLogger, sample_grid

if TYPE_CHECKING:
    from p2p.data.shard_index import ShardIndex


@torch.no_grad()
def validate(
    cfg: ExperimentConfig,
    g: torch.nn.Module,
    rank: int,
    world: int,
    per_worker_batch: int,
    to_device: Callable[[torch.Tensor], torch.Tensor],
    amp_dtype: torch.dtype | None,
    logger: RunLogger,
    epoch: int,
    *,
    index: ShardIndex,
) -> dict[str, float]:
    """{val_l1, val_psnr, val_ssim} over `train.val_batches` equal batches per rank, summed over
    ranks (a collective: every rank calls it); rank 0 logs the sample grid as
    samples/epoch_NNNN.png (NNNN = epochs finished). Empty dict when the shards have no val
    split. `index` is the shard set's index, read once by the training loop."""
    from p2p.data.dataset import make_loader
    from p2p.evaluation.scoring import ScoreSums, score_batches
    from p2p.inference import inference_mode
    from p2p.training.state import unwrap

    n_val = index.samples("val")
    if cfg.train.val_batches <= 0 or n_val == 0:
        return {}
    # at most one pass over the split: a small val split is not counted twice
    num_batches = min(cfg.train.val_batches, math.ceil(n_val / (per_worker_batch * world)))
    net = unwrap(g)  # no DDP forward: no backward follows
    loader = make_loader(
        cfg.data.shards,
        "val",
        cfg.data,
        batch_size=per_worker_batch,
        rank=rank,
        world_size=world,
        train=False,
        seed=cfg.train.seed,
        epoch=0,
        num_batches=num_batches,
        index=index,
    )
    # The last ranks' final batches are padded with repeats of the first samples (equal batch
    # counts keep the collectives in step); those repeats are left out of the sums.
    keep = num_batches * per_worker_batch - loader.dataset.padded
    grid: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def batches():
        for real_a, real_b in loader:
            yield to_device(real_a), to_device(real_b)

    def generate(real_a: torch.Tensor) -> torch.Tensor:
        with torch.autocast(real_a.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            return net(real_a).float()

    def collect(real_a: torch.Tensor, fake_b: torch.Tensor, real_b: torch.Tensor, _: int) -> None:
        if rank == 0 and len(grid) < cfg.eval.num_samples:  # samples for the grid
            grid.extend(zip(real_a.cpu(), fake_b.cpu(), real_b.cpu(), strict=True))

    mode = "eval" if cfg.eval.eval_mode else "paper"
    with inference_mode(net, mode):
        sums = score_batches(batches(), generate, limit=keep, on_batch=collect)
    sums = ScoreSums(all_sum(sums.tensor))  # equal batches per rank: all ranks get here
    val = {f"val_{k}": v for k, v in sums.means().items()}
    if rank == 0 and grid:  # input | output | target, one row per sample
        cols = [torch.stack(c) for c in zip(*grid[: cfg.eval.num_samples], strict=True)]
        image = sample_grid(*cols, max_rows=cfg.eval.num_samples)
        logger.log_image(image, f"samples/epoch_{epoch:04d}.png")
    return val
