"""`p2p evaluate`: score a generator checkpoint on a split of the shards.

Writes to `out_dir`:
    metrics.json   l1, psnr, ssim (+ lpips/fid if computable offline, else the reason in
                   "unavailable"), n_samples, split, the checkpoint and its sha256, the shards
                   and their data version, and `testset`: a key of everything that defines
                   the test set (data version, split, sample count, eval transform, eval mode).
                   Two scores are comparable exactly when their testset keys are equal.
    samples.png    eval.num_samples rows of input | output | target
    index.html     a results page showing the grid and the metrics

Every file is written to a temporary name and renamed: a failed evaluation leaves the previous
results intact. `eval.eval_mode: false` evaluates in the paper's noise mode: dropout on and
batch statistics of each image (batch 1), as `translate(train_mode=True)`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import html
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from p2p import __version__
from p2p.atomic import write_bytes_atomic
from p2p.config import ExperimentConfig
from p2p.errors import P2PError

log = logging.getLogger(__name__)

METRICS_FILE, SAMPLES_FILE, INDEX_FILE = "metrics.json", "samples.png", "index.html"
METRICS_FORMAT = "p2p.metrics"


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (identifies the exact checkpoint that was evaluated)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise P2PError(f"{path}: cannot read ({e.strerror or e})") from None
    return h.hexdigest()


def data_version_of(index: dict[str, Any]) -> str:
    """The data version a shard index records: the DVC md5 of the raw data when DVC tracks it
    (the same string as `version_dataset(...).md5`), else the raw manifest's sha256."""
    from p2p.data.versioning import DataVersion

    return DataVersion.of_index(index).full


def testset_key(index: dict[str, Any], split: str, cfg: ExperimentConfig) -> str:
    """A short key of everything that defines a test set: scores with equal keys are comparable.

    The split's shard bytes (their sha256s: shards are deterministic), the eval transform and
    the eval mode.
    """
    d = cfg.data
    entry = (index.get("splits") or {}).get(split) or {}
    spec = {
        "shards": [s.get("sha256") for s in entry.get("shards", [])],
        "samples": entry.get("samples"),
        "split": split,
        "input_nc": d.input_nc,
        "output_nc": d.output_nc,
        "preprocess": d.preprocess,
        "crop_size": d.crop_size,
        "eval_mode": cfg.eval.eval_mode,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def evaluate_checkpoint(
    checkpoint: str | Path,
    shards: str,
    cfg: ExperimentConfig,
    out_dir: str | Path,
    *,
    split: str = "test",
    device: str | None = None,
) -> dict[str, Any]:
    """Score `checkpoint` on every sample of `split` once and write the results to `out_dir`.

    Args:
        checkpoint: a p2p generator checkpoint or a reference `latest_net_G.pth`.
        shards: the shard dir or s3:// prefix (with index.json).
        cfg: data settings (eval transform) and eval settings (batch size, samples, mode).
        out_dir: where metrics.json, samples.png and index.html go (created).
        split: train | val | test.
        device: where the generator runs (default: cuda if available, else cpu).

    Returns:
        The metrics dict, as written to metrics.json.

    Raises:
        P2PError: unreadable checkpoint, missing split, or a generator/data mismatch.
    """
    from p2p.checkpoints import load_generator
    from p2p.data.dataset import make_loader
    from p2p.data.shards import read_index
    from p2p.evaluation.metrics import OptionalMetrics, l1, psnr, ssim

    t0 = time.perf_counter()
    out = Path(out_dir)
    checkpoint = Path(checkpoint)
    index = read_index(shards)
    entry = (index.get("splits") or {}).get(split) or {}
    n_total = int(entry.get("samples") or 0)
    if n_total <= 0:
        raise P2PError(f"{shards}: split {split!r} has no samples to evaluate")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    g = load_generator(checkpoint, device=device, eval_mode=True)
    _check_channels(g, cfg, checkpoint)
    noise = not cfg.eval.eval_mode
    batch = 1 if noise else max(1, cfg.eval.batch_size)
    # eval loader: deterministic order, ceil(N / batch) batches; the last one is padded by
    # wrapping around to the first samples, which are dropped below (every sample once)
    loader = make_loader(
        shards,
        split,
        cfg.data,
        batch_size=batch,
        rank=0,
        world_size=1,
        train=False,
        seed=cfg.train.seed,
        epoch=0,
    )
    scorers = {"l1": l1, "psnr": psnr, "ssim": ssim}
    sums = dict.fromkeys(scorers, 0.0)
    # "input as output": the score of doing nothing, when input and target have one shape
    # (super-resolution, denoising, ...). A model should beat it, not just an untrained one.
    identity = dict.fromkeys(scorers, 0.0) if cfg.data.input_nc == cfg.data.output_nc else None
    extra = OptionalMetrics(device)
    rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    n = 0
    saved = {k: b.clone() for k, b in g.named_buffers()}  # noise mode updates BN stats
    g.train(noise)
    try:
        with torch.no_grad():
            for real_a, real_b in loader:
                keep = min(real_a.shape[0], n_total - n)  # drop the wrap-around padding
                real_a = real_a[:keep].to(device, torch.float32)
                real_b = real_b[:keep].to(device, torch.float32)
                if keep == 0:
                    break
                fake_b = g(real_a)
                _check_shapes(fake_b, real_b, checkpoint)
                for k, score in scorers.items():  # per-image scores, summed: exact means
                    sums[k] += float(score(fake_b, real_b, reduction="none").sum())
                    if identity is not None:
                        identity[k] += float(score(real_a, real_b, reduction="none").sum())
                if fake_b.shape[1] == 3:  # LPIPS / Inception take RGB
                    extra.update(fake_b, real_b)
                for i in range(real_a.shape[0]):
                    if len(rows) < cfg.eval.num_samples:
                        rows.append((real_a[i].cpu(), fake_b[i].cpu(), real_b[i].cpu()))
                n += real_a.shape[0]
    finally:
        g.eval()
        for k, b in g.named_buffers():
            b.copy_(saved[k])
    if n != n_total:
        raise P2PError(f"{shards}: read {n} {split} samples but the index says {n_total}")

    data_version = data_version_of(index)
    scores = extra.compute()
    unavailable = {k: r for k, r in extra.status.items() if r is not None}
    for k in extra.status:
        if k not in scores and k not in unavailable:
            unavailable[k] = "needs RGB (3-channel) outputs"
    metrics: dict[str, Any] = {
        "format": METRICS_FORMAT,
        "split": split,
        "n_samples": n,
        **{k: v / n for k, v in sums.items()},
        **scores,
        "unavailable": unavailable,
        "baseline_input": None if identity is None else {k: v / n for k, v in identity.items()},
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint),
        "shards": str(shards),
        "data_version": data_version,
        "manifest_sha256": (index.get("data_version") or {}).get("manifest_sha256"),
        "testset": testset_key(index, split, cfg),
        "eval_mode": cfg.eval.eval_mode,
        "params_hash": cfg.params_hash(),
        "p2p_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / SAMPLES_FILE, _grid_png(rows))
    write_bytes_atomic(out / METRICS_FILE, (json.dumps(metrics, indent=2) + "\n").encode())
    write_bytes_atomic(out / INDEX_FILE, _index_html(metrics, len(rows)).encode())
    log.info(
        "evaluate: %d %s samples  l1 %.4f  psnr %.2f dB  ssim %.4f  -> %s",
        n,
        split,
        metrics["l1"],
        metrics["psnr"],
        metrics["ssim"],
        out / METRICS_FILE,
    )
    return metrics


def read_metrics(path: str | Path) -> dict[str, Any]:
    """Read a metrics.json written by evaluate (P2PError naming the file if it is not one)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise P2PError(f"{path}: metrics file not found (run `p2p evaluate` first)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise P2PError(f"{path}: not a readable metrics.json ({e})") from None
    if not isinstance(data, dict) or data.get("format") != METRICS_FORMAT:
        raise P2PError(f"{path}: not a metrics.json written by `p2p evaluate`")
    return data


# ----------------------------------------------------------------------------- internals


def _check_channels(g: torch.nn.Module, cfg: ExperimentConfig, checkpoint: Path) -> None:
    in_nc, out_nc = getattr(g, "input_nc", None), getattr(g, "output_nc", None)
    if in_nc is not None and (in_nc, out_nc) != (cfg.data.input_nc, cfg.data.output_nc):
        raise P2PError(
            f"{checkpoint}: generator maps {in_nc} -> {out_nc} channels but the data has "
            f"data.input_nc {cfg.data.input_nc} -> data.output_nc {cfg.data.output_nc}"
        )


def _check_shapes(fake: torch.Tensor, real: torch.Tensor, checkpoint: Path) -> None:
    if fake.shape != real.shape:
        raise P2PError(
            f"{checkpoint}: generator output {tuple(fake.shape)} does not match the targets "
            f"{tuple(real.shape)} (data.output_nc / crop size vs the checkpoint)"
        )


def _grid_png(rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> bytes:
    """Rows of input | output | target (RGB), 4 px gaps, as PNG bytes."""
    from PIL import Image

    from p2p.data.images import encode_png
    from p2p.inference import tensor_to_image

    if not rows:
        return encode_png(Image.new("RGB", (1, 1), "white"))
    gap = 4
    h, w = rows[0][0].shape[-2:]
    grid = Image.new("RGB", (3 * w + 4 * gap, len(rows) * (h + gap) + gap), "white")
    for r, images in enumerate(rows):
        for c, t in enumerate(images):
            grid.paste(
                tensor_to_image(t).convert("RGB"), (gap + c * (w + gap), gap + r * (h + gap))
            )
    return encode_png(grid)


def _index_html(m: dict[str, Any], n_rows: int) -> str:
    e = html.escape
    scores = [(k, m[k]) for k in ("l1", "psnr", "ssim", "lpips", "fid") if k in m]
    rows = "".join(f"<tr><th>{e(k)}</th><td>{v:.4f}</td></tr>" for k, v in scores)
    base = m.get("baseline_input")
    if base:
        rows += "".join(
            f"<tr><th>{e(k)}, input as output</th><td>{base[k]:.4f}</td></tr>"
            for k in ("l1", "psnr", "ssim")
        )
    rows += "".join(
        f"<tr><th>{e(k)}</th><td>unavailable: {e(str(r))}</td></tr>"
        for k, r in m.get("unavailable", {}).items()
    )
    info = "".join(
        f"<tr><th>{e(k)}</th><td><code>{e(str(m[k]))}</code></td></tr>"
        for k in (
            "split",
            "n_samples",
            "checkpoint",
            "checkpoint_sha256",
            "shards",
            "data_version",
            "testset",
            "eval_mode",
            "created",
        )
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>p2p evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
th,td{{text-align:left;padding:2px 12px}} img{{image-rendering:pixelated;max-width:100%}}</style>
</head><body>
<h1>p2p evaluation: {e(m["split"])} split</h1>
<h2>Metrics</h2><table>{rows}</table>
<h2>Samples</h2><p>{n_rows} rows: input | output | target</p>
<img src="{SAMPLES_FILE}" alt="input | output | target">
<h2>Details</h2><table>{info}</table>
</body></html>
"""
