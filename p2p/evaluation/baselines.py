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

import contextlib
import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from p2p.config import ExperimentConfig

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


def built_task(cfg: ExperimentConfig) -> str | None:
    """The build task that made the data (`build.task`), if p2p built it from photos."""
    d = cfg.data
    return cfg.build.task if d.source == "demo" or d.source_format == "photos" else None


def untrained_like(g: nn.Module, cfg: ExperimentConfig) -> nn.Module:
    """A copy of `g` freshly initialised as training initialises (seeded by train.seed), with
    reset batch-norm statistics: the generator before any step."""
    from p2p.models.layers import init_weights

    g0 = copy.deepcopy(g)
    torch.manual_seed(cfg.train.seed)
    init_weights(g0, cfg.model.init_type, cfg.model.init_gain)
    for m in g0.modules():
        if hasattr(m, "reset_running_stats"):
            m.reset_running_stats()
    return g0


def baseline_methods(
    g: nn.Module,
    cfg: ExperimentConfig,
    mode: str,
    val_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None,
) -> tuple[dict[str, Method], dict[str, str]]:
    """name -> method for each baseline that applies to `g` on this data, and name -> what it
    is. `val_batches()` gives the val split (None: no val split) to pick a classical
    parameter on; the untrained generator runs in the same inference `mode` as the model."""
    from p2p.evaluation.metrics import psnr
    from p2p.inference import DEFAULT_SEED, dropout_seed, inference_mode

    methods: dict[str, Method] = {}
    labels: dict[str, str] = {}
    if cfg.data.input_nc == cfg.data.output_nc:  # doing nothing is defined
        methods["input"], labels["input"] = (lambda x: x), "the input as the output"
    g0 = untrained_like(g, cfg)

    def untrained(x: torch.Tensor) -> torch.Tensor:
        with inference_mode(g0, mode), contextlib.ExitStack() as stack:
            if mode == "paper":  # the model's paper-mode scores use this seed too
                stack.enter_context(dropout_seed(g0, DEFAULT_SEED))
            return g0(x)

    methods["untrained"], labels["untrained"] = untrained, "the untrained generator"
    task = built_task(cfg)
    if task in CLASSICAL:
        c = CLASSICAL[task]
        param = c.params[0]
        if len(c.params) > 1 and val_batches is not None:
            param = pick_param(
                c, val_batches(), cfg.data.output_nc, lambda o, t: psnr(o, t, reduction="none")
            )
        methods["classical"] = c.make(param, cfg.data.output_nc)
        labels["classical"] = f"{task}: " + c.label.format(p=param)
    return methods, labels
