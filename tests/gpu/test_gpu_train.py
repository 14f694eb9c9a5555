"""The GPU path of training: bf16 autocast + channels_last (+ torch.compile) computes the same
losses as fp32 within bf16 tolerance, and `fit` trains on a GPU worker (NCCL backend)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.fixture
def gpu_cfg(tiny_cfg):
    # no dropout: its masks depend on the memory layout, which channels_last changes
    return tiny_cfg.replace(**{"model.use_dropout": False, "train.batch_size": 4})


def _run_steps(cfg, *, bf16: bool, channels_last: bool, compile_: bool) -> dict[str, float]:
    from p2p.losses import GANLoss
    from p2p.models import build_discriminator, build_generator
    from p2p.training.loop import configure_backends, make_optimizers
    from p2p.training.step import train_step

    dev = torch.device("cuda")
    configure_backends(dev)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    g = build_generator(cfg.model, 3, 3).to(dev, memory_format=fmt)
    d = build_discriminator(cfg.model, 6).to(dev, memory_format=fmt)
    opt_g, opt_d = make_optimizers(g, d, cfg)
    if compile_:
        g, d = torch.compile(g), torch.compile(d)
    gen = torch.Generator().manual_seed(1)
    a = (torch.rand(4, 3, 64, 64, generator=gen) * 2 - 1).to(dev).contiguous(memory_format=fmt)
    b = (torch.rand(4, 3, 64, 64, generator=gen) * 2 - 1).to(dev).contiguous(memory_format=fmt)
    gan = GANLoss(cfg.loss.gan_mode).to(dev)
    losses = []
    for _ in range(3):  # three steps: the optimizer updates are covered too
        losses.append(
            train_step(
                g,
                d,
                opt_g,
                opt_d,
                a,
                b,
                cfg,
                gan_loss=gan,
                autocast_dtype=torch.bfloat16 if bf16 else None,
            )
        )
    return losses


@pytest.mark.parametrize("compile_", [False, True], ids=["eager", "compile"])
def test_bf16_channels_last_matches_fp32(gpu_cfg, compile_):
    fp32 = _run_steps(gpu_cfg, bf16=False, channels_last=False, compile_=False)
    fast = _run_steps(gpu_cfg, bf16=True, channels_last=True, compile_=compile_)
    for ref, got in zip(fp32, fast, strict=True):
        for key in ("loss_d", "loss_g_gan", "loss_g_l1"):
            assert got[key] == pytest.approx(ref[key], rel=3e-2, abs=1e-2), key


def test_fit_trains_on_gpu(gpu_cfg, tmp_path, monkeypatch):
    pytest.importorskip("ray", reason="fit() needs Ray (make gpu-check runs without it)")
    from p2p.checkpoints import load_generator
    from p2p.data.build import build_demo
    from p2p.data.shards import write_shards
    from p2p.training.trainer import fit

    monkeypatch.chdir(tmp_path)
    cfg = gpu_cfg.replace(
        **{
            "build.num_pairs": 20,
            "build.size": 72,
            "data.load_size": 72,
            "resources.use_gpu": True,
            "resources.num_workers": 1,
            "resources.gpus_per_worker": 1,
            "train.epochs": 2,
            "train.log_every": 1,
            "train.precision": "bf16",
            "train.channels_last": True,
            "train.storage_path": str(tmp_path / "runs"),
        }
    )
    build_demo(tmp_path / "raw", cfg.build, cfg.data)
    write_shards(tmp_path / "raw", tmp_path / "shards", cfg.data)
    result = fit(cfg, shards=str(tmp_path / "shards"), out_dir=tmp_path / "models")
    assert result.metrics["epoch"] == 2 and result.metrics["step"] > 0
    assert torch.isfinite(torch.tensor(result.metrics["loss_g_l1"]))
    g = load_generator(result.generator_path)
    assert g(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)
