"""Thin Prefect tasks over the p2p library: one task per stage, named as the DVC stage and CLI.

Tasks pass plain dicts (config via `ExperimentConfig.to_dict()`), so their inputs and results
serialise. Tasks that touch S3 or a DVC remote and can safely run again (version, shard,
evaluate) retry transient errors (dropped connections, timeouts, throttling, 5xx, failed DVC
transfers) with exponential backoff; bad input (DataError, ConfigError) fails at once. Training,
registration and the promotion gate never retry inside a flow run: a failed training leaves the
registry untouched, and the flows guard them with an idempotency key instead.

Nothing is cached by Prefect (`NO_CACHE`): every task has side effects, and the idempotency key
(data version + params hash, looked up in the MLflow registry) is the only reuse rule.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from p2p.config import ExperimentConfig

# errno values of a network that is down or dropped the connection (retry), as opposed to a
# missing file or a permission problem (do not).
_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EPIPE,
    }
)


def is_transient(exc: BaseException) -> bool:
    """True if `exc` (or an exception it was raised from) is worth retrying.

    Transient: connection refused/reset/timed out, what a storage backend calls transient
    (p2p.data.storage.is_transient_error: S3 connection and read errors, throttling, 5xx), DVC
    transfer failures. Never transient: DataError and ConfigError
    (bad input does not get better by retrying), anything else.
    """
    from p2p.config import ConfigError
    from p2p.errors import DataError

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, DataError | ConfigError):
            return False
        if _transient_one(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _transient_one(e: BaseException) -> bool:
    if isinstance(e, ConnectionError | TimeoutError):
        return True
    if isinstance(e, OSError) and e.errno in _NETWORK_ERRNOS:
        return True
    from p2p.data.storage import is_transient_error

    if is_transient_error(e):  # any storage backend's: S3 connection drops, throttling, 5xx
        return True
    try:
        from dvc.exceptions import DownloadError, UploadError

        if isinstance(e, UploadError | DownloadError):  # "N files failed to upload"
            return True
    except ImportError:  # pragma: no cover - dvc is a dependency
        pass
    return False


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry only transient I/O errors (see `is_transient`)."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            state.result()
        except BaseException as e:  # noqa: BLE001 - we only classify it
            exc = e
    return exc is not None and is_transient(exc)


# Transient S3 / DVC-remote errors: up to 3 retries after 2, 4, 8 s (+-50% jitter).
IO_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_if_transient,
}


def cfg_of(cfg: dict[str, Any]) -> ExperimentConfig:
    """The typed config back from the dict tasks pass around."""
    return ExperimentConfig.from_dict(cfg)


def in_process(c: ExperimentConfig) -> ExperimentConfig:
    """The config for evaluation inside a flow run: shards are read in this process.

    DataLoader worker processes forked from a Prefect 3.8 flow run exit with code 1 (Prefect
    resets its log service in the forked child, whose at-exit drain then fails an assertion),
    which fails the evaluation at its last batch. The test split is small; nothing is lost.
    """
    return c.replace(**{"data.loader_workers": 0})


def load(params: str | Path, overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """Resolve params file + dotted overrides into the plain dict the tasks take."""
    from p2p.config import load_config

    return load_config(params, overrides).to_dict()


# ----------------------------------------------------------------------------- data_flow


@task(name="prepare", cache_policy=NO_CACHE)
def prepare(cfg: dict[str, Any]) -> dict[str, Any]:
    """data.source (demo photos, an aligned/folders dataset or a photo folder) -> data.raw_dir."""
    from p2p.data.prepare import prepare_dataset

    c = cfg_of(cfg)
    report = prepare_dataset(c)
    print(report.summary())
    return {"raw_dir": c.data.raw_dir, "pairs": report.num_pairs, "counts": dict(report.counts)}


@task(name="validate", cache_policy=NO_CACHE)
def validate(cfg: dict[str, Any]) -> dict[str, int]:
    """Validate the canonical dataset (every image decoded, sha256 checked); raises with every
    offending file listed."""
    from p2p.data.validate import validate_dataset

    c = cfg_of(cfg)
    report = validate_dataset(c.data.raw_dir, data=c.data)
    report.raise_if_bad()
    counts = ", ".join(f"{s} {n}" for s, n in report.counts.items())
    print(f"{c.data.raw_dir}: valid ({counts})")
    return dict(report.counts)


@task(name="version", cache_policy=NO_CACHE, **IO_RETRIES)
def version(cfg: dict[str, Any], in_pipeline: bool = False) -> dict[str, Any]:
    """DVC-version data.raw_dir (in the repository of the working directory) and push it.

    `in_pipeline`: data.raw_dir is the out of the dvc.yaml stage `prepare` and this run used
    params.yaml's values: the version goes to dvc.lock (`dvc commit prepare`, what `dvc repro`
    records). Otherwise `dvc add` writes `data.raw_dir.dvc`.
    """
    from p2p.data.versioning import commit_stages, current_version, version_dataset

    raw_dir = cfg_of(cfg).data.raw_dir
    if in_pipeline:
        pushed = commit_stages(["prepare"])  # {path: version with the remote it went to}
        v = current_version(raw_dir)
        assert v is not None  # dvc.lock records it now
        v = pushed.get(v.path, v)
    else:
        v = version_dataset(raw_dir)
    files = f"{v.nfiles} files, " if v.nfiles is not None else ""
    size = f"{v.size / 1e6:.1f} MB" if v.size is not None else "size unknown"
    print(f"data version {v.md5} of {v.path} ({files}{size}) in {v.dvc_file}")
    return v.to_dict()


@task(name="record", cache_policy=NO_CACHE, **IO_RETRIES)
def record(stages: list[str]) -> list[str]:
    """Record dvc.yaml stages this flow ran in dvc.lock (`dvc commit`) and push their outs, so
    that `dvc repro` afterwards has nothing to do."""
    from p2p.data.versioning import commit_stages

    commit_stages(list(stages))
    print(f"dvc.lock records stages {', '.join(stages)}, as `dvc repro` would")
    return list(stages)


def recordable_stages(
    cfg: dict[str, Any], stages: tuple[str, ...], written: dict[str, str] | None = None
) -> list[str]:
    """The dvc.yaml stages among `stages` that a flow run may record in dvc.lock after running
    them itself: the run used params.yaml's values for every param the stage lists (and for
    data.raw_dir / data.shards, its paths), its outs and deps are local, and the flow wrote the
    paths the stage declares (`written`: stage -> path). Prints why a stage is left out.

    Raises:
        DataError: data.raw_dir is the out of stage `prepare` but this run's params differ
            from params.yaml's: writing it would make dvc.lock lie (checked before writing).
    """
    from p2p.config import load_config
    from p2p.data import storage
    from p2p.data.versioning import stage_params
    from p2p.errors import DataError

    spec = stage_params() if Path("params.yaml").is_file() else {}
    if not spec:
        return []
    run, base = cfg_of(cfg).flat(), load_config("params.yaml").flat()
    diff = sorted(k for k in run.keys() | base.keys() if run.get(k) != base.get(k))
    ok = []
    for name in stages:
        if name not in spec:
            continue
        keys = [*spec[name]["params"], "data.raw_dir", "data.shards"]
        bad = [k for k in diff if any(k == p or k.startswith(p + ".") for p in keys)]
        paths = spec[name]["outs"] + spec[name]["deps"]
        if bad:
            why = f"this run has {bad[0]}={run.get(bad[0])!r}, params.yaml {base.get(bad[0])!r}"
        elif not all(storage.is_local(p) for p in paths):
            why = "DVC tracks local paths only"
        elif written and name in written and Path(written[name]).as_posix() not in paths:
            why = f"this run wrote {written[name]}, dvc.yaml declares {spec[name]['outs']}"
        else:
            ok.append(name)
            continue
        if name == "prepare" and Path(run["data.raw_dir"]).as_posix() in spec[name]["outs"]:
            raise DataError(
                f"{run['data.raw_dir']}: data.raw_dir is the out of dvc.yaml stage 'prepare' "
                f"and {why}; edit params.yaml instead of overriding, or set another data.raw_dir"
            )
        print(f"dvc.lock: stage {name!r} not recorded ({why})")
    return ok


@task(name="shard", cache_policy=NO_CACHE, **IO_RETRIES)
def shard(cfg: dict[str, Any]) -> dict[str, Any]:
    """Write WebDataset shards (local dir or s3://) from the canonical dataset."""
    from p2p.data.shards import write_shards
    from p2p.data.versioning import DataVersion

    c = cfg_of(cfg)
    index = write_shards(c.data.raw_dir, c.data.shards, c.data, progress=print)
    return {
        "shards": c.data.shards,
        "totals": index.totals,
        "data_version": DataVersion.of_index(index).full,
    }


# ----------------------------------------------------------------------------- training_flow


@task(name="train", cache_policy=NO_CACHE)
def train(
    cfg: dict[str, Any], address: str | None = None, out_dir: str = "models"
) -> dict[str, Any]:
    """Train on Ray (local, or the cluster at `address`); exports out_dir/generator.pt."""
    from p2p.training.trainer import fit

    r = fit(cfg_of(cfg), out_dir=out_dir, address=address)
    print(f"trained {r.run_name}: {r.generator_path} (checkpoint {r.checkpoint_uri})")
    return {
        "run_name": r.run_name,
        "generator": str(r.generator_path),
        "checkpoint_uri": r.checkpoint_uri,
        "mlflow_run_id": r.mlflow_run_id,
        "metrics": dict(r.metrics),
    }


@task(name="evaluate", cache_policy=NO_CACHE, **IO_RETRIES)
def evaluate(cfg: dict[str, Any], checkpoint: str, out_dir: str = "reports") -> dict[str, Any]:
    """Score the generator on the test split; writes metrics.json, samples.png, index.html."""
    from p2p.evaluation.evaluate import evaluate_checkpoint

    c = in_process(cfg_of(cfg))
    m = evaluate_checkpoint(checkpoint, c.data.shards, c, out_dir)
    print(
        f"{checkpoint} on {m['n_samples']} {m['split']} samples: L1 {m['l1']:.4f}  "
        f"PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.4f}  -> {Path(out_dir) / 'metrics.json'}"
    )
    return m


@task(name="register", cache_policy=NO_CACHE)
def register(
    cfg: dict[str, Any], checkpoint: str, metrics: dict[str, Any], lineage: dict[str, Any]
) -> int:
    """Log pyfunc + ONNX to MLflow and register a new version (alias `challenger`)."""
    from p2p.registry import log_and_register

    run_id = lineage.get("training_run_id") or None
    info = log_and_register(checkpoint, cfg_of(cfg), metrics, lineage=lineage, run_id=run_id)
    print(f"registered {info.uri} (alias challenger)")
    return info.version


@task(name="gate", cache_policy=NO_CACHE)
def gate(cfg: dict[str, Any], version: int) -> dict[str, Any]:
    """Promote the challenger to champion only if it beats the champion by the margin."""
    from dataclasses import asdict

    from p2p.registry import promotion_gate

    c = in_process(cfg_of(cfg))  # the champion may be scored again on this test set
    decision = promotion_gate(c.eval.model_name, version, cfg=c)
    verdict = "promoted to champion" if decision.promoted else "not promoted"
    print(f"{c.eval.model_name} v{version} {verdict}: {decision.reason}")
    return asdict(decision)


# ----------------------------------------------------------------------------- lookups


def champion_data_version(model_name: str) -> tuple[int | None, str | None]:
    """(version, lineage.data_version) of the current champion; (None, None) if there is none."""
    from p2p.registry import RegistryError, get_version

    try:
        champ = get_version(model_name, "champion")
    except RegistryError:  # no such model, or no champion alias yet
        return None, None
    return champ.version, champ.tags.get("lineage.data_version") or None


def latest_data_version(cfg: dict[str, Any]) -> str | None:
    """The DVC md5 recorded for data.raw_dir in the working directory's repository (its .dvc
    file or dvc.lock); None if DVC has not recorded it yet."""
    from p2p.data.versioning import current_version

    v = current_version(cfg_of(cfg).data.raw_dir)
    return None if v is None else v.md5


def shard_data_version(shards: str) -> str:
    """The data version a shard index records (the DVC md5 of the raw data it was cut from)."""
    from p2p.data.shards import read_index
    from p2p.data.versioning import DataVersion

    return DataVersion.of_index(read_index(shards)).full
