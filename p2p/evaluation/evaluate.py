"""`p2p evaluate`: score a generator checkpoint on a split of the shards.

Writes to `out_dir`:
    metrics.json   l1, psnr, ssim (+ lpips/fid if computable offline, else the reason in
                   "unavailable"), n_samples, split, the checkpoint and its sha256, the shards
                   and their data version, and `testset`: a key of everything that defines
                   the test set (data version, split, sample count, eval transform, eval mode).
                   Two scores are comparable exactly when their testset keys are equal.
                   `inference_mode`: the mode the scores were taken in (eval.inference_mode);
                   `modes_val`: l1/psnr/ssim on the val split in BOTH modes (paper, eval).
                   `baselines`, `baseline_labels`, `margins_psnr`, `beats_baselines`: the
                   trivial baselines scored on the same images (p2p.evaluation.baselines)
                   and the model's PSNR margin over each, in dB.
    samples.png    eval.num_samples test images spread over the split, one per row:
                   input | output | target, labelled and upscaled (p2p.evaluation.grid)
    index.html     a results page (p2p.evaluation.report): model name and version, metrics
                   with units, baselines and margins, the grid

Inference modes (p2p.inference): paper = dropout on and each image's own batch statistics
(batch 1, dropout seeded per image with DEFAULT_SEED, so the scores are reproducible and
`p2p predict` / the served model return the very images scored); eval = running statistics,
no dropout. Every file is written to a temporary name and renamed: a failed evaluation leaves
the previous results intact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from p2p import __version__
from p2p.atomic import file_sha256, write_bytes_atomic
from p2p.config import ExperimentConfig
from p2p.errors import P2PError
from p2p.evaluation.baselines import Method, baseline_methods
from p2p.evaluation.grid import pick_rows, render_grid
from p2p.evaluation.report import SAMPLES_FILE, index_html
from p2p.evaluation.scoring import ScoreSums, score_batches
from p2p.inference import DEFAULT_SEED, MODES, check_mode, dropout_seed, inference_mode

if TYPE_CHECKING:
    from p2p.data.shards import ShardIndex

log = logging.getLogger(__name__)

METRICS_FILE, INDEX_FILE = "metrics.json", "index.html"  # samples.png: report.SAMPLES_FILE
METRICS_FORMAT = "p2p.metrics"


def data_version_of(index: ShardIndex) -> str:
    """The data version a shard index records: the DVC md5 of the raw data when DVC tracks it
    (the same string as `version_dataset(...).md5`), else the raw manifest's sha256."""
    from p2p.data.versioning import DataVersion

    return DataVersion.of_index(index).full


def testset_key(index: ShardIndex, split: str, cfg: ExperimentConfig) -> str:
    """A short key of everything that defines a test set: scores with equal keys are comparable.

    The split's shard bytes (their sha256s: shards are deterministic), the eval transform and
    the eval mode.
    """
    d = cfg.data
    entry = index.splits.get(split)
    spec = {
        "shards": [s.sha256 for s in entry.shards] if entry else [],
        "samples": entry.samples if entry else None,
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
    version: str | None = None,
) -> dict[str, Any]:
    """Score `checkpoint` on every sample of `split` once and write the results to `out_dir`.

    Args:
        checkpoint: a p2p generator checkpoint or a reference `latest_net_G.pth`.
        shards: the shard dir or s3:// prefix (with index.json).
        cfg: data settings (eval transform) and eval settings (batch size, samples, mode).
        out_dir: where metrics.json, samples.png and index.html go (created).
        split: train | val | test.
        device: where the generator runs (default: cuda if available, else cpu).
        version: the model version shown on index.html (e.g. "models:/pix2pix/3"); default:
            the checkpoint file name and its sha256.

    Returns:
        The metrics dict, as written to metrics.json.

    Raises:
        P2PError: unreadable checkpoint, missing split, or a generator/data mismatch.
    """
    from p2p.checkpoints import load_generator
    from p2p.data.shards import read_index
    from p2p.evaluation.metrics import OptionalMetrics

    t0 = time.perf_counter()
    out = Path(out_dir)
    checkpoint = Path(checkpoint)
    index = read_index(shards)
    n_total = index.samples(split)
    if n_total <= 0:
        raise P2PError(f"{shards}: split {split!r} has no samples to evaluate")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    g = load_generator(checkpoint, device=device, eval_mode=True)
    _check_channels(g, cfg, checkpoint)
    mode = check_mode(cfg.eval.inference_mode, "eval.inference_mode")
    # the trivial baselines (p2p.evaluation.baselines), scored on the same images in one pass
    n_val = index.samples("val")
    baselines, labels = baseline_methods(
        g, cfg, mode, lambda: _eval_batches(shards, "val", n_val, cfg, cfg.eval.batch_size, device)
        if n_val else None,
    )  # fmt: skip
    extra = OptionalMetrics(device)
    res = _score_split(
        g, shards, split, n_total, cfg, mode, device, checkpoint,
        rows=pick_rows(n_total, cfg.eval.num_samples), baselines=baselines, extra=extra,
    )  # fmt: skip
    margins = {k: res.means["psnr"] - b["psnr"] for k, b in res.baselines.items()}
    # Both modes on val: the same weights give different images in each; this shows which
    # mode suits the model (the test scores above use eval.inference_mode).
    modes_val: dict[str, dict[str, float]] = {}
    for m in MODES if n_val else ():
        if split == "val" and m == mode:
            modes_val[m] = res.means
        else:
            modes_val[m] = _score_split(g, shards, "val", n_val, cfg, m, device, checkpoint).means
    n, rows = res.n, res.rows
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
        **res.means,
        **scores,
        "unavailable": unavailable,
        # {input, untrained, classical}: {l1, psnr, ssim} of each baseline on the same images
        "baselines": res.baselines,
        "baseline_labels": labels,  # what each baseline is, e.g. the classical method
        "margins_psnr": margins,  # model PSNR - baseline PSNR, dB
        "beats_baselines": bool(margins) and all(v > 0 for v in margins.values()),
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint),
        "shards": str(shards),
        "data_version": data_version,
        "manifest_sha256": index.data_version.get("manifest_sha256"),
        "testset": testset_key(index, split, cfg),
        "inference_mode": mode,  # the mode of the scores above
        "eval_mode": mode == "eval",  # the same, as the older boolean
        "seed": DEFAULT_SEED if mode == "paper" else None,  # paper mode: dropout seed per image
        "modes_val": modes_val,  # {mode: {l1, psnr, ssim}} on the val split ({} without one)
        "params_hash": cfg.model_hash(),  # the keys that define the model
        "p2p_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / SAMPLES_FILE, _grid_png(rows))
    write_bytes_atomic(out / METRICS_FILE, (json.dumps(metrics, indent=2) + "\n").encode())
    html_page = index_html(metrics, len(rows), model_name=cfg.eval.model_name, version=version)
    write_bytes_atomic(out / INDEX_FILE, html_page.encode())
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


@dataclasses.dataclass
class _SplitScores:
    n: int
    means: dict[str, float]  # l1, psnr, ssim
    baselines: dict[str, dict[str, float]]  # name -> l1, psnr, ssim of that baseline
    rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # grid rows (input, output, target)


def _eval_batches(
    shards: str, split: str, n_total: int, cfg: ExperimentConfig, batch: int, device: str
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every sample of `split` once, in order, with the eval transform."""
    from p2p.data.dataset import make_loader

    # ceil(N / batch) batches; the last one is padded by wrapping around to the first
    # samples, which are dropped here
    loader = make_loader(
        shards, split, cfg.data, batch_size=batch, rank=0, world_size=1, train=False,
        seed=cfg.train.seed, epoch=0,
    )  # fmt: skip
    n = 0
    for real_a, real_b in loader:
        keep = min(real_a.shape[0], n_total - n)  # drop the wrap-around padding
        if keep <= 0:
            break
        n += keep
        yield real_a[:keep].to(device, torch.float32), real_b[:keep].to(device, torch.float32)


def _score_split(
    g: torch.nn.Module,
    shards: str,
    split: str,
    n_total: int,
    cfg: ExperimentConfig,
    mode: str,
    device: str,
    checkpoint: Path,
    *,
    rows: Sequence[int] = (),
    baselines: dict[str, Method] | None = None,
    extra: Any = None,
) -> _SplitScores:
    """Score every sample of `split` once in inference `mode`.

    Paper mode runs one image per forward pass under `dropout_seed(g, DEFAULT_SEED)`: each
    image is normalised with its own statistics and its dropout mask depends on the seed only,
    so a score is reproducible and `p2p predict` / the pyfunc / ONNX give the images scored.
    """
    paper = mode == "paper"
    batch = 1 if paper else max(1, cfg.eval.batch_size)
    batches = _eval_batches(shards, split, n_total, cfg, batch, device)
    baselines = baselines or {}

    def generate(real_a: torch.Tensor) -> torch.Tensor:
        with dropout_seed(g, DEFAULT_SEED) if paper else contextlib.nullcontext():
            return g(real_a)

    base = {k: ScoreSums() for k in baselines}
    wanted, grid = set(rows), []
    seen = 0

    def on_batch(real_a: torch.Tensor, fake_b: torch.Tensor, real_b: torch.Tensor, _: int) -> None:
        nonlocal seen
        _check_shapes(fake_b, real_b, checkpoint)
        for k, method in baselines.items():
            base[k].add(method(real_a), real_b)
        if extra is not None and fake_b.shape[1] == 3:  # LPIPS / Inception take RGB
            extra.update(fake_b, real_b)
        for i in range(real_a.shape[0]):
            if seen + i in wanted:
                grid.append((real_a[i].cpu(), fake_b[i].cpu(), real_b[i].cpu()))
        seen += real_a.shape[0]

    with inference_mode(g, mode), torch.no_grad():
        sums = score_batches(batches, generate, on_batch=on_batch)
    if sums.n != n_total:
        raise P2PError(f"{shards}: read {sums.n} {split} samples but the index says {n_total}")
    return _SplitScores(
        n=sums.n,
        means=sums.means(),
        baselines={k: b.means() for k, b in base.items()},
        rows=grid,
    )


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
    """samples.png: labelled rows of input | output | target (p2p.evaluation.grid)."""
    from p2p.data.images import encode_png

    return encode_png(render_grid(rows))
