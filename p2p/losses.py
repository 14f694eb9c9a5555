"""GAN losses on discriminator logits, and the WGAN-GP gradient penalty.

pix2pix uses "vanilla" (the paper's cGAN objective, as BCE on logits against all-ones / all-zeros
maps the size of the PatchGAN output, i.e. a mean over patches). "lsgan" (MSE on the logits) and
"wgangp" (the critic score, plus `gradient_penalty` on the D side) are the reference's
alternatives. The L1 term is plain `F.l1_loss` in the training step.

Each mode is one `GAN_MODES` entry: its loss and the penalty it adds to D's loss, which the
training step asks for with `gan_loss.d_penalty(...)`.

Deliberate difference from the reference: with `gan_mode: wgangp` the training step adds
`gradient_penalty` (weight `loss.lambda_gp`, default 10) to D's loss. The reference defines
`cal_gradient_penalty` but its pix2pix model never calls it, so its "wgangp" is an unconstrained
critic (the WGAN-GP objective without the GP, which makes the critic's scores unbounded). p2p
keeps the penalty: it is what makes wgangp a WGAN-GP. Set `loss.lambda_gp: 0` to reproduce the
reference exactly. vanilla and lsgan match the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from p2p.config import ExperimentConfig, LossConfig


@dataclass(frozen=True)
class GanMode:
    """A `loss.gan_mode`: its loss on D logits, and the penalty it adds to D's loss (if any).

    loss: (pred float32, target_is_real, real_label, fake_label) -> scalar.
    d_penalty: (d, real D input, fake D input, cfg.loss) -> scalar added to loss_D; None: none.
    """

    loss: Callable[[torch.Tensor, bool, float, float], torch.Tensor]
    d_penalty: (
        Callable[[nn.Module, torch.Tensor, torch.Tensor, LossConfig], torch.Tensor] | None
    ) = None


def _targets(pred: torch.Tensor, is_real: bool, real: float, fake: float) -> torch.Tensor:
    return torch.full_like(pred, real if is_real else fake)


# loss.gan_mode -> its entry (p2p.config's gan_mode choices are these names; a test checks it)
GAN_MODES: dict[str, GanMode] = {
    # BCE with logits against all-real / all-fake maps: a mean over B x 1 x h x w patches
    "vanilla": GanMode(
        lambda p, r, rl, fl: F.binary_cross_entropy_with_logits(p, _targets(p, r, rl, fl))
    ),
    "lsgan": GanMode(lambda p, r, rl, fl: F.mse_loss(p, _targets(p, r, rl, fl))),
    # the critic score; D's loss also gets the gradient penalty (module docstring)
    "wgangp": GanMode(
        lambda p, r, rl, fl: -p.mean() if r else p.mean(),
        d_penalty=lambda d, real, fake, lc: gradient_penalty(d, real, fake, weight=lc.lambda_gp),
    ),
}


class GANLoss(nn.Module):
    """`loss(pred_logits, target_is_real) -> scalar`, computed in float32.

    Args:
        mode: a GAN_MODES name: "vanilla" (BCE with logits), "lsgan" (MSE) or "wgangp" (-mean
            for real, +mean for fake, plus a gradient penalty on D: `d_penalty`).
        real_label: target value for real (1.0).
        fake_label: target value for fake (0.0).
    """

    def __init__(self, mode: str = "vanilla", real_label: float = 1.0, fake_label: float = 0.0):
        super().__init__()
        if mode not in GAN_MODES:
            raise ValueError(f"unknown gan_mode {mode!r}; one of {', '.join(GAN_MODES)}")
        self.mode, self.real_label, self.fake_label = mode, real_label, fake_label
        self._spec = GAN_MODES[mode]

    def forward(self, pred: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        pred = pred.float()  # losses in fp32 even under bf16 autocast
        return self._spec.loss(pred, target_is_real, self.real_label, self.fake_label)

    def d_penalty(
        self, d: nn.Module, real: torch.Tensor, fake: torch.Tensor, cfg: ExperimentConfig
    ) -> torch.Tensor | float:
        """What this mode adds to D's loss for D inputs `real` / `fake` (0.0 for none)."""
        if self._spec.d_penalty is None:
            return 0.0
        return self._spec.d_penalty(d, real, fake, cfg.loss)


def gradient_penalty(
    d: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    kind: str = "mixed",
    constant: float = 1.0,
    weight: float = 10.0,
) -> torch.Tensor:
    """WGAN-GP penalty weight * E[(||grad_x D(x)||_2 - constant)^2] (Gulrajani et al. 2017).

    For pix2pix, `real` and `fake` are the conditional D inputs cat(A, B) and cat(A, G(A)).
    The graph is kept (create_graph) so the penalty can be backpropagated into D.

    Args:
        d: the discriminator.
        real: (B, C, H, W) real D input.
        fake: (B, C, H, W) fake D input (detached from G by the caller).
        kind: where x is taken: "real", "fake" or "mixed" (random interpolates per sample).
        constant: target gradient norm.
        weight: lambda_gp; 0 returns a zero tensor without running D.
    """
    if weight <= 0:
        return real.new_zeros(())
    if kind == "real":
        x = real
    elif kind == "fake":
        x = fake
    elif kind == "mixed":
        alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
        x = alpha * real + (1 - alpha) * fake  # (B, C, H, W), one alpha per sample
    else:
        raise ValueError(f"unknown gradient penalty kind {kind!r}; one of real, fake, mixed")
    x = x.detach().requires_grad_(True)
    out = d(x)
    (grad,) = torch.autograd.grad(
        outputs=out, inputs=x, grad_outputs=torch.ones_like(out), create_graph=True
    )
    grad = grad.float().flatten(1)  # (B, C*H*W)
    return weight * ((grad + 1e-16).norm(2, dim=1) - constant).pow(2).mean()
