"""`p2p train`: train pix2pix on Ray Train (local, on a cluster, or as a Ray Job)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "train",
        parents=[common],
        help="train G and D with Ray Train; write models/generator.pt",
        description=(
            "Train pix2pix with Ray Train (DDP over resources.num_workers workers), checkpointing "
            "to train.storage_path and tracking to MLflow. Re-running the same command resumes "
            "the same run from its latest checkpoint."
        ),
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster: auto | ray://host:10001 (connect as driver) | http://head:8265 "
        "(submit a Ray Job); default: resources.address, else RAY_ADDRESS, else a local Ray",
    )
    p.add_argument(
        "--shards", default=None, help="shard dir or s3:// prefix (default: data.shards)"
    )
    p.add_argument("--out", default="models", help="output dir for generator.pt (default: models)")
    p.add_argument(
        "--run-name",
        default=None,
        help="Ray/MLflow run name; the same name resumes (default: train.run_name, else derived "
        "from the data version and the params hash). 1-128 characters: letters, digits, "
        "'.', '_', '-'",
    )
    p.add_argument(
        "--allow-changed-params",
        action="store_true",
        help="resume a run even though params that change the model (lr, batch, data...) "
        "differ from its checkpoint's: it continues with the new values, and MLflow records "
        "each change as a tag params_changed.<key> = 'old -> new @ step N'. Without it such a "
        "resume is refused",
    )
    p.set_defaults(func=train_command)


def train_command(args: argparse.Namespace) -> int:
    from p2p.cli import load_cfg
    from p2p.training.trainer import fit

    cfg = load_cfg(args)
    result = fit(
        cfg,
        shards=args.shards,
        out_dir=args.out,
        address=args.address,
        run_name=args.run_name,
        allow_changed_params=args.allow_changed_params,
    )
    m = result.metrics
    shown = " ".join(
        f"{k} {m[k]:.4g}" for k in ("val_l1", "val_psnr", "val_ssim", "loss_g_l1") if k in m
    )
    print(f"p2p train: run {result.run_name}: step {m.get('step', 0):.0f} {shown}")
    print(
        f"p2p train: wrote {result.generator_path}, {result.train_log_path}, {result.metrics_path}"
    )
    print(f"p2p train: checkpoint {result.checkpoint_uri}; MLflow run {result.mlflow_run_id}")
    return 0
