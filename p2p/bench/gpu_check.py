"""`make gpu-check`: what a lent GPU machine must show, in one run of under 8 minutes.

    PYTHONPATH=. python3 -m p2p.bench.gpu_check                 # on the GPU machine
    PYTHONPATH=. python3 -m p2p.bench.gpu_check --device cpu --tiny --results -   # dry run here

Needs only torch, pillow, pyyaml and numpy (what the GPU machine has: no Ray, MLflow, boto3,
webdataset or pytest). Sections, each in its own process with its own time limit, under one
overall deadline; a failing section is reported and the next one runs:

1. parity: the training step's GPU path (bf16 autocast + channels_last, eager and compiled)
   against fp32, 3 steps, the tolerance of tests/gpu (rel 3e-2, abs 1e-2); plus the
   gpu-marked tests when pytest is installed.
2. `p2p bench train --device cuda` at the paper config (unet_256, ngf/ndf 64, 256 px): eager
   (batch 1 and 16), compiled (batch 1), CUDA graphs (torch.compile mode="reduce-overhead",
   batch 1), then compiled at batch 16 if time is left.
3. loader: samples/s of the input pipeline (decode + 286 -> 256 crop) for 1, 2, 4, ...
   DataLoader workers, until one training GPU is fed at >= 4x its fastest batch-1 step rate;
   reports that number of workers. Local WebDataset shards when webdataset is installed, else
   the raw image folder (the same decode and transform, one file per image).
4. scaling: 1 -> 2 GPUs (NCCL DDP, G and D as the training loop wraps them, fixed global
   batch), when two GPUs exist.

The figures are appended to bench/RESULTS.md (`--results`; `-` prints only).

One file on purpose (~450 lines): it is the entry point run on a bare GPU machine (the
repository on PYTHONPATH, only the four packages above installed), so its sections, their child
processes, the deadline and the report stay together in one script.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# tiny sizes for --tiny (the dry run on a CPU): 32 px, a 5-level U-Net with 8 channels
TINY_SETS = [
    "data.crop_size=32",
    "data.load_size=36",
    "model.num_downs=5",
    "model.base_channels=8",
    "model.disc_channels=8",
]
PARITY_REL, PARITY_ABS = 3e-2, 1e-2  # bf16 tolerance of tests/gpu/test_gpu_train.py
FEED_FACTOR = 4.0  # a loader must deliver >= 4x what the GPU consumes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny model and data (a dry run)")
    p.add_argument("--budget", type=float, default=450.0, help="seconds for all sections")
    p.add_argument("--results", default=str(REPO / "bench" / "RESULTS.md"), help="or - ")
    p.add_argument("--section", help=argparse.SUPPRESS)  # internal: run one section
    p.add_argument("--arg", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.section:
        return SECTIONS[args.section](args)
    return run_all(args)


# ----------------------------------------------------------------------------- driver


def run_all(args: argparse.Namespace) -> int:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA device (use --device cpu --tiny for a dry run)")
        return 1
    deadline = time.monotonic() + args.budget
    report: list[str] = [_env_line(args.device)]
    print(report[0], flush=True)
    failed: list[str] = []

    def section(title: str, name: str, limit: float, arg: str = "") -> str | None:
        left = deadline - time.monotonic()
        if left < 20:
            report.append(f"### {title}\n\nskipped: the {args.budget:.0f} s budget is spent\n")
            return None
        limit = min(limit, left)
        argv = [sys.executable, "-m", "p2p.bench.gpu_check", "--section", name, "--arg", arg]
        argv += ["--device", args.device] + (["--tiny"] if args.tiny else [])
        print(f"gpu-check: {title} (limit {limit:.0f} s)", flush=True)
        t0 = time.monotonic()
        try:
            proc = subprocess.run(
                argv, cwd=REPO, capture_output=True, text=True, timeout=limit, env=_env()
            )
            out, rc = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            out = _text(e.stdout) + _text(e.stderr) + f"\n(killed after {limit:.0f} s)"
            rc = -1
        took = time.monotonic() - t0
        status = "ok" if rc == 0 else f"FAILED (exit {rc})"
        if rc != 0:
            failed.append(title)
        body = _trim(out)
        print(body, flush=True)
        report.append(f"### {title}: {status}, {took:.0f} s\n\n```\n{body}\n```\n")
        return out if rc == 0 else None

    section("parity: bf16 + channels_last (eager, compiled) vs fp32", "parity", 150)
    eager = section("bench train: eager", "bench", 120, "eager")
    rates = _p2p_rates(eager or "")
    feed = max(rates.get(1, [0.0]), default=0.0)
    compiled = section("bench train: torch.compile, batch 1", "bench", 200, "compile")
    graphs = section("bench train: CUDA graphs (reduce-overhead), batch 1", "bench", 160, "graphs")
    for out in (compiled, graphs):
        feed = max([feed, *_p2p_rates(out or "").get(1, [])])
    if feed > 0:
        section(
            f"loader: workers to feed {FEED_FACTOR:g} x {feed:.2f} img/s", "loader", 90, f"{feed}"
        )
    else:
        report.append("### loader\n\nskipped: no batch-1 step rate was measured\n")
    if args.device == "cpu" or torch.cuda.device_count() >= 2:
        section("scaling: 1 -> 2 devices, DDP", "scaling", 120)
    else:
        report.append("### scaling\n\nskipped: one GPU\n")
    section("bench train: torch.compile, batch 16", "bench", 200, "compile16")
    summary = "all sections passed" if not failed else "FAILED: " + "; ".join(failed)
    text = _markdown(args, report, summary)
    if args.results == "-":
        print(text)
    else:
        with open(args.results, "a") as f:  # append: earlier figures stay
            f.write(text)
        print(f"gpu-check: figures appended to {args.results}")
    print(f"gpu-check: {summary}")
    return 1 if failed else 0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _text(b: bytes | str | None) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def _trim(out: str, lines: int = 40) -> str:
    keep = [ln for ln in out.strip().splitlines() if "Warning" not in ln and ln.strip()]
    return "\n".join(keep[-lines:])


def _env_line(device: str) -> str:
    import torch

    if device == "cuda":
        n = torch.cuda.device_count()
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(n))
        what = f"{n} GPU(s): {names}; bf16 {torch.cuda.is_bf16_supported()}"
    else:
        what = f"CPU ({os.cpu_count()} cores), dry run"
    return f"torch {torch.__version__}, {what}"


def _markdown(args: argparse.Namespace, report: list[str], summary: str) -> str:
    day = dt.date.today().isoformat()
    mode = "tiny dry run" if args.tiny else "paper config"
    head = f"\n## GPU check ({day}, `make gpu-check`, {mode})\n\n{report[0]}. {summary}.\n\n"
    return head + "\n".join(report[1:])


def _p2p_rates(out: str) -> dict[int, list[float]]:
    """{batch: [p2p images/s]} from `p2p bench train` tables."""
    rates: dict[int, list[float]] = {}
    for line in out.splitlines():
        m = re.match(
            r"^(cpu|cuda)\s+(\d+)\s+(p2p.*?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", line
        )
        if m:
            rates.setdefault(int(m.group(2)), []).append(float(m.group(7)))
    return rates


# ----------------------------------------------------------------------------- sections


def _parity(args: argparse.Namespace) -> int:
    """fp32 vs bf16 + channels_last, eager and compiled: 3 steps, every loss within tolerance."""
    import torch

    from p2p.config import load_config
    from p2p.losses import GANLoss
    from p2p.models import build_discriminator, build_generator
    from p2p.training.loop import make_optimizers
    from p2p.training.runtime import configure_backends
    from p2p.training.step import train_step

    dev = torch.device(args.device)
    configure_backends(dev)
    over = ["data.load_size=72", "data.crop_size=64", "model.num_downs=6"]
    over += ["model.base_channels=8", "model.disc_channels=8"]
    over += ["model.use_dropout=false"]  # dropout masks depend on the memory layout
    cfg = load_config(None, over)

    def losses(fast: bool, compile_: bool) -> list[dict[str, float]]:
        fmt = torch.channels_last if fast else torch.contiguous_format
        torch.manual_seed(0)
        g = build_generator(cfg.model, 3, 3).to(dev, memory_format=fmt)
        d = build_discriminator(cfg.model, 6).to(dev, memory_format=fmt)
        opt_g, opt_d = make_optimizers(g, d, cfg)
        if compile_:
            g, d = torch.compile(g), torch.compile(d)
        gen = torch.Generator().manual_seed(1)
        a = (torch.rand(4, 3, 64, 64, generator=gen) * 2 - 1).to(dev).contiguous(memory_format=fmt)
        b = (torch.rand(4, 3, 64, 64, generator=gen) * 2 - 1).to(dev).contiguous(memory_format=fmt)
        amp = torch.bfloat16 if fast else None
        gan = GANLoss(cfg.loss.gan_mode).to(dev)
        return [
            train_step(g, d, opt_g, opt_d, a, b, cfg, gan_loss=gan, autocast_dtype=amp)
            for _ in range(3)
        ]

    ref = losses(False, False)
    ok = True
    for compile_ in (False, True):
        got = losses(True, compile_)
        worst = 0.0
        for r, x in zip(ref, got, strict=True):
            for k in ("loss_d", "loss_g_gan", "loss_g_l1"):
                err = abs(x[k] - r[k])
                worst = max(worst, err / max(abs(r[k]), 1e-12))
                ok &= err <= PARITY_ABS + PARITY_REL * abs(r[k])
        name = "compiled" if compile_ else "eager"
        print(f"bf16 + channels_last {name}: max relative loss difference vs fp32 {worst:.2e}")
    print(f"tolerance rel {PARITY_REL:g} + abs {PARITY_ABS:g}: {'ok' if ok else 'EXCEEDED'}")
    rc = 0 if ok else 1
    try:
        import pytest  # noqa: F401
    except ImportError:
        print("pytest not installed: the built-in parity check above stands in for tests/gpu")
        return rc
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/gpu", "-q", "-p", "no:cacheprovider"],
        cwd=REPO,
        env=_env(),
    )
    return rc or proc.returncode


def _bench(args: argparse.Namespace) -> int:
    """`p2p bench train` on the device: eager | compile | graphs | compile16."""
    from p2p.bench import train

    variant = args.arg
    batches = "1" if args.tiny else {"eager": "1,16", "compile16": "16"}.get(variant, "1")
    argv = ["--device", args.device, "--no-scaling", "--batch-sizes", batches]
    argv += ["--steps", "2" if args.tiny else "10", "--steps-large", "2" if args.tiny else "5"]
    if variant in ("compile", "compile16"):
        argv += ["--compile"]
    elif variant == "graphs":
        argv += ["--compile", "--compile-mode", "reduce-overhead"]
    for kv in TINY_SETS if args.tiny else []:
        argv += ["--set", kv]
    return train.run(_bench_args(train, argv))


def _bench_args(module, argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--params", default=None)
    module.add_arguments(p)
    return p.parse_args(argv)


def _loader(args: argparse.Namespace) -> int:
    """Loader workers needed to feed FEED_FACTOR x the GPU's batch-1 step rate."""
    import dataclasses

    from p2p.bench import loader
    from p2p.config import load_config

    target = FEED_FACTOR * float(args.arg)
    cfg = load_config(None, ["build.num_pairs=48", "build.size=286"])
    data = dataclasses.replace(
        cfg.data, load_size=286, crop_size=256, preprocess="resize_and_crop", flip=True
    )
    bench_args = argparse.Namespace(batch_size=1, samples=24 if args.tiny else 120, repeat=1)
    with tempfile.TemporaryDirectory(prefix="p2p-gpu-check-") as tmp:
        raw = _synthetic_dataset(Path(tmp), cfg)
        try:
            from p2p.data.shards import write_shards

            shards = Path(tmp) / "shards"
            write_shards(raw, shards, data, progress=lambda line: None)
            import p2p.data.dataset  # noqa: F401  (needs webdataset)

            source = "local shards"

            def timed(w: int) -> tuple[float, float]:
                return loader._time_shards(str(shards), data, bench_args, w)
        except ImportError as e:
            source = f"raw folder (no {e.name}: shards cannot be read here)"

            def timed(w: int) -> tuple[float, float]:
                return loader._time_raw(raw, data, bench_args, w)

        print(f"target {target:.1f} samples/s ({FEED_FACTOR:g} x the GPU's step rate); {source}")
        print(f"{'workers':>7} {'samples/s':>10} {'first batch s':>13}")
        workers, needed = 1, None
        while workers <= max(1, os.cpu_count() or 1):
            ips, first = timed(workers)
            print(f"{workers:>7} {ips:>10.1f} {first:>13.2f}", flush=True)
            if ips >= target:
                needed = workers
                break
            workers *= 2
    if needed is None:
        print(f"no worker count up to {os.cpu_count()} reaches {target:.1f} samples/s")
        return 0
    print(f"=> {needed} loader worker(s) per GPU (data.loader_workers: {needed})")
    return 0


def _synthetic_dataset(tmp: Path, cfg) -> Path:
    """Pairs built (superres) from smooth random photos: the demo photos come from packages
    the GPU machine lacks (scikit-image...)."""
    import numpy as np
    from PIL import Image

    from p2p.data.build import build_pairs

    photos = tmp / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        small = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((384, 384), Image.Resampling.BICUBIC)
        noise = rng.normal(0, 6, (384, 384, 3))
        arr = np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(photos / f"p{i:02d}.jpg", quality=90)
    out = tmp / "raw"
    build_pairs(photos, out, build=cfg.build, data=cfg.data)
    return out


def _scaling(args: argparse.Namespace) -> int:
    """images/s with 1 and 2 processes (NCCL on GPUs, gloo on CPU), same global batch."""
    import torch.multiprocessing as mp

    batch = 2 if args.tiny else 16
    steps = 3 if args.tiny else 10
    rows = []
    for world in (1, 2):
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        port = _free_port()
        procs = [
            ctx.Process(
                target=_ddp_rank, args=(r, world, port, args.device, args.tiny, batch, steps, queue)
            )
            for r in range(world)
        ]
        for pr in procs:
            pr.start()
        for pr in procs:
            pr.join()
        if any(pr.exitcode != 0 for pr in procs):
            print(f"{world} process(es): a rank failed")
            return 1
        rows.append((world, queue.get()))
    base = rows[0][1]
    print(f"global batch {batch}, {steps} timed steps")
    print(f"{'devices':>7} {'img/s':>8} {'vs 1':>6}")
    for world, ips in rows:
        print(f"{world:>7} {ips:>8.2f} {ips / base:>5.2f}x")
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_rank(rank, world, port, device, tiny, batch, steps, queue) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from p2p.config import load_config
    from p2p.losses import GANLoss
    from p2p.models import build_discriminator, build_generator
    from p2p.training.collectives import no_buffer_sync_kwargs
    from p2p.training.loop import make_optimizers
    from p2p.training.runtime import configure_backends
    from p2p.training.step import train_step

    cuda = device == "cuda"
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
    )
    dev = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    else:
        torch.set_num_threads(1)
    configure_backends(dev)
    cfg = load_config(None, TINY_SETS if tiny else [])
    fmt = torch.channels_last if cuda else torch.contiguous_format
    torch.manual_seed(0)
    g = build_generator(cfg.model, 3, 3).to(dev, memory_format=fmt)
    d = build_discriminator(cfg.model, 6).to(dev, memory_format=fmt)
    kw = no_buffer_sync_kwargs()
    g = DDP(g, device_ids=[rank] if cuda else None, **kw)
    d = DDP(d, device_ids=[rank] if cuda else None, **kw)
    opt_g, opt_d = make_optimizers(g, d, cfg)
    size, per = cfg.data.crop_size, batch // world
    a = (torch.rand(per, 3, size, size) * 2 - 1).to(dev).contiguous(memory_format=fmt)
    b = (torch.rand(per, 3, size, size) * 2 - 1).to(dev).contiguous(memory_format=fmt)
    amp = torch.bfloat16 if cuda else None
    gan = GANLoss(cfg.loss.gan_mode).to(dev)

    def step() -> None:
        train_step(g, d, opt_g, opt_d, a, b, cfg, gan_loss=gan, autocast_dtype=amp)

    step()  # warm-up
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    dist.barrier()
    if rank == 0:
        queue.put(steps * batch / (time.perf_counter() - t0))
    dist.destroy_process_group()


SECTIONS = {"parity": _parity, "bench": _bench, "loader": _loader, "scaling": _scaling}

if __name__ == "__main__":
    sys.exit(main())
