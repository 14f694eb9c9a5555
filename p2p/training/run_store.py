"""A training run's folder under `train.storage_path` (a local directory or any URL that
p2p.data.storage serves): its name, its checkpoints and what `p2p train` takes out of them.

    <storage_path>/<run name>/epoch_NNNN/{generator.pt, metrics.json, config.json, train_log.csv}
    <storage_path>/<run name>/p2p.lease   (p2p.training.lease)

Every read goes through p2p.data.storage, so a new storage backend serves checkpoints too;
Ray Train writes them through the pyarrow filesystem that backend gives (`ray_storage`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2p.atomic import write_atomic, write_text_atomic
from p2p.config import ExperimentConfig
from p2p.data import storage
from p2p.data.storage import ObjectNotFound, StorageError
from p2p.errors import P2PError
from p2p.training import tracking
from p2p.training.state import changed_params, needs_permission

EXPORTED = ("generator.pt", "train_log.csv", "metrics.json")
_EPOCH_DIR = re.compile(r"^epoch_(\d+)$")
# One path component that every storage backend (local, S3 via pyarrow, MLflow tags) accepts.
RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class TrainResult:
    """What `fit` produced."""

    run_name: str
    generator_path: Path
    train_log_path: Path
    metrics_path: Path
    checkpoint_uri: str  # the final checkpoint directory (local path or s3://...)
    mlflow_run_id: str | None
    metrics: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------- names


def default_run_name(cfg: ExperimentConfig) -> str:
    """`p2p-<dataset>-<data version>-<params hash>`: the same data and params give the same name,
    so re-running a command resumes its run."""
    version = tracking.data_version(cfg.data.shards, cfg.data.raw_dir) or "nodata"
    name = f"p2p-{cfg.data.name[:100]}-{version[:8]}-{cfg.params_hash()[:8]}"
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)


def check_run_name(name: str, source: str) -> str:
    """`name` if it is a valid run name, else a P2PError naming `source` (e.g. --run-name)."""
    if not RUN_NAME_RE.match(name):
        raise P2PError(
            f"{source} {name!r}: not a valid run name (1-128 characters: letters, digits, "
            "'.', '_', '-', starting with a letter or digit; no '/', spaces or '..')"
        )
    return name


# ----------------------------------------------------------------------------- checkpoints


def latest_checkpoint(storage_path: str, run_name: str) -> str | None:
    """URI of the highest `epoch_NNNN` checkpoint of a run that holds a generator, or None."""
    root = storage.join_url(storage_path, run_name)
    try:
        urls = storage.list_urls(root, suffix="generator.pt")
    except ObjectNotFound:  # no bucket yet: no checkpoint either
        return None
    epochs = []
    for url in urls:
        parts = url[len(root) :].strip("/").split("/")  # epoch_NNNN/generator.pt
        if len(parts) == 2 and parts[1] == "generator.pt" and (m := _EPOCH_DIR.match(parts[0])):
            epochs.append((int(m.group(1)), parts[0]))
    return storage.join_url(root, max(epochs)[1]) if epochs else None


def _read_json(checkpoint_uri: str, name: str) -> dict[str, Any]:
    return json.loads(storage.read_bytes(storage.join_url(checkpoint_uri, name)))


def finished_checkpoint(storage_path: str, run_name: str, epochs: int) -> str | None:
    """The latest checkpoint of the run if it already holds `epochs` epochs, else None."""
    uri = latest_checkpoint(storage_path, run_name)
    if uri is None:
        return None
    try:
        done = int(_read_json(uri, "metrics.json").get("epoch", 0))
    except (StorageError, OSError, ValueError):
        return None
    return uri if done >= epochs else None


def resume_changes(
    run_cfg: ExperimentConfig, run_name: str, *, allow: bool
) -> tuple[dict[str, tuple[str, str]], int | None]:
    """How the params differ from those of the run's latest checkpoint.

    Returns:
        ({dotted key: (old, new)} for every changed key, the checkpoint's step), or ({}, None)
        when the run has no checkpoint yet.

    Raises:
        P2PError: keys that change the model differ and `allow` is False (one line: the keys
            with old -> new values, and the two ways out).
    """
    ckpt = latest_checkpoint(run_cfg.train.storage_path, run_name)
    if ckpt is None:
        return {}, None
    try:
        old = _read_json(ckpt, "config.json")
        step = int(_read_json(ckpt, "metrics.json").get("step", 0))
    except (StorageError, OSError, ValueError) as e:
        raise P2PError(f"{ckpt}: cannot read the checkpoint's config: {e}") from None
    changed = changed_params(old, run_cfg.to_dict())
    refused = needs_permission(changed)
    if refused and not allow:
        shown = ", ".join(f"{k} {o} -> {n}" for k, (o, n) in refused.items())
        raise P2PError(
            f"run {run_name} was trained with other params (its checkpoint {ckpt} says): "
            f"{shown}; pass --allow-changed-params to continue it with the new values, or "
            "start a new run with another --run-name"
        )
    return changed, step


def checkpoint_uri(checkpoint: Any, storage_path: str) -> str:
    """A Ray Checkpoint's location as a URI (paths in a URL store come back without their
    scheme: Ray sees only the path inside the backend's filesystem)."""
    scheme = storage.scheme_of(storage_path)
    path = checkpoint.path
    return f"{scheme}://{path}" if scheme and "://" not in path else path


# ----------------------------------------------------------------------------- outputs


def export_outputs(
    checkpoint_uri: str, out_dir: Path, *, run_name: str, mlflow_run_id: str | None
) -> TrainResult:
    """Copy generator.pt and train_log.csv of a checkpoint to `out_dir` (atomically), write
    train_metrics.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in EXPORTED:
        src = storage.join_url(checkpoint_uri, name)
        dst = out_dir / ("checkpoint_metrics.json" if name == "metrics.json" else name)

        def copy(tmp: str, src: str = src) -> None:
            with storage.open_url(src) as fin, open(tmp, "wb") as fout:
                while chunk := fin.read(1 << 22):
                    fout.write(chunk)

        try:
            write_atomic(dst, copy)
        except FileNotFoundError:  # ObjectNotFound too
            raise P2PError(f"{checkpoint_uri}: checkpoint has no {name}") from None
    ckpt_metrics_path = out_dir / "checkpoint_metrics.json"
    metrics = json.loads(ckpt_metrics_path.read_text())
    ckpt_metrics_path.unlink()
    summary = {
        **{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        "run": {"name": run_name, "mlflow_run_id": mlflow_run_id, "checkpoint": checkpoint_uri},
    }
    metrics_path = out_dir / "train_metrics.json"
    write_text_atomic(metrics_path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return TrainResult(
        run_name=run_name,
        generator_path=out_dir / "generator.pt",
        train_log_path=out_dir / "train_log.csv",
        metrics_path=metrics_path,
        checkpoint_uri=checkpoint_uri,
        mlflow_run_id=mlflow_run_id,
        metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
    )
