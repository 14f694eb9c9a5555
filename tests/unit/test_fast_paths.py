"""The training step's fast paths on CPU: bf16 autocast, channels_last and torch.compile each
compute the losses of the plain fp32 step (so a GPU run can only fail on CUDA-specific problems),
and `train.precision: bf16` is honoured only where the CPU computes bf16 natively.

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
from p2p.training.step import cpu_bf16_flags, resolve_autocast, train_step

KEYS = ("loss_d", "loss_g_gan", "loss_g_l1")
FP32_REL, BF16_REL = 1e-4, 2e-2


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs on a shared 2-core machine
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cfg():
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


def _losses(cfg, *, bf16=False, channels_last=False, compile_=False, steps=3):
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


@pytest.fixture(scope="module")
def fp32(cfg):
    return _losses(cfg)


def _assert_tracks(got, ref, rel):
    for step, (g, r) in enumerate(zip(got, ref, strict=True)):
        for k in KEYS:
            assert g[k] == pytest.approx(r[k], rel=rel, abs=1e-6), f"step {step} {k}"


def test_channels_last_matches_fp32(cfg, fp32):
    _assert_tracks(_losses(cfg, channels_last=True), fp32, FP32_REL)


def test_bf16_autocast_tracks_fp32(cfg, fp32):
    _assert_tracks(_losses(cfg, bf16=True), fp32, BF16_REL)


def test_bf16_channels_last_tracks_fp32(cfg, fp32):
    _assert_tracks(_losses(cfg, bf16=True, channels_last=True), fp32, BF16_REL)


@pytest.mark.slow  # inductor compiles G and D forward + backward: 1-3 min cold on 2 cores
def test_compile_matches_eager(cfg, fp32):
    _assert_tracks(_losses(cfg, compile_=True), fp32, FP32_REL)
    _assert_tracks(_losses(cfg, compile_=True, bf16=True, channels_last=True), fp32, BF16_REL)


# ----------------------------------------------------------------------------- precision


def test_cpu_bf16_flags(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nflags : amx_bf16\n")
    assert cpu_bf16_flags(x86) == {"avx512_bf16", "amx_bf16"}
    arm = tmp_path / "arm"
    arm.write_text("Features\t: fp asimd bf16 i8mm\n")
    assert cpu_bf16_flags(arm) == {"bf16"}
    old = tmp_path / "old"
    old.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512bw\n")  # AVX512 without BF16
    assert cpu_bf16_flags(old) == set()
    assert cpu_bf16_flags(tmp_path / "missing") == set()


def test_resolve_autocast_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_autocast("fp32", cpu) == (None, None)
    assert resolve_autocast("bf16", cpu, cpu_flags={"avx512_bf16"}) == (torch.bfloat16, None)
    dtype, note = resolve_autocast("bf16", cpu, cpu_flags=set())
    assert dtype is None
    assert note == (
        "p2p: train.precision bf16 is not native on this CPU (no avx512_bf16/amx_bf16/bf16 "
        "flag in /proc/cpuinfo); training in fp32"
    )


def test_resolve_autocast_reads_this_cpu():
    dtype, note = resolve_autocast("bf16", torch.device("cpu"))
    assert (dtype is torch.bfloat16) == bool(cpu_bf16_flags()) == (note is None)
