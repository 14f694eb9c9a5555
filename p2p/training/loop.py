"""`train_loop_per_worker`: the Ray Train entry point, run once per worker process.

The worker side of Ray Train: `trainer.py` (driver: TorchTrainer, ScalingConfig, RunConfig),
`failures.py` (controller callback) and `distributed.py` (process-group backend, placement) hold
the other `ray.train` calls. The four touch points here are numbered:
(1) `get_context` (rank and world size: data split and per-worker batch), (2) `prepare_model`
(device + DDP), (3) `get_checkpoint` (resume), (4) `report` (metrics + checkpoint). The maths is
`p2p.training.step.train_step`; what ranks exchange is in `p2p.training.collectives`, the
per-epoch validation in `p2p.training.validation`; everything else here is plumbing.

Batch semantics: `train.batch_size` is the GLOBAL batch. Each of the W workers gets
`batch_size // W` samples per step and DDP averages the gradients, so one optimizer step sees the
same number of images, and uses the same learning rate, whatever the number of workers.
`train.steps_per_epoch` (0 = train pairs // global batch) is the same for every rank: each rank
reads exactly that many equal batches (p2p.data.dataset.make_loader), so no rank waits forever in
an all-reduce.

BatchNorm under DDP (pix2pix uses BatchNorm in G and D), chosen deliberately:
- G and D are wrapped separately, each with the per-forward buffer broadcast off
  (`broadcast_buffers=False`, `no_buffer_sync_kwargs`). The default (True) copies
  rank 0's BN running statistics into every rank, in place, before each forward; D runs several
  forwards per step (real, fake, fake-for-G), and that in-place copy breaks autograd on CUDA with
  recent torch ("modified by an inplace operation"), besides throwing away the other ranks'
  statistics.
- Training normalises with per-rank batch statistics (each rank's `batch_size // W` samples), as
  the reference implementation's own DDP mode does. SyncBatchNorm would pool statistics over the
  global batch, but torch implements it for GPUs only, and CPU runs must do the same maths.
- Running statistics (used only in eval mode) are averaged over ranks at every epoch end, before
  validation and checkpointing (`p2p.training.collectives.average_bn_buffers`).

Checkpoints: every `train.checkpoint_every` epochs and after the last one, rank 0 writes the full
state (p2p.training.state) into `epoch_NNNN` (NNNN = epochs finished) and every rank calls
`report` (it is a barrier). A restarted worker group, or the same command run again with the
same run name, resumes from the latest one: step, epoch, optimizers, schedulers, RNG states and
the metric log continue.

Test-only fault injection: when the driver's environment has `P2P_FAULT_STEP=k`, the last rank
calls `os._exit(1)` on reaching global step k, but only in an attempt that did not start from a
checkpoint, so the restarted attempt runs through (it first waits until Ray has registered the
last checkpoint; see `_fault_exit`). It is off unless that variable is set.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any

import torch

from p2p.config import ExperimentConfig
from p2p.training.collectives import all_mean, average_bn_buffers, gather_rng, no_buffer_sync_kwargs
from p2p.training.runtime import configure_backends
from p2p.training.state import (
    TrainState,
    apply_optim_config,
    load_state,
    save_state,
    seed_everything,
)
from p2p.training.tracking import RunLogger
from p2p.training.validation import validate

# make_optimizers is also the benchmarks'; configure_backends lives in p2p.training.runtime
__all__ = ["configure_backends", "make_optimizers", "train_loop_per_worker"]

if TYPE_CHECKING:
    from p2p.data.shard_index import ShardIndex


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, float]:
    """Train G and D on this worker's share of the data; report checkpoints to Ray.

    Args:
        config: {"config": cfg.to_dict(), "mlflow_run_id": str | None, "tracking_uri": str,
            "fault_step": int (test-only, 0 = off)}.

    Returns:
        The final metrics (rank 0's value becomes `Result.return_value`).
    """
    import ray.train
    import ray.train.torch

    from p2p.data.dataset import make_loader
    from p2p.data.shard_index import read_index
    from p2p.losses import GANLoss
    from p2p.models import build_discriminator, build_generator
    from p2p.training.distributed import describe_placement, gather_placement, write_placement
    from p2p.training.schedule import build_scheduler
    from p2p.training.step import resolve_autocast, train_step

    cfg = ExperimentConfig.from_dict(config["config"])
    t = cfg.train

    # (1) who am I: rank and world size decide the data split and the per-worker batch
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    per_worker_batch = t.batch_size // world  # global batch split evenly (validated in config)
    configure_backends(device)
    amp_dtype, note = resolve_autocast(t.precision, device)  # bf16 where native, else fp32
    if note and rank == 0:
        _say(note)
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    placement = gather_placement()  # node IP, node rank, interface of every rank

    # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's).
    seed_everything(t.seed)
    g = build_generator(cfg.model, cfg.data.input_nc, cfg.data.output_nc)
    d = build_discriminator(cfg.model, cfg.data.input_nc + cfg.data.output_nc)
    g, d = g.to(memory_format=memory_format), d.to(memory_format=memory_format)

    # (2) device + DDP, G and D separately (see the module docstring for broadcast_buffers)
    ddp_kwargs = no_buffer_sync_kwargs()
    g = ray.train.torch.prepare_model(g, parallel_strategy_kwargs=ddp_kwargs)
    d = ray.train.torch.prepare_model(d, parallel_strategy_kwargs=ddp_kwargs)
    if t.compile:
        g, d = torch.compile(g), torch.compile(d)

    opt_g, opt_d = make_optimizers(g, d, cfg)
    epochs = cfg.epochs
    state = TrainState(
        g=g,
        d=d,
        opt_g=opt_g,
        opt_d=opt_d,
        sched_g=build_scheduler(opt_g, cfg.optim, epochs),
        sched_d=build_scheduler(opt_d, cfg.optim, epochs),
    )
    gan_loss = GANLoss(cfg.loss.gan_mode).to(device)

    # (3) resume: a restarted worker group or a re-run with the same run name lands here
    checkpoint = ray.train.get_checkpoint()
    rng_restored = False
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            blob = load_state(ckpt_dir, state, rank=rank, world_size=world, map_location=device)
        rng_restored = blob["rng_restored"]
        # optim changed since (p2p train --allow-changed-params): train with the new values
        apply_optim_config(state, blob["config"].get("optim") or {}, cfg.optim)
    if not rng_restored:  # fresh start, or a different world size: per-rank random streams
        seed_everything(t.seed + 1000 * rank + state.step)
    fault_step = int(config.get("fault_step") or 0) if checkpoint is None else 0

    logger = RunLogger(config.get("mlflow_run_id"), config.get("tracking_uri"), enabled=rank == 0)
    index = read_index(cfg.data.shards)  # once: every epoch's train and val loaders use it
    steps_per_epoch = t.steps_per_epoch or _steps_per_epoch(index, t.batch_size)
    total_steps = steps_per_epoch * epochs
    if rank == 0 and state.epoch >= epochs:
        _say(f"p2p train: all {epochs} epochs already done (step {state.step})")
    elif rank == 0:
        _say(
            f"p2p train: {world} worker(s) on {device.type}, global batch {t.batch_size} "
            f"({per_worker_batch}/worker), {steps_per_epoch} steps/epoch, epochs "
            f"{state.epoch + 1}..{epochs}, starting at step {state.step}"
        )
        _say(f"p2p train: {describe_placement(placement)}")

    def to_device(x: torch.Tensor) -> torch.Tensor:
        return x.to(device, non_blocking=True).contiguous(memory_format=memory_format)

    metrics: dict[str, float] = {}
    last_report = time.monotonic()
    while state.epoch < epochs:
        epoch = state.epoch  # 0-based index of the epoch being trained
        g.train()
        d.train()
        loader = make_loader(
            cfg.data.shards,
            "train",
            cfg.data,
            batch_size=per_worker_batch,
            rank=rank,
            world_size=world,
            train=True,
            seed=t.seed,
            epoch=epoch,
            num_batches=t.steps_per_epoch or None,
            index=index,
        )
        sums = torch.zeros(3, dtype=torch.float64)  # loss_d, loss_g_gan, loss_g_l1 since last log
        n_sum, t_log, t_epoch = 0, time.perf_counter(), time.perf_counter()
        step0 = state.step  # global step at the start of this epoch (for the ETA)
        for real_a, real_b in loader:
            losses = train_step(
                g,
                d,
                opt_g,
                opt_d,
                to_device(real_a),
                to_device(real_b),
                cfg,
                gan_loss=gan_loss,
                autocast_dtype=amp_dtype,
            )
            state.step += 1
            sums += torch.tensor([losses["loss_d"], losses["loss_g_gan"], losses["loss_g_l1"]])
            n_sum += 1
            if fault_step and state.step == fault_step and rank == world - 1:
                _fault_exit(fault_step, rank, last_report)  # test-only
            if state.step % t.log_every == 0:
                mean = all_mean(sums / n_sum)  # average over the interval and the ranks
                elapsed = time.perf_counter() - t_log
                row = {
                    "step": state.step,
                    "epoch": epoch + 1,
                    "loss_d": float(mean[0]),
                    "loss_g_gan": float(mean[1]),
                    "loss_g_l1": float(mean[2]),
                    "lr": opt_g.param_groups[0]["lr"],
                    "images_per_s": n_sum * t.batch_size / max(elapsed, 1e-9),
                }
                state.log.append(row)
                if rank == 0:
                    logger.log_metrics(
                        {f"train/{k}": v for k, v in row.items() if k != "step"}, state.step
                    )
                    _print_progress(row, epochs, total_steps, state.step - step0, t_epoch)
                sums.zero_()
                n_sum, t_log = 0, time.perf_counter()

        state.epoch = epoch + 1
        average_bn_buffers(g)  # every rank: the same running statistics (p2p.training.collectives)
        average_bn_buffers(d)

        val = validate(
            cfg, g, rank, world, per_worker_batch, to_device, amp_dtype, logger, state.epoch,
            index=index,
        )  # fmt: skip
        last = state.log[-1] if state.log else {}
        metrics = {
            "step": state.step,
            "epoch": state.epoch,
            **{k: last[k] for k in ("loss_d", "loss_g_gan", "loss_g_l1", "lr") if k in last},
            "images_per_s": (state.step - step0) * t.batch_size / (time.perf_counter() - t_epoch),
            **val,
        }
        if val:  # the row of the epoch's last step carries its val metrics
            if not state.log or state.log[-1]["step"] != state.step:
                state.log.append({"step": state.step, "epoch": state.epoch})
            state.log[-1].update(val)
        for sched in (state.sched_g, state.sched_d):  # lr of the next epoch
            _step_scheduler(sched, val.get("val_l1", last.get("loss_g_l1")))
        if rank == 0:
            logger.log_metrics({f"val/{k[4:]}": v for k, v in val.items()}, state.step)
            _say(
                f"p2p train: epoch {state.epoch}/{epochs} done, step {state.step}, "
                + " ".join(f"{k} {v:.4g}" for k, v in val.items())
            )

        if state.epoch % t.checkpoint_every == 0 or state.epoch == epochs:
            rngs = gather_rng()  # every rank's RNG state, so a resume continues each stream
            # (4) report: a barrier on every rank; rank 0 attaches the checkpoint directory
            with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
                ckpt = None
                if rank == 0:
                    save_state(tmp, state, cfg, rng=rngs, metrics=metrics)
                    write_placement(tmp, placement)  # where this attempt's ranks ran
                    ckpt = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(
                    metrics, checkpoint=ckpt, checkpoint_dir_name=f"epoch_{state.epoch:04d}"
                )
            last_report = time.monotonic()
    return metrics


# ----------------------------------------------------------------------------- setup


def make_optimizers(
    g: torch.nn.Module, d: torch.nn.Module, cfg: ExperimentConfig
) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """One Adam per network (lr 2e-4, betas (0.5, 0.999) in the paper).

    The fused implementation (one kernel per parameter tensor, CPU and CUDA) computes the same
    Adam update as the default per-tensor loop, without its ~10 elementwise passes over
    every parameter; it matters at small batches, where the U-Net's 54M parameters make the
    optimizer a large share of the step.
    """
    betas = (cfg.optim.beta1, cfg.optim.beta2)
    params = [*g.parameters(), *d.parameters()]
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for p in params)
    kw = {"lr": cfg.optim.lr, "betas": betas, "fused": fused or None}
    return torch.optim.Adam(g.parameters(), **kw), torch.optim.Adam(d.parameters(), **kw)


# ----------------------------------------------------------------------------- helpers


def _steps_per_epoch(index: ShardIndex, global_batch: int) -> int:
    """Train samples // global batch, from the shard index (make_loader's default)."""
    n = index.samples("train")
    return max(n // global_batch, 1) if n else 1


def _step_scheduler(sched: Any, l1: float | None) -> None:
    if sched is None:
        return
    if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        sched.step(l1 if l1 is not None else 0.0)  # plateau on validation L1 (else train L1)
    else:
        sched.step()


def _print_progress(
    row: dict[str, float], epochs: int, total_steps: int, steps_this_epoch: int, t_epoch: float
) -> None:
    """One console line: epoch, step, losses, lr, images/s, ETA of the run."""
    step = int(row["step"])
    rate = max(steps_this_epoch, 1) / max(time.perf_counter() - t_epoch, 1e-9)  # steps/s
    eta = max(total_steps - step, 0) / rate if rate > 0 else math.inf
    _say(
        f"epoch {int(row['epoch'])}/{epochs} step {step}/{total_steps} "
        f"loss_d {row['loss_d']:.4f} loss_g_gan {row['loss_g_gan']:.4f} "
        f"loss_g_l1 {row['loss_g_l1']:.4f} lr {row['lr']:.3g} "
        f"{row['images_per_s']:.1f} img/s ETA {_fmt_duration(eta)}"
    )


def _fault_exit(step: int, rank: int, last_report: float) -> None:
    """Test-only (P2P_FAULT_STEP): this worker process dies, as if killed.

    Ray Train's controller registers a reported checkpoint at its next health check
    (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s); a worker that dies sooner loses it and the run
    restarts from the one before. The hook first waits until the last report is surely
    registered, so that the restart deterministically resumes from it.
    """
    interval = float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S") or 2.0)
    time.sleep(max(0.0, last_report + 2.5 * interval - time.monotonic()))
    _say(f"p2p train: P2P_FAULT_STEP={step}: rank {rank} exits")
    os._exit(1)


def _say(line: str) -> None:
    """A console line. Written to stdout directly: Ray Train V2 patches `print` to also log
    through its logger, which shows every line twice on the driver."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
