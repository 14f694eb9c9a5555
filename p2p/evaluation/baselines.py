"""Trivial baselines: what a model must beat to be worth registering.

Each baseline maps an input batch to an output batch, like a generator, and is scored by
`p2p evaluate` on the same images in the same pass as the model:

    input       the input used unchanged as the output (when input and target have one shape)
    untrained   a freshly initialised generator of the same architecture, seeded like training
    classical   the build task's classical method (CLASSICAL below), for datasets that p2p
                built from photos with a known task: bicubic for superres, a Gaussian blur for
                denoise, the grey input for colorize, flat grey for edges

A classical method with a free parameter (the blur's sigma) has it picked on the val split,
never on the split being scored. Margins are the model's PSNR minus each baseline's, in dB.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Method = Callable[[torch.Tensor], torch.Tensor]  # (B, C, H, W) input in [-1, 1] -> output


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (B, C, H, W) batch, reflect-padded, radius 3 sigma."""
    r = max(1, math.ceil(3 * sigma))
    r = min(r, x.shape[-1] - 1, x.shape[-2] - 1)  # reflect padding needs r < size
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # along W
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # along H


def _grey_input(x: torch.Tensor, out_nc: int) -> torch.Tensor:
    """The input's luma as every output channel (a grey input is already luma)."""
    if x.shape[1] == 3:
        x = 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    return x[:, :1].expand(-1, out_nc, -1, -1)


@dataclass(frozen=True)
class Classical:
    """A task's classical method: `make(param, out_nc)` gives the method for one parameter
    value; `params` are the candidates (picked on val when there are several)."""

    label: str  # e.g. "gaussian blur (sigma {p})": {p} is the picked parameter
    make: Callable[[float, int], Method]
    params: tuple[float, ...] = (0.0,)


# build.task -> its classical method (p2p.data.build.TASKS makes the inputs of the same tasks;
# tests/unit/test_baselines.py checks that every task has one)
CLASSICAL: dict[str, Classical] = {
    # the superres input is already the bicubic upscale of the low-resolution image
    "superres": Classical("bicubic upscale (the input)", lambda _, nc: lambda x: x),
    "denoise": Classical(
        "gaussian blur (sigma {p} px, picked on val)",
        lambda s, nc: lambda x: gaussian_blur(x, s),
        params=(0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0),
    ),
    "colorize": Classical("grey (the input's luma)", lambda _, nc: lambda x: _grey_input(x, nc)),
    "edges": Classical("flat grey", lambda _, nc: lambda x: torch.zeros_like(_grey_input(x, nc))),
}


def pick_param(
    classical: Classical,
    val_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    out_nc: int,
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> float:
    """The candidate parameter with the best mean `score` (higher is better) on val."""
    if len(classical.params) == 1:
        return classical.params[0]
    sums = dict.fromkeys(classical.params, 0.0)
    for real_a, real_b in val_batches:
        for p in classical.params:
            sums[p] += float(score(classical.make(p, out_nc)(real_a), real_b).sum())
    return max(classical.params, key=lambda p: sums[p])
