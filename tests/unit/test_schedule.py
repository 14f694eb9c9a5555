"""LR policies: the lr used in each (1-based) epoch, with .step() at every epoch end."""

from __future__ import annotations

import math

import pytest
import torch

from p2p.config import OptimConfig
from p2p.training.schedule import build_scheduler


def _lrs(optim: OptimConfig, epochs: int) -> list[float]:
    """lr in effect during epochs 1..epochs."""
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=optim.lr)
    sched = build_scheduler(opt, optim, epochs)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()  # end of epoch
    return out


def test_linear_paper_schedule_100_plus_100():
    lrs = _lrs(OptimConfig(lr=2e-4, n_epochs=100, n_epochs_decay=100), 200)
    assert lrs[0] == lrs[99] == pytest.approx(2e-4)  # epochs 1..100 at the base lr
    assert lrs[100] == pytest.approx(2e-4 * 100 / 101)  # epoch 101
    assert lrs[149] == pytest.approx(2e-4 * 51 / 101)  # epoch 150
    assert lrs[199] == pytest.approx(2e-4 / 101)  # epoch 200: last, not zero
    assert all(x >= y for x, y in zip(lrs, lrs[1:], strict=False))


def test_linear_small():
    lrs = _lrs(OptimConfig(lr=1.0, n_epochs=3, n_epochs_decay=2), 5)
    assert lrs == pytest.approx([1, 1, 1, 2 / 3, 1 / 3])


def test_step_policy():
    lrs = _lrs(OptimConfig(lr=1.0, lr_policy="step", lr_decay_iters=2), 5)
    assert lrs == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_cosine_policy_anneals_over_the_run():
    lrs = _lrs(OptimConfig(lr=1.0, lr_policy="cosine"), 4)
    assert lrs == pytest.approx([(1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)])


def test_plateau_policy_needs_metric_and_decays():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, OptimConfig(lr=1.0, lr_policy="plateau"), 20)
    with pytest.raises(ValueError, match="needs a metric"):
        sched.step()
    for _ in range(7):  # no improvement: after patience (5) the lr is multiplied by 0.2
        sched.step(1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2)
