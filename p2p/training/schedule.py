"""Learning-rate policies, stepped once at the END of each epoch (as upstream since 2025).

linear (pix2pix): `optim.n_epochs` epochs at the base lr, then `optim.n_epochs_decay` epochs of
linear decay. With 1-based epoch k, the lr used during epoch k is

    lr * (1 - max(0, k - n_epochs) / (n_epochs_decay + 1))

so for 100 + 100: epochs 1..100 at 2e-4, epoch 101 at 2e-4 * 100/101, epoch 200 at 2e-4 / 101.
step: x0.1 every `optim.lr_decay_iters` epochs. plateau: x0.2 when the metric passed to
`.step(metric)` stops improving for 5 epochs. cosine: from lr to 0 over `epochs` epochs.
"""

from __future__ import annotations

import torch
from torch.optim import lr_scheduler

from p2p.config import OptimConfig

LR_POLICIES = ("linear", "step", "plateau", "cosine")


class PlateauScheduler(lr_scheduler.ReduceLROnPlateau):
    """ReduceLROnPlateau (min mode, x0.2, threshold 0.01, patience 5, as the reference) whose
    `.step()` insists on the metric instead of failing obscurely."""

    def step(self, metrics: float | None = None) -> None:  # type: ignore[override]
        if metrics is None:
            raise ValueError("lr_policy 'plateau' needs a metric: call scheduler.step(val_loss)")
        super().step(metrics)


def linear_factor(epoch: int, n_epochs: int, n_epochs_decay: int) -> float:
    """LR multiplier after `epoch` scheduler steps (i.e. during 1-based epoch `epoch + 1`)."""
    return 1.0 - max(0, epoch + 1 - n_epochs) / float(n_epochs_decay + 1)


def build_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, epochs: int
) -> lr_scheduler.LRScheduler | PlateauScheduler:
    """The LR scheduler for `optim.lr_policy`; call `.step()` once after every epoch.

    Args:
        optimizer: G's or D's optimizer (each gets its own scheduler).
        optim: the `optim` config group.
        epochs: total epochs of the run (cfg.epochs); the cosine period.
    """
    policy = optim.lr_policy
    if policy == "linear":
        n, nd = optim.n_epochs, optim.n_epochs_decay
        return lr_scheduler.LambdaLR(optimizer, lambda e: linear_factor(e, n, nd))
    if policy == "step":
        return lr_scheduler.StepLR(optimizer, step_size=optim.lr_decay_iters, gamma=0.1)
    if policy == "plateau":
        return PlateauScheduler(optimizer, mode="min", factor=0.2, threshold=0.01, patience=5)
    if policy == "cosine":
        # The reference uses T_max = n_epochs, which climbs back up during the decay epochs;
        # we anneal over the whole run so the last epoch ends near 0.
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1), eta_min=0.0)
    raise ValueError(f"unknown lr_policy {policy!r}; one of {', '.join(LR_POLICIES)}")
