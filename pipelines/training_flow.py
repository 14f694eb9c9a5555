"""training_flow: train on Ray -> evaluate -> register -> promotion gate.

Idempotent per (data version, params hash): if the registry already holds a version trained on
this data with these params, training and registration are skipped (that version is gated if it
never was). One training at a time per output directory on a machine: a file lock (in the
temp dir, keyed by the directory) is held from the registry lookup to the registration, so two
runs of the same key cannot both train, nor overwrite each other's generator.pt.

A run that trained with params.yaml's values into the paths dvc.yaml declares (models/,
reports/) records the stages train and evaluate in dvc.lock, as `dvc repro` would.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import flow

from pipelines import cli, tasks


@flow(name="training_flow", log_prints=True)
def training_flow(
    params: str = "params.yaml",
    overrides: list[str] | None = None,
    data_version: str | None = None,
    address: str | None = None,
    out_dir: str = "models",
    reports_dir: str = "reports",
) -> dict[str, Any]:
    """Train, evaluate, register and gate one model.

    Args:
        params: params file.
        overrides: dotted overrides.
        data_version: the DVC md5 of the training data (lineage and idempotency key); default:
            what the shard index of data.shards records.
        address: Ray address (auto, ray://host:10001, http://head:8265); default
            resources.address, else RAY_ADDRESS, else a local Ray.
        out_dir: where the trained generator is exported.
        reports_dir: where evaluation results go (metrics.json, samples.png, index.html).

    Returns:
        {"version", "promoted", "champion", "skipped", "data_version", "params_hash",
         "metrics", "gate"}
    """
    from p2p.registry import find_version

    cfg = tasks.load(params, overrides)
    c = tasks.cfg_of(cfg)
    name, key = c.eval.model_name, c.model_hash()
    data_version = data_version or tasks.shard_data_version(c.data.shards)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with _training_lock(Path(out_dir)):
        existing = find_version(name, data_version=data_version, params_hash=key)
        if existing is not None:
            print(
                f"{existing.uri} was already trained on data {data_version} with params {key}: "
                "skipping training and registration"
            )
            return _already_registered(cfg, existing)
        print(f"training {name} on data {data_version} with params {key}")
        trained = tasks.train(cfg, address=address, out_dir=out_dir)
        metrics = tasks.evaluate(cfg, trained["generator"], out_dir=reports_dir)
        lineage = {
            "data_version": data_version,
            "params_hash": key,
            "ray_run": trained["run_name"],
            "ray_checkpoint": trained["checkpoint_uri"],
            "training_run_id": trained["mlflow_run_id"],
        }
        version = tasks.register(cfg, trained["generator"], metrics, lineage)
    decision = tasks.gate(cfg, version)
    # the dvc.yaml stages this run is (train, evaluate), in dvc.lock as `dvc repro` records them
    written = {"train": f"{out_dir}/generator.pt", "evaluate": f"{reports_dir}/metrics.json"}
    stages = tasks.recordable_stages(cfg, ("train", "evaluate"), written)
    if stages:
        tasks.record(stages)
    return {
        "version": version,
        "promoted": decision["promoted"],
        "champion": decision["promoted"],
        "skipped": False,
        "data_version": data_version,
        "params_hash": key,
        "metrics": _scores(metrics),
        "gate": decision,
    }


@contextlib.contextmanager
def _training_lock(out_dir: Path) -> Iterator[None]:
    """Hold the machine-wide lock of `out_dir` for the block; says so when another run has it."""
    import hashlib
    import tempfile

    from filelock import FileLock, Timeout

    key = hashlib.sha256(str(out_dir.resolve()).encode()).hexdigest()[:16]
    lock = FileLock(str(Path(tempfile.gettempdir()) / f"p2p-training-{key}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"another training run is writing {out_dir}; waiting for it to finish")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _already_registered(cfg: dict[str, Any], existing: Any) -> dict[str, Any]:
    """The result for a key that is already registered: gate it only if it never was."""
    if existing.tags.get("gate.decision"):
        gate = existing.group("gate")
        promoted = False  # decided by an earlier run; nothing changes now
        print(f"{existing.uri}: gate already decided ({gate['decision']}): {gate.get('reason')}")
    else:
        gate = tasks.gate(cfg, existing.version)
        promoted = gate["promoted"]
    return {
        "version": existing.version,
        "promoted": promoted,
        "champion": _is_champion(existing),
        "skipped": True,
        "data_version": existing.tags.get("lineage.data_version"),
        "params_hash": existing.tags.get("lineage.params_hash"),
        "metrics": existing.scores(),
        "gate": gate,
    }


def _is_champion(version: Any) -> bool:
    from p2p.registry import get_version

    return "champion" in get_version(version.name, version.version).aliases


def _scores(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k in ("l1", "psnr", "ssim", "lpips", "fid")}


# ----------------------------------------------------------------------------- command line


def parser() -> argparse.ArgumentParser:
    """`python -m pipelines.training_flow`: one option per parameter of training_flow."""
    p = cli.flow_parser("pipelines.training_flow", __doc__, address=True)
    p.add_argument(
        "--data-version",
        help="DVC md5 of the training data (default: what the shard index of data.shards records)",
    )
    p.add_argument("--out-dir", default="models", help="where the generator is exported (models)")
    p.add_argument("--reports-dir", default="reports", help="evaluation results (reports)")
    return p


def main(argv: list[str] | None = None) -> int:
    return cli.run(parser(), training_flow, argv)


if __name__ == "__main__":
    raise SystemExit(main())
