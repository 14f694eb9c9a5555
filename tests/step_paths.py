"""The training step's fast paths, run side by side with the plain fp32 step (shared by
tests/unit/test_fast_paths.py and tests/integration/test_compile_step.py).

Tolerances (each path vs the fp32 NCHW eager step, same weights, same batches, 3 steps):
- channels_last, torch.compile (fp32): the same arithmetic in another order. fp32 rounding is
  ~6e-8 per operation; sums of a few hundred products stay well under 1e-5 relative (measured
  here: <= 2.1e-7). rel 1e-4.
- bf16 autocast: convolutions take bf16 inputs (8 significand bits, rounding up to 2^-9 = 2e-3
  relative per value); the losses are means over thousands of outputs, where those errors
  mostly cancel (measured here: <= 2.3e-3 relative over 4 steps, also with compile +
  channels_last). rel 2e-2, ten bf16 roundings: a wrong cast or a layer left in the wrong
  dtype moves the losses by far more.
"""

from __future__ import annotations

import pytest
import torch

from p2p.config import load_config
from p2p.losses import GANLoss
from p2p.models import build_discriminator, build_generator
from p2p.training.loop import make_optimizers
from p2p.training.step import train_step

KEYS = ("loss_d", "loss_g_gan", "loss_g_l1")
FP32_REL, BF16_REL = 1e-4, 2e-2


def paths_cfg():
    """A tiny U-Net config whose fast paths can be compared exactly."""
    # no dropout: its masks depend on the memory layout, which channels_last changes
    over = {
        "data.crop_size": 32,
        "data.load_size": 32,
        "model.num_downs": 5,
        "model.base_channels": 8,
        "model.disc_channels": 8,
        "model.use_dropout": False,
    }
    return load_config(None, over)


def losses(cfg, *, bf16=False, channels_last=False, compile_=False, steps=3):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    g = build_generator(cfg.model, 3, 3).to(memory_format=fmt)
    d = build_discriminator(cfg.model, 6).to(memory_format=fmt)
    opt_g, opt_d = make_optimizers(g, d, cfg)  # what the training loop uses (fused Adam)
    if compile_:
        g, d = torch.compile(g), torch.compile(d)
    gen = torch.Generator().manual_seed(1)
    a = (torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1).contiguous(memory_format=fmt)
    b = (torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1).contiguous(memory_format=fmt)
    amp = torch.bfloat16 if bf16 else None
    out = [
        train_step(g, d, opt_g, opt_d, a, b, cfg, gan_loss=GANLoss(), autocast_dtype=amp)
        for _ in range(steps)  # several steps: the optimizer updates are covered too
    ]
    assert all(p.dtype == torch.float32 for p in g.parameters())  # autocast keeps fp32 weights
    return out


def assert_tracks(got, ref, rel):
    for step, (g, r) in enumerate(zip(got, ref, strict=True)):
        for k in KEYS:
            assert g[k] == pytest.approx(r[k], rel=rel, abs=1e-6), f"step {step} {k}"
