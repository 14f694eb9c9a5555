"""The trivial baselines a model must beat (p2p.evaluation.baselines) and the denoise task."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from p2p.data.build_tasks import DENOISE_SIGMA, TASKS, noisy
from p2p.evaluation.baselines import CLASSICAL, gaussian_blur, pick_param
from p2p.evaluation.metrics import psnr


def test_every_build_task_has_a_classical_baseline():
    assert set(CLASSICAL) == set(TASKS)


def test_gaussian_blur_keeps_flat_images_and_mean():
    flat = torch.full((2, 3, 16, 20), 0.25)
    torch.testing.assert_close(gaussian_blur(flat, 1.5), flat)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    y = gaussian_blur(x, 1.0)
    assert y.shape == x.shape
    assert y.std() < x.std()  # smoother
    assert abs(float(y.mean() - x.mean())) < 0.02


def test_gaussian_blur_matches_a_direct_2d_kernel():
    x = torch.rand(1, 1, 12, 12)
    s, r = 0.8, 3
    k1 = torch.exp(-0.5 * (torch.arange(-r, r + 1.0) / s) ** 2)
    k2 = torch.outer(k1, k1) / k1.sum() ** 2
    padded = torch.nn.functional.pad(x, (r, r, r, r), mode="reflect")
    direct = torch.nn.functional.conv2d(padded, k2.view(1, 1, 2 * r + 1, 2 * r + 1))
    torch.testing.assert_close(gaussian_blur(x, s), direct, atol=1e-6, rtol=1e-5)


def test_blur_sigma_is_picked_on_the_given_batches():
    torch.manual_seed(0)
    clean = gaussian_blur(torch.rand(4, 3, 32, 32) * 2 - 1, 2.0)  # smooth images
    light = [(clean + 0.05 * torch.randn_like(clean), clean)]
    heavy = [(clean + 0.6 * torch.randn_like(clean), clean)]
    c = CLASSICAL["denoise"]

    def score(o, t):
        return psnr(o, t, reduction="none")

    lo, hi = pick_param(c, light, 3, score), pick_param(c, heavy, 3, score)
    assert lo in c.params and hi in c.params
    assert hi > lo  # more noise wants more blur


def test_colorize_baseline_is_the_grey_input():
    grey = torch.rand(2, 1, 8, 8) * 2 - 1
    out = CLASSICAL["colorize"].make(0.0, 3)(grey)
    assert out.shape == (2, 3, 8, 8)
    torch.testing.assert_close(out[:, 2], grey[:, 0])


def test_noisy_is_deterministic_per_tile_and_has_the_stated_strength():
    rng = np.random.default_rng(0)
    tile = Image.fromarray(rng.integers(60, 190, (64, 64, 3), dtype=np.uint8))
    a, b = noisy(tile), noisy(tile)
    assert a.tobytes() == b.tobytes()  # same tile, same noise: builds are byte-identical
    other = Image.fromarray(np.asarray(tile)[::-1].copy())
    diff = np.asarray(a, np.float64) - np.asarray(tile, np.float64)
    assert 0.8 * DENOISE_SIGMA < np.std(diff) <= DENOISE_SIGMA  # a little is clipped away
    weak = np.asarray(noisy(tile, sigma=10.0), np.float64) - np.asarray(tile, np.float64)
    assert np.std(weak) == pytest.approx(10.0, rel=0.05)  # no clipping: exactly the sigma
    assert not np.array_equal(np.asarray(noisy(other))[::-1] - np.asarray(other)[::-1], diff)
