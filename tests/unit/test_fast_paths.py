"""The training step's fast paths on CPU: bf16 autocast, channels_last and torch.compile each
compute the losses of the plain fp32 step (so a GPU run can only fail on CUDA-specific problems),
and `train.precision: bf16` is honoured only where the CPU computes bf16 natively.

Tolerances: tests/step_paths.py. The torch.compile step (minutes to compile on a small CPU)
is checked in tests/integration/test_compile_step.py.
"""

from __future__ import annotations

import pytest
import torch
from step_paths import BF16_REL, FP32_REL, assert_tracks, losses, paths_cfg

from p2p.training.step import cpu_bf16_flags, resolve_autocast

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny convs: tests/conftest.py


@pytest.fixture(scope="module")
def cfg():
    return paths_cfg()


@pytest.fixture(scope="module")
def fp32(cfg):
    return losses(cfg)


def test_channels_last_matches_fp32(cfg, fp32):
    assert_tracks(losses(cfg, channels_last=True), fp32, FP32_REL)


def test_bf16_autocast_tracks_fp32(cfg, fp32):
    assert_tracks(losses(cfg, bf16=True), fp32, BF16_REL)


def test_bf16_channels_last_tracks_fp32(cfg, fp32):
    assert_tracks(losses(cfg, bf16=True, channels_last=True), fp32, BF16_REL)


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
