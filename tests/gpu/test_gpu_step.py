"""The training step under bf16 autocast on CUDA (moved from tests/unit/test_train_step.py; the
CPU fast paths are checked in tests/unit/test_fast_paths.py)."""

from __future__ import annotations

import math

import pytest
import torch
from step_paths import paths_cfg

from p2p.losses import GANLoss
from p2p.models import build_discriminator, build_generator
from p2p.training.step import train_step

pytestmark = pytest.mark.gpu


def test_bf16_step_on_cuda():
    cfg = paths_cfg()  # the tiny U-Net of the CPU fast-path tests
    torch.manual_seed(0)
    g = build_generator(cfg.model, 3, 3).train().cuda()
    d = build_discriminator(cfg.model, 6).train().cuda()
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    a, b = (torch.rand(2, 3, 32, 32) * 2 - 1).cuda(), (torch.rand(2, 3, 32, 32) * 2 - 1).cuda()
    for _ in range(3):
        out = train_step(
            g, d, opt_g, opt_d, a, b, cfg, gan_loss=GANLoss(), autocast_dtype=torch.bfloat16
        )
    assert all(math.isfinite(v) for v in out.values())
    assert all(p.dtype == torch.float32 for p in g.parameters())  # autocast keeps fp32 weights
