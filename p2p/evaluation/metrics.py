"""Image-quality metrics for paired translation: L1, PSNR, SSIM (pure torch), FID/LPIPS if local.

All functions take two batches `(B, C, H, W)` of images in [-1, 1] (the generator's tanh range
and the loader's normalisation). L1 is measured in that space (the paper's L1 term, without
lambda). PSNR and SSIM map images to [0, 1] first (data range 1), score each image, then
average over the batch; `reduction="none"` returns the per-image values so a caller can
average over a whole test set exactly.

FID and LPIPS need pretrained networks. They are computed only when their packages AND weight
files are already on this machine (never downloaded); otherwise `optional_metrics_status()`
says why they are unavailable, and evaluate records that reason in metrics.json.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

Reduction = Literal["mean", "none"]

# SSIM constants (Wang et al. 2004): K1, K2, a Gaussian window of 11 taps with sigma 1.5.
# skimage uses the same window: radius int(truncate * sigma + 0.5) = 5 with truncate 3.5.
SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_SIGMA, SSIM_WIN = 1.5, 11


def _check(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(
            f"expected two (B, C, H, W) batches of one shape, got {a.shape}, {b.shape}"
        )


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    # [-1, 1] -> [0, 1] in float64 (sums over many pixels), clamped: data range is exactly 1
    return ((x.detach().double() + 1.0) / 2.0).clamp(0.0, 1.0)


def _reduce(per_image: torch.Tensor, reduction: Reduction) -> torch.Tensor | float:
    return per_image if reduction == "none" else float(per_image.mean())


def l1(a: torch.Tensor, b: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor | float:
    """Mean absolute error in [-1, 1] space (the paper's L1 term), per image then mean."""
    _check(a, b)
    per_image = (a.detach().double() - b.detach().double()).abs().flatten(1).mean(1)  # (B,)
    return _reduce(per_image, reduction)


def psnr(a: torch.Tensor, b: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor | float:
    """Peak signal-to-noise ratio in dB, images mapped to [0, 1] (data range 1).

    Identical images would be +inf; the MSE is floored at 1e-10, capping PSNR at 100 dB.
    """
    _check(a, b)
    mse = (_to_unit(a) - _to_unit(b)).pow(2).flatten(1).mean(1)  # (B,)
    per_image = 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))
    return _reduce(per_image, reduction)


def _gaussian_window(channels: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    r = SSIM_WIN // 2
    x = torch.arange(-r, r + 1, dtype=dtype, device=device)
    g = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    g = g / g.sum()
    w = torch.outer(g, g)  # (11, 11), sums to 1
    return w.expand(channels, 1, SSIM_WIN, SSIM_WIN).contiguous()  # depthwise conv weight


def ssim(a: torch.Tensor, b: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor | float:
    """Structural similarity (Wang et al. 2004) on [0, 1] images, per channel, then averaged.

    Gaussian-weighted local statistics (11x11, sigma 1.5, population covariance), K1=0.01,
    K2=0.03, data range 1; the SSIM map is averaged over "valid" windows only, which equals
    `skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=-1)` (skimage crops the same border).
    Images must be at least 11x11.
    """
    _check(a, b)
    if min(a.shape[-2:]) < SSIM_WIN:
        raise ValueError(f"SSIM needs images of at least {SSIM_WIN}x{SSIM_WIN}, got {a.shape}")
    x, y = _to_unit(a), _to_unit(b)
    c = x.shape[1]
    w = _gaussian_window(c, x.dtype, x.device)

    def blur(t: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H-10, W-10)
        return F.conv2d(t, w, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2  # E[x^2] - E[x]^2 under the Gaussian window
    var_y = blur(y * y) - mu_y**2
    cov_xy = blur(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # (K * data_range)^2 with data_range 1
    s_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    per_image = s_map.mean(dim=(2, 3)).mean(1)  # mean over pixels per channel, then channels
    return _reduce(per_image, reduction)


# ----------------------------------------------------------------------------- FID / LPIPS

# Weight files the packages would otherwise download into torch's hub cache.
_LPIPS_BACKBONE = "alexnet-owt-7be5be79.pth"  # torchvision AlexNet_Weights.IMAGENET1K_V1
_FID_INCEPTION = "pt_inception-2015-12-05-6726825d.pth"  # pytorch_fid FID_WEIGHTS_URL


def _hub_file(name: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def optional_metrics_status() -> dict[str, str | None]:
    """For "fid" and "lpips": None if computable offline, else the reason it is unavailable."""
    status: dict[str, str | None] = {}
    missing_tv = importlib.util.find_spec("torchvision") is None
    for name, package, weights in (
        ("lpips", "lpips", _LPIPS_BACKBONE),
        ("fid", "pytorch_fid", _FID_INCEPTION),
    ):
        if importlib.util.find_spec(package) is None:
            status[name] = f"package '{package}' is not installed"
        elif missing_tv:
            status[name] = f"package 'torchvision' (needed by '{package}') is not installed"
        elif not _hub_file(weights).is_file():
            status[name] = f"weights {_hub_file(weights)} are not on this machine (not downloaded)"
        else:
            status[name] = None
    return status


class OptionalMetrics:
    """Accumulates LPIPS (mean over images) and FID (over the whole set) when available."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.status = optional_metrics_status()
        self.device = torch.device(device)
        self._lpips_net = None
        self._lpips_sum, self._n = 0.0, 0
        self._inception = None
        self._feats_fake: list[torch.Tensor] = []
        self._feats_real: list[torch.Tensor] = []
        if self.status["lpips"] is None:
            import lpips  # weights present in the hub cache: no download happens

            self._lpips_net = lpips.LPIPS(net="alex", verbose=False).to(self.device).eval()
        if self.status["fid"] is None:
            from pytorch_fid.inception import InceptionV3

            block = InceptionV3.BLOCK_INDEX_BY_DIM[2048]
            self._inception = InceptionV3([block]).to(self.device).eval()

    @torch.no_grad()
    def update(self, fake: torch.Tensor, real: torch.Tensor) -> None:
        """Add a batch of outputs and targets, both (B, 3, H, W) in [-1, 1]."""
        fake, real = fake.to(self.device).float(), real.to(self.device).float()
        if self._lpips_net is not None:
            self._lpips_sum += float(self._lpips_net(fake, real).sum())  # (B,1,1,1) distances
            self._n += fake.shape[0]
        if self._inception is not None:
            for x, feats in ((fake, self._feats_fake), (real, self._feats_real)):
                f = self._inception(((x + 1) / 2).clamp(0, 1))[0]  # (B, 2048, 1, 1)
                feats.append(f.flatten(1).double().cpu())

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self._lpips_net is not None and self._n:
            out["lpips"] = self._lpips_sum / self._n
        if self._inception is not None and len(self._feats_fake):
            from pytorch_fid.fid_score import calculate_frechet_distance

            f1 = torch.cat(self._feats_fake).numpy()
            f2 = torch.cat(self._feats_real).numpy()
            if len(f1) >= 2:  # a covariance needs two samples
                out["fid"] = float(
                    calculate_frechet_distance(f1.mean(0), _cov(f1), f2.mean(0), _cov(f2))
                )
        return out


def _cov(f):  # (N, D) features -> (D, D) sample covariance
    import numpy as np

    return np.cov(f, rowvar=False)
