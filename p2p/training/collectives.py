"""What the training ranks exchange besides DDP's gradients: metric means and sums, BatchNorm
running statistics, RNG states.

Every function is a collective: all ranks call it at the same point, or a rank waits forever.
Without a process group (one worker, tests) each returns its input unchanged. NCCL reduces CUDA
tensors only and gloo CPU tensors only, so small CPU tensors travel on the device the process
group's backend wants (`collective_device`).

BatchNorm under DDP: G and D are wrapped with the per-forward buffer broadcast off
(`no_buffer_sync_kwargs`; see p2p.training.loop), so each rank's running statistics follow its
own data; `average_bn_buffers` averages them over ranks at every epoch end, before validation and
checkpointing, so every rank holds the same buffers and the saved generator's statistics reflect
all ranks' data.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from p2p.training.state import rng_state


def _multi_rank() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def collective_device() -> torch.device:
    """Where a tensor must be for the process group's backend: CUDA for NCCL, else CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of a small CPU tensor over all ranks (a new CPU tensor; `x` is left as it is)."""
    if _multi_rank():
        x = x.clone().to(collective_device())
        dist.all_reduce(x)
        x = x.cpu()
    return x


def all_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of a small CPU tensor over all ranks."""
    return all_sum(x) / dist.get_world_size() if _multi_rank() else x


def gather_rng() -> list[dict[str, Any]]:
    """Every rank's RNG states (p2p.training.state.rng_state), in rank order: a checkpoint
    stores them all, so a resume continues each rank's random stream."""
    mine = rng_state()
    if not _multi_rank():
        return [mine]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out


@torch.no_grad()
def average_bn_buffers(module: torch.nn.Module) -> None:
    """Average BatchNorm running statistics over ranks, in place (see the module docstring)."""
    if not _multi_rank():
        return
    dev = collective_device()
    for name, buf in module.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            x = buf.detach().to(dev, torch.float32)
            dist.all_reduce(x)
            buf.copy_((x / dist.get_world_size()).to(buf.device, buf.dtype))


def no_buffer_sync_kwargs() -> dict[str, bool]:
    """DDP kwargs that stop the per-forward buffer broadcast (torch >= 2.13 spells it
    `forward_sync_buffers`, which still syncs once at init: identical initial buffers)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    params = inspect.signature(DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in params:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}
