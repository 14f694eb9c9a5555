"""`p2p bench train`: images/s and peak memory of the training step, p2p vs the reference.

What is compared, on the same machine, the same networks (p2p.models, the reference's
architecture and init) and the same random batches:
- reference: the reference implementation's step written out plainly (junyanz
  `Pix2PixModel.optimize_parameters`): G forward, D on the detached fake and on the real pair
  (separate passes), `set_requires_grad` toggling, D on the fake again for G, default Adam, fp32,
  contiguous (NCHW) tensors, torch's own layers (`nn.ConvTranspose2d`);
- p2p: `p2p.training.step.train_step` on p2p's layers (`UpConv`: the U-Net's transposed convs
  as GEMM + col2im on small CPU inputs) with the optimizers and backend settings of the training
  loop (`p2p.training.loop.make_optimizers`, `p2p.training.runtime.configure_backends`); on GPU
  also bf16 autocast and channels_last (and torch.compile with --compile).

Precision (`--precision`): `auto` is the training loop's GPU path on CUDA (bf16 autocast +
channels_last) and fp32 on CPU; `fp32` or `bf16` force one (bf16 falls back to fp32, with one
line, where the hardware does not compute it natively: `p2p.training.step.resolve_autocast`).
`--compile-mode reduce-overhead` is torch.compile with CUDA graphs (worth it at batch 1, where
kernel launches dominate a GPU step).

Each runs in its own process; their steps alternate (reference, p2p, reference, ...) and never
overlap, so load from other processes hits both alike. The table gives the median and the best
step and the median CPU seconds per step. Before timing, one step of each from identical weights
and seeds checks that both compute the same losses (on CPU fp32).

Peak memory: the process's peak resident set (ru_maxrss: weights, optimizer states and
activations) on CPU; torch.cuda.max_memory_allocated on GPU.

Scaling (`p2p.bench.scaling`): a short `p2p train` run (params file config, local Ray, temp
shards, temp MLflow) with 1 and then 2 workers; images/s of the second epoch as the training
loop measures it.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from dataclasses import dataclass
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-sizes", default="1,16", help="comma-separated (default: 1,16)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per impl at batch < 8")
    p.add_argument("--steps-large", type=int, default=2, help="timed steps per impl at batch >= 8")
    p.add_argument("--scaling-only", action="store_true", help="only the 1 -> 2 worker runs")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile p2p's G and D")
    p.add_argument(
        "--compile-mode",
        choices=["default", "reduce-overhead", "max-autotune"],
        default="default",
        help="torch.compile mode with --compile (reduce-overhead: CUDA graphs)",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="p2p's step: auto = bf16 + channels_last on CUDA, fp32 on CPU",
    )
    p.add_argument("--no-scaling", action="store_true", help="skip the 1 -> 2 worker runs")
    p.add_argument("--scaling-steps", type=int, default=8, help="steps per epoch (scaling)")


def run(args: argparse.Namespace) -> int:
    import torch

    from p2p.config import load_config

    # The paper config: dataclass defaults (unet_256, ngf/ndf 64, 256x256), plus --set overrides.
    paper = load_config(None, args.overrides)
    devices = ["cpu"] if args.device == "cpu" else []
    if args.device in ("auto", "cuda") and torch.cuda.is_available():
        devices.append("cuda")
    elif args.device == "cuda":
        print("bench train: no CUDA device; nothing to do")
        return 1
    if args.device == "auto" and not devices:
        devices = ["cpu"]
    sizes = [] if args.scaling_only else [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    m = paper.model
    print(
        f"bench train: {m.generator} num_downs {m.num_downs} ngf {m.base_channels} ndf "
        f"{m.disc_channels} norm {m.norm}, {paper.data.crop_size}x{paper.data.crop_size}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
    )
    rows = []
    for dev in devices:
        for bs in sizes:
            steps = args.steps if bs < 8 else args.steps_large
            rows.extend(
                bench_step(
                    paper,
                    dev,
                    bs,
                    steps,
                    compile_=args.compile,
                    compile_mode=args.compile_mode,
                    precision=args.precision,
                )
            )
    if rows:
        _print_table(rows)
    if not args.no_scaling:
        from p2p.bench.scaling import bench_scaling, print_scaling
        from p2p.config import load_config

        cfg = load_config(args.params, args.overrides)
        print_scaling(bench_scaling(cfg, args.scaling_steps))
    return 0


# ----------------------------------------------------------------------------- reference


def reference_step(net_g, net_d, opt_g, opt_d, real_a, real_b, lambda_l1: float = 100.0):
    """The reference pix2pix iteration written out (junyanz `optimize_parameters`, vanilla GAN)."""
    import torch

    bce, l1 = torch.nn.BCEWithLogitsLoss(), torch.nn.L1Loss()

    def set_requires_grad(net, flag):
        for p in net.parameters():
            p.requires_grad = flag

    fake_b = net_g(real_a)  # forward
    set_requires_grad(net_d, True)  # backward_D
    opt_d.zero_grad()
    fake_ab = torch.cat((real_a, fake_b), 1)
    pred_fake = net_d(fake_ab.detach())
    loss_d_fake = bce(pred_fake, torch.tensor(0.0).expand_as(pred_fake))
    real_ab = torch.cat((real_a, real_b), 1)
    pred_real = net_d(real_ab)
    loss_d_real = bce(pred_real, torch.tensor(1.0).expand_as(pred_real))
    loss_d = (loss_d_fake + loss_d_real) * 0.5
    loss_d.backward()
    opt_d.step()
    set_requires_grad(net_d, False)  # backward_G
    opt_g.zero_grad()
    pred_fake = net_d(fake_ab)
    loss_g_gan = bce(pred_fake, torch.tensor(1.0).expand_as(pred_fake))
    loss_g_l1 = l1(fake_b, real_b) * lambda_l1
    loss_g = loss_g_gan + loss_g_l1
    loss_g.backward()
    opt_g.step()
    return {"loss_d": loss_d.item(), "loss_g_gan": loss_g_gan.item(), "loss_g": loss_g.item()}


# ----------------------------------------------------------------------------- step bench


@dataclass(frozen=True)
class StepSpec:
    """One implementation's step as a bench worker builds it (sent to a spawned process)."""

    cfg_dict: dict
    device: str
    batch: int
    impl: str  # "reference" | "p2p"
    compile_: bool = False
    compile_mode: str = "default"
    precision: str = "auto"


def bench_step(
    cfg,
    device: str,
    batch: int,
    steps: int,
    *,
    compile_: bool = False,
    compile_mode: str = "default",
    precision: str = "auto",
) -> list[dict]:
    """Time `steps` alternating steps of the reference and of p2p; returns one row per impl.

    Each implementation runs in its own process (its own allocator settings, memory peak and
    CUDA context); the parent asks them for one step at a time, in turn, so the two never run
    at once and background load hits both alike.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs, conns = {}, {}
    try:
        for impl in ("reference", "p2p"):
            parent, child = ctx.Pipe()
            spec = StepSpec(cfg.to_dict(), device, batch, impl, compile_, compile_mode, precision)
            proc = ctx.Process(target=_step_worker, args=(child, spec), daemon=True)
            proc.start()
            procs[impl], conns[impl] = proc, parent
        first = {impl: _recv(conns[impl], procs[impl]) for impl in procs}  # warm-up losses
        label = first["p2p"].pop("label")
        first["reference"].pop("label")
        diff = max(abs(first["reference"][k] - first["p2p"][k]) for k in first["reference"])
        stats: dict[str, list[dict[str, float]]] = {impl: [] for impl in procs}
        for _ in range(steps):
            for impl in procs:
                conns[impl].send("step")
                stats[impl].append(_recv(conns[impl], procs[impl]))
        peak = {}
        for impl in procs:
            conns[impl].send(None)
            peak[impl] = _recv(conns[impl], procs[impl])["peak_bytes"]
    finally:
        for proc in procs.values():
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    out = []
    for impl in ("reference", "p2p"):
        wall = [x["wall"] for x in stats[impl]]
        out.append(
            {
                "device": device,
                "batch": batch,
                "impl": label if impl == "p2p" else impl,
                "median_s": statistics.median(wall),
                "best_s": min(wall),
                "cpu_s": statistics.median(x["cpu"] for x in stats[impl]),
                "images_per_s": batch / statistics.median(wall),
                "peak_mib": peak[impl] / 2**20,
                "loss_diff": diff if impl == "p2p" else None,
            }
        )
    out[1]["speedup"] = out[0]["median_s"] / out[1]["median_s"]
    out[1]["speedup_best"] = out[0]["best_s"] / out[1]["best_s"]
    return out


def _recv(conn, proc) -> Any:
    while not conn.poll(5):
        if not proc.is_alive():
            raise RuntimeError(f"bench worker exited with code {proc.exitcode}")
    try:
        msg = conn.recv()
    except EOFError:
        raise RuntimeError(f"bench worker exited with code {proc.exitcode}") from None
    if isinstance(msg, BaseException):
        raise msg
    return msg


def _step_worker(conn, spec: StepSpec) -> None:
    """Child process: build one implementation, then run one step per "step" message."""
    impl, compile_ = spec.impl, spec.compile_
    try:
        fn, sync, peak, label = _setup_impl(spec)
        import torch

        torch.manual_seed(2)  # the same seed in both processes: same dropout masks
        first = fn()  # warm-up step (compiles); its losses are compared by the parent
        if compile_ and impl == "p2p":
            for _ in range(2):  # CUDA graphs are recorded on the 2nd-3rd call, not timed
                fn()
        sync()
        conn.send({**first, "label": label})
        while conn.recv() is not None:
            c0, t0 = _cpu_seconds(), time.perf_counter()
            fn()
            sync()
            conn.send({"wall": time.perf_counter() - t0, "cpu": _cpu_seconds() - c0})
        conn.send({"peak_bytes": peak()})
    except Exception as e:  # report to the parent instead of dying silently
        conn.send(RuntimeError(f"{impl} on {spec.device}: {type(e).__name__}: {e}"))


def _setup_impl(spec: StepSpec):
    """(step function, device sync, peak memory in bytes, label) of one implementation."""
    import torch

    from p2p.config import ExperimentConfig
    from p2p.losses import GANLoss
    from p2p.models import build_discriminator, build_generator
    from p2p.training.loop import make_optimizers
    from p2p.training.runtime import configure_backends
    from p2p.training.step import resolve_autocast, train_step

    device, batch, impl, precision = spec.device, spec.batch, spec.impl, spec.precision
    compile_, compile_mode = spec.compile_, spec.compile_mode
    cfg = ExperimentConfig.from_dict(spec.cfg_dict)
    dev = torch.device(device)
    gpu = dev.type == "cuda"
    if impl == "p2p":
        configure_backends(dev)  # what the training loop does first
        if precision == "auto" and gpu:  # the GPU path of the training loop
            cfg = cfg.replace(**{"train.precision": "bf16", "train.channels_last": True})
        elif precision != "auto":
            cfg = cfg.replace(**{"train.precision": precision, "train.channels_last": gpu})
    size, c_in, c_out = cfg.data.crop_size, cfg.data.input_nc, cfg.data.output_nc
    gen = torch.Generator().manual_seed(1)
    a = (torch.rand(batch, c_in, size, size, generator=gen) * 2 - 1).to(dev)
    b = (torch.rand(batch, c_out, size, size, generator=gen) * 2 - 1).to(dev)
    torch.manual_seed(0)
    g = build_generator(cfg.model, c_in, c_out).to(dev)
    d = build_discriminator(cfg.model, c_in + c_out).to(dev)

    def sync() -> None:
        if gpu:
            torch.cuda.synchronize()

    def peak() -> float:
        if gpu:
            return float(torch.cuda.max_memory_allocated(dev))
        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)

    if impl == "reference":  # default Adam, fp32, NCHW, default backend settings, torch layers
        g = _with_library_layers(g)
        betas = (cfg.optim.beta1, cfg.optim.beta2)
        opt_g = torch.optim.Adam(g.parameters(), lr=cfg.optim.lr, betas=betas)
        opt_d = torch.optim.Adam(d.parameters(), lr=cfg.optim.lr, betas=betas)
        step = lambda: reference_step(g, d, opt_g, opt_d, a, b, cfg.loss.lambda_l1)  # noqa: E731
        return step, sync, peak, "reference"

    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    amp, note = resolve_autocast(cfg.train.precision, dev)
    if note:
        print(f"bench train: {note}", flush=True)
    g, d = g.to(memory_format=fmt), d.to(memory_format=fmt)
    opt_g, opt_d = make_optimizers(g, d, cfg)
    label = "p2p " + ("bf16" if amp is not None else "fp32")
    label += " NHWC" if cfg.train.channels_last else ""
    if compile_:
        g, d = torch.compile(g, mode=compile_mode), torch.compile(d, mode=compile_mode)
        label += " +compile" + ("" if compile_mode == "default" else f"({compile_mode})")
    a, b = a.contiguous(memory_format=fmt), b.contiguous(memory_format=fmt)
    gan = GANLoss(cfg.loss.gan_mode).to(dev)
    graphs = compile_ and compile_mode == "reduce-overhead"

    def step() -> dict[str, float]:
        if graphs:  # one training iteration = one CUDA-graph generation (G, 3x D, backward)
            torch.compiler.cudagraph_mark_step_begin()
        return train_step(g, d, opt_g, opt_d, a, b, cfg, gan_loss=gan, autocast_dtype=amp)

    return step, sync, peak, label


def _with_library_layers(net):
    """The reference network: every p2p `UpConv` swapped for a plain `nn.ConvTranspose2d` with
    the same weights (the reference uses torch's layer; UpConv's CPU GEMM path is p2p's)."""
    import torch.nn as nn

    from p2p.models.layers import UpConv

    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, UpConv):
                plain = nn.ConvTranspose2d(
                    child.in_channels,
                    child.out_channels,
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    bias=child.bias is not None,
                ).to(child.weight.device)
                plain.load_state_dict(child.state_dict())
                setattr(parent, name, plain)
    return net


def _cpu_seconds() -> float:
    """CPU time of this process, all threads (less sensitive to other processes' load)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _print_table(rows: list[dict]) -> None:
    print()
    head = f"{'device':6} {'batch':>5} {'impl':34} {'median s':>9} {'best s':>8} {'cpu s':>7}"
    print(head + f" {'img/s':>8} {'peak MiB':>9} {'speedup':>8} {'(best)':>7}")
    for r in rows:
        sp = f"{r['speedup']:.2f}x" if "speedup" in r else ""
        spb = f"{r['speedup_best']:.2f}x" if "speedup_best" in r else ""
        print(
            f"{r['device']:6} {r['batch']:>5} {r['impl']:34} {r['median_s']:>9.3f} "
            f"{r['best_s']:>8.3f} {r['cpu_s']:>7.2f} {r['images_per_s']:>8.2f} "
            f"{r['peak_mib']:>9.0f} {sp:>8} {spb:>7}"
        )
    diffs = [r["loss_diff"] for r in rows if r.get("loss_diff") is not None]
    if diffs:
        print(f"max |loss difference| p2p vs reference on the first step: {max(diffs):.2e}")
    print(
        "speedup = reference median / p2p median; (best) = ratio of the fastest steps; "
        "cpu s = process CPU seconds per step (median)"
    )
