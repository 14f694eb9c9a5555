"""The building blocks shared by the networks: normalisation layers, weight init, UpConv.

Both follow the reference implementation (junyanz/pytorch-CycleGAN-and-pix2pix, `networks.py`):
batch norm is affine with running statistics, instance norm is neither, and "none" is an identity
so that module indices, and therefore state_dict keys, are the same for every norm.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

NormFactory = Callable[[int], nn.Module]

NORMS: dict[str, NormFactory] = {
    # BatchNorm2d(eps 1e-5, momentum 0.1): at batch 1 in train mode it acts like instance norm.
    "batch": functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True),
    "instance": functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False),
    "none": lambda num_features: nn.Identity(),
}


def norm_layer(name: str) -> NormFactory:
    """Return a factory `f(num_features) -> nn.Module` for the norm called `name`.

    Args:
        name: "batch", "instance" or "none".

    Raises:
        ValueError: for an unknown name.
    """
    try:
        return NORMS[name]
    except KeyError:
        raise ValueError(f"unknown norm {name!r}; choose one of {', '.join(NORMS)}") from None


def conv_bias(name: str) -> bool:
    """The reference's bias rule: convs followed by a norm get a bias only for instance norm.

    Batch norm has its own shift, so a conv bias would be redundant. The reference gives no bias
    with norm "none" either (its Identity is not InstanceNorm2d); we keep that so files match.
    """
    norm_layer(name)  # validate
    return name == "instance"


_WEIGHT_INITS: dict[str, Callable[[nn.Parameter, float], object]] = {
    "normal": lambda w, gain: nn.init.normal_(w, 0.0, gain),
    "xavier": lambda w, gain: nn.init.xavier_normal_(w, gain=gain),
    "kaiming": lambda w, gain: nn.init.kaiming_normal_(w, a=0, mode="fan_in"),
    "orthogonal": lambda w, gain: nn.init.orthogonal_(w, gain=gain),
}


def init_weights(module: nn.Module, init_type: str = "normal", gain: float = 0.02) -> nn.Module:
    """Initialise conv/linear and batch-norm parameters in place, as pix2pix does.

    Conv, ConvTranspose and Linear weights follow `init_type` (normal: N(0, gain)), their biases
    are zeroed; batch-norm weights are N(1, gain) and biases 0. Instance norm here has no
    parameters. Returns `module` for chaining.

    Args:
        module: the network (all submodules are visited).
        init_type: "normal", "xavier", "kaiming" or "orthogonal".
        gain: std for normal, gain for xavier/orthogonal (unused by kaiming).
    """
    if init_type not in _WEIGHT_INITS:
        raise ValueError(
            f"unknown init_type {init_type!r}; choose one of {', '.join(_WEIGHT_INITS)}"
        )
    init_w = _WEIGHT_INITS[init_type]
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            init_w(m.weight, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:  # incl. SyncBatchNorm
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return module


# Largest input (H x W) for which UpConv computes on CPU with one GEMM + col2im (see below).
UPCONV_GEMM_MAX_PIXELS = 64


class UpConv(nn.ConvTranspose2d):
    """`nn.ConvTranspose2d` (same parameters, init and state_dict keys) with a faster CPU path.

    A transposed convolution is a GEMM followed by col2im: every input pixel's channel vector
    times the weight, viewed as (C_in, C_out * k * k), gives the k x k patch it adds to the
    output, and `F.fold` sums the overlapping patches. oneDNN's ConvTranspose2d on CPU is slow
    on tiny inputs with many channels (the U-Net's 1024 -> 512 layers at 1-8 px: it reorders the
    8M-element weight on every call), so inputs of at most `UPCONV_GEMM_MAX_PIXELS` pixels take
    the GEMM path there; larger ones, GPUs and exports use the library kernel. The same linear
    map either way: outputs agree to float rounding (tests/unit/test_models.py).
    """

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        if (
            x.device.type != "cpu"
            or h * w > UPCONV_GEMM_MAX_PIXELS
            or output_size is not None
            or self.groups != 1
            or self.dilation != (1, 1)
            or self.output_padding != (0, 0)
            or x.dim() != 4
            or torch.jit.is_scripting()
            or torch.jit.is_tracing()  # ONNX export traces: keep the standard operator
        ):
            return super().forward(x, output_size)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        n, c_in = x.shape[:2]
        c_out = self.out_channels
        cols = x.flatten(2).transpose(1, 2) @ self.weight.reshape(c_in, c_out * kh * kw)
        out_hw = ((h - 1) * sh - 2 * ph + kh, (w - 1) * sw - 2 * pw + kw)
        y = F.fold(cols.transpose(1, 2), out_hw, (kh, kw), padding=(ph, pw), stride=(sh, sw))
        return y if self.bias is None else y + self.bias.view(1, c_out, 1, 1)
