"""The scaling part of `p2p bench train`: a short `p2p train` run (params file config, local
Ray, temp shards, temp MLflow) with 1 and then 2 workers at a fixed global batch; images/s of
the second epoch as the training loop measures it."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any


def bench_scaling(cfg, steps_per_epoch: int) -> list[dict[str, Any]]:
    """images/s of a short local-Ray run with 1 and with 2 workers (same global batch)."""
    import ray

    from p2p.config import BuildConfig
    from p2p.data.build import build_demo
    from p2p.data.shards import write_shards
    from p2p.training.trainer import fit

    rows = []
    with tempfile.TemporaryDirectory(prefix="p2p-bench-train-") as tmp:
        tmp = Path(tmp)
        need = steps_per_epoch * cfg.train.batch_size
        build = BuildConfig(
            task=cfg.build.task,
            num_pairs=int(need / 0.8) + 4,
            size=max(cfg.data.load_size, cfg.data.crop_size),
            seed=0,
        )
        build_demo(tmp / "raw", build, cfg.data)
        write_shards(tmp / "raw", tmp / "shards", cfg.data)
        saved, cwd = os.environ.get("MLFLOW_TRACKING_URI"), os.getcwd()
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        os.chdir(tmp)  # MLflow's default artifact dir (./mlruns) lands in the temp dir too
        # One local Ray for both runs (fit() reuses an initialised Ray and leaves it running).
        ray.init(address="local", num_cpus=2, include_dashboard=True, log_to_driver=False)
        try:
            for workers in (1, 2):
                run_cfg = cfg.replace(
                    **{
                        "resources.num_workers": workers,
                        "resources.cpus_per_worker": 1,
                        "resources.address": "",
                        "train.epochs": 2,
                        "train.steps_per_epoch": steps_per_epoch,
                        "train.val_batches": 0,
                        "train.keep_checkpoints": 1,
                        "train.log_every": steps_per_epoch,
                        "train.storage_path": str(tmp / "runs"),
                        "train.experiment": "bench",
                    }
                )
                t0 = time.perf_counter()
                res = fit(
                    run_cfg,
                    shards=str(tmp / "shards"),
                    out_dir=tmp / f"models{workers}",
                    address="",
                    run_name=f"bench-{workers}w",
                )
                rows.append(
                    {
                        "workers": workers,
                        "batch": cfg.train.batch_size,
                        "images_per_s": res.metrics.get("images_per_s", float("nan")),
                        "wall_s": time.perf_counter() - t0,
                    }
                )
        finally:
            ray.shutdown()
            os.chdir(cwd)
            if saved is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = saved
    return rows


def print_scaling(rows: list[dict[str, Any]]) -> None:
    print()
    print("scaling (params file config, local Ray, epoch-2 images/s, global batch fixed):")
    print(f"{'workers':>7} {'batch':>6} {'img/s':>8} {'vs 1':>6} {'run wall s':>10}")
    base = rows[0]["images_per_s"] if rows else float("nan")
    for r in rows:
        print(
            f"{r['workers']:>7} {r['batch']:>6} {r['images_per_s']:>8.2f} "
            f"{r['images_per_s'] / base:>5.2f}x {r['wall_s']:>10.1f}"
        )
