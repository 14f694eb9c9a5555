"""Metrics against scikit-image's reference implementations on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data, transform
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from p2p.evaluation.metrics import l1, optional_metrics_status, psnr, ssim


def _photo(name: str, size=(72, 60)) -> np.ndarray:
    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return transform.resize(img[..., :3], size, anti_aliasing=True)  # float64 HWC in [0, 1]


def _t(*imgs: np.ndarray) -> torch.Tensor:
    """HWC [0, 1] numpy images -> (B, C, H, W) float32 in [-1, 1] (the loader's range)."""
    return torch.stack([torch.from_numpy(i).permute(2, 0, 1).float() * 2 - 1 for i in imgs])


def _pairs():
    rng = np.random.default_rng(0)
    astro, cat, coffee = _photo("astronaut"), _photo("chelsea"), _photo("coffee")
    noisy = np.clip(astro + rng.normal(0, 0.08, astro.shape), 0, 1)
    dark = astro * 0.6
    return [(astro, cat), (astro, noisy), (coffee, dark), (cat, np.roll(cat, 3, axis=1))]


def _ssim_ref(x, y):
    # Wang et al. settings, as documented in skimage
    return structural_similarity(
        x,
        y,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=-1,
    )


@pytest.mark.parametrize("i", range(4))
def test_ssim_matches_skimage(i):
    x, y = _pairs()[i]
    # quantise as the float32 pipeline does, so both see the same pixels
    x32, y32 = (x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64))
    ref = _ssim_ref(x32, y32)
    assert ssim(_t(x), _t(y)) == pytest.approx(ref, abs=1e-3)
    assert abs(ssim(_t(x), _t(y)) - ref) < 1e-5  # in practice it is exact to float precision


def test_ssim_identical_is_one_and_symmetric():
    x, y = _pairs()[0]
    assert ssim(_t(x), _t(x)) == pytest.approx(1.0, abs=1e-9)
    assert ssim(_t(x), _t(y)) == pytest.approx(ssim(_t(y), _t(x)), abs=1e-12)


def test_psnr_matches_skimage():
    for x, y in _pairs():
        ref = peak_signal_noise_ratio(
            x.astype(np.float32).astype(np.float64),
            y.astype(np.float32).astype(np.float64),
            data_range=1.0,
        )
        assert psnr(_t(x), _t(y)) == pytest.approx(ref, abs=1e-4)


def test_batch_is_mean_of_per_image_values():
    pairs = _pairs()
    a = _t(*[p[0] for p in pairs])
    b = _t(*[p[1] for p in pairs])
    for fn, ref in (
        (psnr, lambda x, y: peak_signal_noise_ratio(x, y, data_range=1.0)),
        (ssim, _ssim_ref),
    ):
        per = fn(a, b, reduction="none")
        assert per.shape == (4,)
        refs = [
            ref(x.astype(np.float32).astype(float), y.astype(np.float32).astype(float))
            for x, y in pairs
        ]
        np.testing.assert_allclose(per.numpy(), refs, atol=1e-4)
        assert fn(a, b) == pytest.approx(float(np.mean(refs)), abs=1e-4)
    # PSNR is per-image then mean, not PSNR of the pooled MSE
    pooled = 10 * np.log10(1 / np.mean([np.mean((x - y) ** 2) for x, y in pairs]))
    assert abs(psnr(a, b) - pooled) > 0.1


def test_l1_in_minus_one_one_space():
    x, y = _pairs()[1]
    expected = np.abs((x * 2 - 1).astype(np.float32) - (y * 2 - 1).astype(np.float32)).mean()
    assert l1(_t(x), _t(y)) == pytest.approx(float(expected), rel=1e-5)
    assert l1(_t(x), _t(x)) == 0.0


def test_identical_psnr_is_capped_not_inf():
    x = _t(_pairs()[0][0])
    assert psnr(x, x) == pytest.approx(100.0)


def test_shape_errors():
    a = torch.zeros(1, 3, 16, 16)
    with pytest.raises(ValueError, match="shape"):
        psnr(a, torch.zeros(1, 3, 16, 8))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_optional_metrics_report_a_reason_when_unavailable():
    status = optional_metrics_status()
    assert set(status) == {"fid", "lpips"}
    for name, reason in status.items():
        # either computable offline, or a sentence naming what is missing
        assert reason is None or ("not installed" in reason or "not on this machine" in reason), (
            name,
            reason,
        )


def test_optional_metrics_need_package_and_local_weights(monkeypatch, tmp_path):
    """Availability is decided offline: packages importable AND weight files in torch's hub
    cache; nothing is ever downloaded."""
    import importlib.util

    from p2p.evaluation import metrics

    real = importlib.util.find_spec
    installed = {"lpips", "pytorch_fid", "torchvision"}
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name in installed else real(name, *a),
    )
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    status = optional_metrics_status()
    assert "not on this machine" in status["lpips"] and "not on this machine" in status["fid"]
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / metrics._FID_INCEPTION).write_bytes(b"x")
    status = optional_metrics_status()
    assert status["fid"] is None and "alexnet" in status["lpips"]
    installed.discard("torchvision")
    assert "torchvision" in optional_metrics_status()["fid"]
