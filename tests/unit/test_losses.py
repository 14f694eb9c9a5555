"""GAN losses against hand-computed values, and the gradient penalty against its definition."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from p2p.losses import GANLoss, gradient_penalty


def test_vanilla_is_bce_with_logits_mean_over_patches():
    pred = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])  # (1, 1, 2, 2) patch logits
    loss = GANLoss("vanilla")

    def sp(x):  # softplus = -log(sigmoid(-x))
        return math.log1p(math.exp(x))

    real = sum(sp(-v) for v in (0.0, 2.0, -1.0, 3.0)) / 4  # -log sigmoid(x)
    fake = sum(sp(v) for v in (0.0, 2.0, -1.0, 3.0)) / 4  # -log(1 - sigmoid(x))
    assert loss(pred, True).item() == pytest.approx(real, rel=1e-6)
    assert loss(pred, False).item() == pytest.approx(fake, rel=1e-6)


def test_lsgan_and_wgangp():
    pred = torch.tensor([0.5, -1.5, 2.0])
    assert GANLoss("lsgan")(pred, True).item() == pytest.approx((0.25 + 6.25 + 1.0) / 3)
    assert GANLoss("lsgan")(pred, False).item() == pytest.approx((0.25 + 2.25 + 4.0) / 3)
    assert GANLoss("wgangp")(pred, True).item() == pytest.approx(-1 / 3)
    assert GANLoss("wgangp")(pred, False).item() == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="unknown gan_mode"):
        GANLoss("hinge")


def test_loss_is_float32_for_bf16_logits():
    pred = torch.randn(2, 1, 4, 4).bfloat16()
    assert GANLoss("vanilla")(pred, True).dtype == torch.float32


def test_gradient_penalty_matches_definition_for_linear_critic():
    # D(x) = sum(w * x): grad_x D = w for every x, so GP = weight * (||w|| - 1)^2 exactly.
    w = torch.randn(1, 2, 3, 3)

    class Linear(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(w.clone())

        def forward(self, x):
            return (x * self.w).flatten(1).sum(1)

    d = Linear()
    real, fake = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    for kind in ("mixed", "real", "fake"):
        gp = gradient_penalty(d, real, fake, kind=kind, weight=10.0)
        assert gp.item() == pytest.approx(10.0 * (w.norm().item() - 1) ** 2, rel=1e-4)
    gp.backward()  # differentiable w.r.t. D's parameters (create_graph)
    assert d.w.grad is not None and d.w.grad.abs().sum() > 0
    assert gradient_penalty(d, real, fake, weight=0.0).item() == 0.0
    with pytest.raises(ValueError, match="kind"):
        gradient_penalty(d, real, fake, kind="other")
