"""GAN losses on discriminator logits, and the WGAN-GP gradient penalty.

pix2pix uses "vanilla" (the paper's cGAN objective, as BCE on logits against all-ones / all-zeros
maps the size of the PatchGAN output, i.e. a mean over patches). "lsgan" (MSE on the logits) and
"wgangp" (the critic score, plus `gradient_penalty` on the D side) are the reference's
alternatives. The L1 term is plain `F.l1_loss` in the training step.

Deliberate difference from the reference: with `gan_mode: wgangp` the training step adds
`gradient_penalty` (weight `loss.lambda_gp`, default 10) to D's loss. The reference defines
`cal_gradient_penalty` but its pix2pix model never calls it, so its "wgangp" is an unconstrained
critic (the WGAN-GP objective without the GP, which makes the critic's scores unbounded). p2p
keeps the penalty: it is what makes wgangp a WGAN-GP. Set `loss.lambda_gp: 0` to reproduce the
reference exactly. vanilla and lsgan match the reference.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

GAN_MODES = ("vanilla", "lsgan", "wgangp")


class GANLoss(nn.Module):
    """`loss(pred_logits, target_is_real) -> scalar`, computed in float32.

    Args:
        mode: "vanilla" (BCE with logits), "lsgan" (MSE) or "wgangp" (-mean for real, +mean
            for fake).
        real_label: target value for real (1.0).
        fake_label: target value for fake (0.0).
    """

    def __init__(self, mode: str = "vanilla", real_label: float = 1.0, fake_label: float = 0.0):
        super().__init__()
        if mode not in GAN_MODES:
            raise ValueError(f"unknown gan_mode {mode!r}; one of {', '.join(GAN_MODES)}")
        self.mode, self.real_label, self.fake_label = mode, real_label, fake_label

    def forward(self, pred: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        pred = pred.float()  # losses in fp32 even under bf16 autocast
        if self.mode == "wgangp":
            return -pred.mean() if target_is_real else pred.mean()
        target = torch.full_like(pred, self.real_label if target_is_real else self.fake_label)
        if self.mode == "vanilla":
            return F.binary_cross_entropy_with_logits(pred, target)  # mean over B x 1 x h x w
        return F.mse_loss(pred, target)


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
