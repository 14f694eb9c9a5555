"""MLflow tracking: the driver owns the run, rank 0 logs metrics into it.

Who does what:
- The driver (`p2p.training.trainer.fit`) calls `open_run()`: it finds or creates the run, logs
  every param once (`cfg.flat()`, dotted keys such as `train.batch_size`, the same spelling as
  params.yaml and `dvc exp run -S`) and sets the lineage tags (git commit, DVC data version, p2p
  version, params hash, Ray run name and storage). After `fit` it calls `close_run()`.
- Rank 0 of the Ray workers builds a `RunLogger` from the run id and logs metrics only
  (`train/*` per log step, `val/*` per epoch) and the per-epoch sample grid. Workers never create
  runs and never log params (MLflow params are write-once).

No duplicated runs: a run is found again by its tag `p2p.run_name` (the Ray Train run name), so a
worker restart (same driver, same run id) and a re-run of the same command after a driver crash
(same run name -> same Ray storage dir -> same MLflow run) both continue one run.

Tracking URI: `MLFLOW_TRACKING_URI`, else `sqlite:///<cwd>/mlflow.db` made absolute so that Ray
workers (whose working directory differs) write to the same database. A sqlite file only works when
all workers share the driver's filesystem (one machine); use an MLflow server for real clusters.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from p2p.gitinfo import git_commit
from p2p.registry.versions import quote  # MLflow filter literals: one implementation

log = logging.getLogger(__name__)

RUN_NAME_TAG = "p2p.run_name"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, or the project's sqlite database as an absolute URI."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path('mlflow.db').resolve()}"


def default_artifact_location(uri: str) -> str | None:
    """Artifacts of a new experiment: beside a sqlite database (`<db dir>/mlruns`), so that they
    never depend on the working directory; None (the server's choice) for other backends."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return (db.parent / "mlruns").resolve().as_uri()
    return None


# ----------------------------------------------------------------------------- lineage


def data_version(shards: str, raw_dir: str | None = None) -> str | None:
    """A short identifier of the training data (`DataVersion.short`), for tags and the default
    run name.

    In order: DVC's md5 of the raw data the shards were cut from (their index records it), what
    DVC records for the raw dir (its .dvc file or dvc.lock), the raw manifest's sha256 the index
    records. None if nothing is found.
    """
    from p2p.data.versioning import DataVersion, recorded_version

    try:
        from p2p.data.shards import read_index

        indexed = DataVersion.of_index(read_index(shards))
    except Exception:  # no index yet, unreachable store: fall back to DVC's files
        indexed = None
    if indexed is not None and indexed.dvc_recorded:
        return indexed.short
    recorded = recorded_version(raw_dir) if raw_dir else None
    if recorded is not None:
        return recorded.short
    return indexed.short if indexed is not None else None


# build.* keys that only building pairs from photos reads (`p2p data build`, `p2p data demo`);
# build.seed and the split fractions also split an import without split folders: always logged.
BUILD_ONLY_KEYS = ("build.task", "build.num_pairs", "build.size")


def applied_params(cfg: Any) -> dict[str, Any]:
    """The params a run logs: `cfg.flat()` without the build-only keys when the dataset was not
    built from photos (data.source "demo" or data.source_format "photos")."""
    built = cfg.data.source == "demo" or cfg.data.source_format == "photos"
    return {k: v for k, v in cfg.flat().items() if built or k not in BUILD_ONLY_KEYS}


def run_tags(cfg: Any, *, run_name: str, storage_path: str, data_ver: str | None) -> dict[str, str]:
    """Lineage tags of a training run (strings only; no secrets)."""
    from p2p import __version__

    tags = {
        RUN_NAME_TAG: run_name,
        "p2p.version": __version__,
        "p2p.params_hash": cfg.model_hash(),  # the keys that define the model
        "p2p.data.shards": cfg.data.shards,
        "ray.run_name": run_name,
        "ray.storage_path": storage_path,
    }
    commit, _ = git_commit()
    if commit != "unknown":
        tags["git.commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    if data_ver:
        tags["dvc.data_version"] = data_ver
    return tags


# ----------------------------------------------------------------------------- driver side


def open_run(
    cfg: Any,
    *,
    run_name: str,
    tags: dict[str, str],
    uri: str | None = None,
    resumed_at: int | None = None,
    changed: dict[str, tuple[str, str]] | None = None,
) -> str:
    """Find (by tag `p2p.run_name`) or create the run of `run_name`; log params once; set tags.

    MLflow params are write-once, and they must show the values that trained:
    - A resumed run (`resumed_at` = the checkpoint's step) keeps its run. Its params are the
      values it started with; every key whose value changed at this resume (`changed`, from the
      checkpoint's config, e.g. more `train.epochs`, or `optim.lr` with
      `p2p train --allow-changed-params`) gets the tag `params_changed.<key>` =
      `old -> new @ step N` (appended to on later changes), and the tag `p2p.resumed_with`
      holds the current values of all params that differ from the logged ones.
    - A fresh start (no checkpoint, `resumed_at` None) reuses an existing run of that name only
      if its params are the same (a driver that died before its first checkpoint); with other
      params it creates a new run, since that run's params would not be what trains now.

    Returns:
        The MLflow run id (passed to the Ray workers).
    """
    from mlflow import MlflowClient
    from mlflow.entities import Param, RunStatus, RunTag

    uri = uri or tracking_uri()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.train.experiment)
    if exp is not None:
        exp_id = exp.experiment_id
    else:
        exp_id = client.create_experiment(
            cfg.train.experiment, artifact_location=default_artifact_location(uri)
        )
    existing = find_run(cfg.train.experiment, run_name, uri=uri)
    params = {k: param_value(v) for k, v in applied_params(cfg).items()}
    if existing:
        old = client.get_run(existing).data.params
        differs = {k: v for k, v in params.items() if k in old and old[k] != v}
        if resumed_at is None and differs:
            existing = None  # a new start with other params: a new run
    if existing:
        run = client.get_run(existing)
        run_id = existing
        new = {k: v for k, v in params.items() if k not in old}
        if differs:
            log.info("resuming run %s with changed params: %s", run_name, sorted(differs))
            tags = {**tags, "p2p.resumed_with": json.dumps(differs, sort_keys=True)[:5000]}
        for key, (was, now) in sorted((changed or {}).items()):
            entry = f"{was} -> {now} @ step {resumed_at or 0}"
            before = run.data.tags.get(f"params_changed.{key}")
            value = f"{before}; {entry}" if before else entry
            tags = {**tags, f"params_changed.{key}": value[-5000:]}  # newest changes kept
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    else:
        run_id = client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        new = params
    items = [Param(k, v) for k, v in new.items()]
    for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
        client.log_batch(run_id, params=items[i : i + 100])
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    return run_id


def close_run(run_id: str, *, ok: bool, uri: str | None = None) -> None:
    """Mark the run FINISHED or FAILED."""
    from mlflow import MlflowClient

    MlflowClient(uri or tracking_uri()).set_terminated(run_id, "FINISHED" if ok else "FAILED")


def log_run_summary(run_id: str, summary: dict[str, Any], uri: str | None = None) -> None:
    """Driver-side tags after fit: final checkpoint URI etc. (strings)."""
    from mlflow import MlflowClient
    from mlflow.entities import RunTag

    client = MlflowClient(uri or tracking_uri())
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in summary.items()])


def find_run(experiment: str, run_name: str, uri: str | None = None) -> str | None:
    """The id of the run tagged `p2p.run_name = run_name` in `experiment`, or None."""
    from mlflow import MlflowClient

    client = MlflowClient(uri or tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    found = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{RUN_NAME_TAG}` = {quote(run_name)}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0].info.run_id if found else None


def log_config_artifact(run_id: str, text: str, uri: str | None = None) -> None:
    """The resolved params as `params.yaml` in the run's artifacts (overwritten on resume)."""
    from mlflow import MlflowClient

    MlflowClient(uri or tracking_uri()).log_text(run_id, text, "params.yaml")


def param_value(v: Any) -> str:
    """A config value as an MLflow param (strings; lists, dicts, bools and None as JSON)."""
    return json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None else str(v)


# ----------------------------------------------------------------------------- worker side


class RunLogger:
    """Metrics and images into an existing run; a no-op when disabled (ranks other than 0).

    Args:
        run_id: the driver's run (None disables logging).
        uri: tracking URI (the driver's, made absolute).
        enabled: False on every rank but 0.
    """

    def __init__(self, run_id: str | None, uri: str | None, *, enabled: bool = True) -> None:
        self.run_id = run_id
        self.enabled = bool(enabled and run_id)
        self._client = None
        if self.enabled:
            from mlflow import MlflowClient

            self._client = MlflowClient(uri or tracking_uri())

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """One batch of metrics at `step` (the global G step)."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if v is not None]
        try:
            self._client.log_batch(self.run_id, metrics=items)
        except Exception as e:  # tracking must never kill training
            log.warning("MLflow log_metrics failed: %s", e)

    def log_image(self, image: Any, artifact_file: str) -> None:
        """A PIL image as a PNG artifact at `artifact_file` (e.g. samples/epoch_0001.png)."""
        if not self.enabled:
            return
        try:
            self._client.log_image(self.run_id, image, artifact_file=artifact_file)
        except Exception as e:
            log.warning("MLflow log_image failed: %s", e)


def sample_grid(real_a: Any, fake_b: Any, real_b: Any, max_rows: int = 8) -> Any:
    """A PIL image with one row per sample: input | output | target, labelled and upscaled
    (p2p.evaluation.grid.render_grid, the renderer of `p2p evaluate`'s samples.png).

    Args:
        real_a, fake_b, real_b: (B, C, H, W) tensors in [-1, 1] (C is 1 or 3).
        max_rows: at most this many samples.
    """
    from p2p.evaluation.grid import render_grid

    rows = list(zip(real_a[:max_rows], fake_b[:max_rows], real_b[:max_rows], strict=True))
    return render_grid([[t.detach().float().cpu() for t in r] for r in rows])
