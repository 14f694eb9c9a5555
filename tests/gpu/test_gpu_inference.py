"""Translation on CUDA gives the CPU's images (moved from tests/unit: a GPU test belongs here).
Both inference modes: eval (running statistics) and paper (each image's own statistics, the
seeded dropout mask, which is integer arithmetic and so identical on every device)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from p2p.config import load_config
from p2p.inference import seeded_dropout, translate
from p2p.models import build_generator

pytestmark = pytest.mark.gpu

SMALL = {
    "data.crop_size": 64,
    "data.load_size": 72,
    "train.batch_size": 1,  # batch norm at batch 1: eval.inference_mode auto -> paper
    "model.num_downs": 6,
    "model.base_channels": 4,
}


def _generator(cfg):
    """An untrained generator with non-default BN running statistics."""
    torch.manual_seed(0)
    g = build_generator(cfg.model, cfg.data.input_nc, cfg.data.output_nc).train()
    with torch.no_grad():
        g(torch.rand(4, 3, 64, 64) * 2 - 1)
    return g.eval()


def _img(seed: int, size: tuple[int, int]) -> Image.Image:
    """A smooth random image (w, h): not a multiple of 64, so resized for the net and back."""
    small = np.random.default_rng(seed).random((size[1] // 8, size[0] // 8, 3)) * 255
    return Image.fromarray(small.astype(np.uint8)).resize(size, Image.BICUBIC)


def _close(a: Image.Image, b: Image.Image) -> None:
    # TF32 convolutions on the GPU: allow a few 8-bit levels here and there
    diff = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))
    assert diff.mean() < 0.5 and diff.max() <= 8


@pytest.mark.parametrize("mode", ["eval", "paper"])
def test_translate_on_cuda_matches_cpu(mode):
    cfg = load_config(None, SMALL)
    g = _generator(cfg)
    img = _img(8, (96, 64))
    (cpu,) = translate(g, [img], cfg, mode=mode, seed=3)
    (gpu,) = translate(g.cuda(), [img], cfg, mode=mode, seed=3)
    _close(cpu, gpu)


def test_seeded_dropout_mask_is_the_same_on_cuda():
    x = torch.ones(1, 512, 16, 16)
    cpu_mask = seeded_dropout(x, torch.tensor(3), 2, 0.5)
    gpu_mask = seeded_dropout(x.cuda(), torch.tensor(3).cuda(), 2, 0.5).cpu()
    assert torch.equal(cpu_mask, gpu_mask)
