"""One pix2pix training iteration: update D, then G (reference `Pix2PixModel.optimize_parameters`).

    fake_B = G(A)
    D step:  loss_D = 0.5 * (GAN(D(A, fake_B.detach()), fake) + GAN(D(A, B), real))  [+ GP]
    G step:  loss_G = GAN(D(A, fake_B), real) + lambda_L1 * |fake_B - B|_1, D frozen

The 0.5 slows D relative to G (paper, section 3.3). The detach keeps loss_D from reaching G, and
freezing D's parameters (requires_grad False) keeps loss_G from writing D gradients. No I/O, no
Ray, no MLflow: the training loop calls this and logs the returned floats.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from p2p.checkpoints import unwrap
from p2p.config import ExperimentConfig
from p2p.losses import GANLoss

LOSS_KEYS = ("loss_d", "loss_d_real", "loss_d_fake", "loss_g", "loss_g_gan", "loss_g_l1")


# /proc/cpuinfo flags of CPUs that compute bf16 natively (x86: AVX512-BF16 or AMX; Arm: BF16).
_CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The native-bf16 flags this CPU reports (empty where /proc/cpuinfo is missing)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 | aarch64
            flags.update(value.split())
    return flags & _CPU_BF16_FLAGS


def resolve_autocast(
    precision: str, device: torch.device, *, cpu_flags: set[str] | None = None
) -> tuple[torch.dtype | None, str | None]:
    """The autocast dtype for `train.precision` on `device`, and a one-line note when the
    request cannot be honoured.

    bf16 runs where the hardware computes it: CUDA GPUs that support it (Ampere and later) and
    CPUs with AVX512-BF16, AMX-BF16 or Arm BF16. Elsewhere bf16 would be emulated (slower than
    fp32, with bf16's rounding), so training falls back to fp32 and says so.
    """
    if precision != "bf16":
        return None, None
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, None
        where = f"GPU {torch.cuda.get_device_name(device)}"
    elif device.type == "cpu":
        if cpu_flags is None:
            cpu_flags = cpu_bf16_flags()
        if cpu_flags:
            return torch.bfloat16, None
        where = "this CPU (no avx512_bf16/amx_bf16/bf16 flag in /proc/cpuinfo)"
    else:
        where = f"device {device.type}"
    return None, f"p2p: train.precision bf16 is not native on {where}; training in fp32"


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    """Freeze (False) or unfreeze (True) every parameter of `module`."""
    for p in module.parameters():
        p.requires_grad_(flag)


def train_step(
    g: nn.Module,
    d: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    real_a: torch.Tensor,
    real_b: torch.Tensor,
    cfg: ExperimentConfig,
    *,
    gan_loss: GANLoss,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """One D update then one G update on a batch; returns the losses as floats.

    Args:
        g: generator (may be DDP-wrapped), in train mode.
        d: discriminator (may be DDP-wrapped), in train mode.
        opt_g: G's optimizer.
        opt_d: D's optimizer.
        real_a: (B, input_nc, H, W) inputs in [-1, 1].
        real_b: (B, output_nc, H, W) targets in [-1, 1].
        cfg: reads loss.lambda_l1, loss.lambda_gp (wgangp only).
        gan_loss: GANLoss(cfg.loss.gan_mode).
        autocast_dtype: e.g. torch.bfloat16 to run forwards under autocast (GPU or CPU, see
            `resolve_autocast`); None = fp32.

    Returns:
        dict with LOSS_KEYS. For wgangp, loss_d also includes the gradient penalty.
    """
    amp = (
        torch.autocast(real_a.device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    # For the G step D runs outside DDP: its params are frozen, so there is nothing to all-reduce.
    d_plain = unwrap(d, keep_compiled=True)

    with amp:
        fake_b = g(real_a)  # (B, output_nc, H, W)

    # ---- D step: real pairs vs detached fakes, loss halved
    set_requires_grad(d, True)
    opt_d.zero_grad(set_to_none=True)
    fake_ab = torch.cat([real_a, fake_b.detach()], dim=1)  # (B, in+out, H, W); no grad to G
    real_ab = torch.cat([real_a, real_b], dim=1)
    with amp:
        # Two separate D calls, as the reference: batch-norm statistics stay per kind.
        loss_d_fake = gan_loss(d(fake_ab), False)  # D logits (B, 1, h, w) -> scalar
        loss_d_real = gan_loss(d(real_ab), True)
    loss_d = 0.5 * (loss_d_fake + loss_d_real)
    loss_d = loss_d + gan_loss.d_penalty(d, real_ab, fake_ab, cfg)  # e.g. wgangp's GP; else 0
    loss_d.backward()
    opt_d.step()

    # ---- G step: fool the (frozen) D and stay close to B in L1
    set_requires_grad(d, False)
    try:
        opt_g.zero_grad(set_to_none=True)
        with amp:
            pred_fake = d_plain(torch.cat([real_a, fake_b], dim=1))  # grad flows to G only
        loss_g_gan = gan_loss(pred_fake, True)
        loss_g_l1 = F.l1_loss(fake_b.float(), real_b.float())
        loss_g = loss_g_gan + cfg.loss.lambda_l1 * loss_g_l1
        loss_g.backward()
        opt_g.step()
    finally:
        set_requires_grad(d, True)

    # One device sync for all six numbers.
    values = torch.stack([loss_d, loss_d_real, loss_d_fake, loss_g, loss_g_gan, loss_g_l1])
    return dict(zip(LOSS_KEYS, values.detach().float().cpu().tolist(), strict=True))
