"""`p2p predict`: translate an image or a folder of images with a trained generator.

    p2p predict --checkpoint models/generator.pt --input photo.png --output out.png
    p2p predict --model models:/pix2pix@champion --input in_dir/ --output out_dir/
    p2p predict --address auto --model models:/pix2pix@champion --input s3://b/in/ --output s3://b/out/

The checkpoint may be a p2p file or a reference `latest_net_G.pth`. Any image size works: sizes
that the network cannot take are resized for it and the output is resized back. A bad input
stops the run with one line naming the file, unless --skip-bad (then the exit code is 1).

--mode: the inference mode (p2p.inference). Default: the one the model records
(eval.inference_mode of the checkpoint's or registered version's config; "paper" for a
reference file, as the reference's test.py). Paper mode is seeded per image (--seed, default 0):
the same image and seed give the same output, the one `p2p evaluate` scored.

With --ray or --address (or an s3:// input/output) it is a resumable batch job on Ray Data
(p2p.batch_predict): existing outputs are skipped, bad inputs are listed in OUT/_summary.json.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from p2p.atomic import write_atomic


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "predict",
        parents=[common],
        help="translate images with a generator checkpoint or a registered model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="p2p generator.pt or reference latest_net_G.pth")
    src.add_argument("--model", help="registered model URI, e.g. models:/pix2pix@champion")
    p.add_argument("--input", required=True, help="an image file or a folder of images")
    p.add_argument("--output", required=True, help="output file (for one image) or folder")
    p.add_argument(
        "--mode",
        choices=["paper", "eval"],
        default=None,
        help="paper: dropout + each image's own statistics; eval: running statistics, no "
        "dropout (default: the model's eval.inference_mode)",
    )
    p.add_argument(
        "--train-mode",
        dest="mode",
        action="store_const",
        const="paper",
        help=argparse.SUPPRESS,  # the older spelling of --mode paper
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if any")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (eval)")
    p.add_argument(
        "--seed", type=int, default=None, help="paper mode: dropout seed per image (default 0)"
    )
    p.add_argument(
        "--skip-bad", action="store_true", help="skip unreadable images (listed), exit code 1"
    )
    # Batch prediction on Ray (p2p.batch_predict): folders / s3:// prefixes, resumable.
    p.add_argument("--ray", action="store_true", help="batch job on Ray Data (a local Ray)")
    p.add_argument("--address", help="batch job on this Ray cluster: auto, host:6379, ray://...")
    p.add_argument("--actors", type=int, help="Ray actors (default: resources.num_workers)")
    p.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    import torch

    from p2p.data.images import is_image_file, open_image
    from p2p.data.storage import is_local
    from p2p.errors import DataError, P2PError
    from p2p.inference import DEFAULT_SEED, geometry, mode_of, translate

    if args.ray or args.address or not all(is_local(a) for a in (args.input, args.output)):
        from p2p.batch_predict import run

        return run(args)
    if args.batch_size < 1:
        raise P2PError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise P2PError("--device cuda: no CUDA device is available")
    pairs = _plan(Path(args.input), Path(args.output), is_image_file)

    g, cfg = _load_model(args, device)
    in_nc = geometry(g, cfg)[0]
    mode = args.mode or mode_of(cfg)
    seed = DEFAULT_SEED if args.seed is None else args.seed
    logging.getLogger(__name__).info(
        "inference mode: %s%s", mode, f" (seed {seed})" if mode == "paper" else ""
    )

    done, skipped, n = 0, [], len(pairs)
    for start in range(0, n, args.batch_size):
        chunk = pairs[start : start + args.batch_size]
        images, names, dsts = [], [], []
        for src, dst in chunk:
            try:
                images.append(open_image(src, name=str(src), channels=in_nc))
            except DataError as e:
                if not args.skip_bad:
                    raise
                skipped.append(str(e))
                print(f"skip {e}", file=sys.stderr)
                continue
            names.append(str(src))
            dsts.append(dst)
        outs = translate(g, images, cfg, mode=mode, seed=seed, names=names)
        for name, img, out, dst in zip(names, images, outs, dsts, strict=True):
            _save(out, dst)
            done += 1
            print(f"[{done + len(skipped)}/{n}] {name} -> {dst} ({img.width}x{img.height})")
    if skipped:
        print(f"p2p predict: {done} translated, {len(skipped)} skipped", file=sys.stderr)
        return 1
    return 0


def _plan(inp: Path, out: Path, is_image_file) -> list[tuple[Path, Path]]:
    """(source, destination) pairs; errors before any work for a missing or empty input."""
    from p2p.errors import DataError, P2PError

    if not inp.exists():
        raise DataError(f"{inp}: input not found")
    if inp.is_file():
        if out.is_dir() or str(out).endswith(os.sep) or not out.suffix:
            dst = out / f"{inp.stem}.png"  # an output folder
        elif not is_image_file(out):
            raise P2PError(f"{out}: output file needs an image extension (.png, .jpg, ...)")
        else:
            dst = out
        pairs = [(inp, dst)]
    else:
        # Every visible file is an input: a stray non-image fails (or is skipped) by name.
        files = sorted(p for p in inp.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(f"{inp}: folder has no files to translate")
        if out.exists() and not out.is_dir():
            raise P2PError(f"{out}: input is a folder, so the output must be a folder")
        pairs = [(f, out / f"{f.stem}.png") for f in files]
        seen: dict[Path, Path] = {}
        for src, dst in pairs:
            if dst in seen:
                raise DataError(f"{src}: same output name as {seen[dst]} ({dst.name})")
            seen[dst] = src
    for src, dst in pairs:
        if dst.resolve() == src.resolve():
            raise P2PError(f"{dst}: output would overwrite its input")
    return pairs


def _load_model(args: argparse.Namespace, device: str):
    from p2p.inference import load_model

    return load_model(args.checkpoint, args.model, device)


def _save(img, dst: Path) -> None:
    """Write atomically; the format follows the extension."""
    write_atomic(dst, lambda tmp: img.save(tmp, format=_format_of(dst)))


def _format_of(dst: Path) -> str:
    ext = dst.suffix.lower()
    return {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}.get(
        ext, ext.lstrip(".").upper() or "PNG"
    )
