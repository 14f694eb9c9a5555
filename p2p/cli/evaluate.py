"""`p2p evaluate`: L1 / PSNR / SSIM of a generator on a split of the shards, plus a sample grid.

    p2p evaluate --checkpoint models/generator.pt --shards data/shards/demo --out reports

Writes OUT/metrics.json, OUT/samples.png (input | output | target rows) and OUT/index.html.
Settings come from params.yaml: eval.batch_size, eval.num_samples, eval.inference_mode (paper:
dropout + each image's own statistics, as the paper; eval: running statistics, no dropout) and
the data.* eval transform. The val split is scored in both modes.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "evaluate",
        parents=[common],
        help="score a generator checkpoint on the test split",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", default="models/generator.pt", help="generator checkpoint")
    p.add_argument(
        "--shards", default=None, help="shard dir or s3:// prefix (default: data.shards)"
    )
    p.add_argument("--out", default="reports", help="output folder (default: reports)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if any")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from p2p.cli import load_cfg
    from p2p.evaluation.evaluate import INDEX_FILE, SAMPLES_FILE, evaluate_checkpoint

    cfg = load_cfg(args)
    shards = args.shards or cfg.data.shards
    m = evaluate_checkpoint(
        args.checkpoint, shards, cfg, args.out, split=args.split, device=args.device
    )
    out = Path(args.out)
    print(
        f"{m['split']} ({m['inference_mode']} mode): {m['n_samples']} samples  "
        f"l1 {m['l1']:.4f}  psnr {m['psnr']:.2f} dB  ssim {m['ssim']:.4f}"
    )
    for mode, s in m.get("modes_val", {}).items():
        print(f"val, {mode} mode: l1 {s['l1']:.4f}  psnr {s['psnr']:.2f} dB  ssim {s['ssim']:.4f}")
    labels = m.get("baseline_labels", {})
    for name, base in m.get("baselines", {}).items():
        print(
            f"baseline {labels.get(name, name)}: l1 {base['l1']:.4f}  psnr {base['psnr']:.2f} dB  "
            f"ssim {base['ssim']:.4f}  (model {m['margins_psnr'][name]:+.2f} dB)"
        )
    for name, reason in m.get("unavailable", {}).items():
        print(f"{name}: unavailable ({reason})")
    print(f"wrote {out / 'metrics.json'}, {out / SAMPLES_FILE}, {out / INDEX_FILE}")
    return 0
