"""`fit(cfg)`: the driver side of `p2p train`. It picks where Ray runs, owns the MLflow run,
launches the Ray Train job and exports the result to `models/`.

Where training runs (`--address`, else `resources.address`, else `RAY_ADDRESS`):

- "" (default): a new local Ray (`address="local"`, num_workers x cpus_per_worker CPUs),
  shut down after the run.
- `auto` or `host:6379`: driver on the cluster. This process joins the running cluster as the
  Ray driver (run it on a cluster node).
- `ray://host:10001`: driver via Ray Client, the same from outside the cluster.
- `http://head:8265`: Ray Jobs API. `p2p train` is submitted as a Ray Job, its logs are tailed
  here and the outputs are fetched from `train.storage_path` when it succeeds.

Why two remote modes: a driver connection (`auto`/`ray://`) keeps the run in this process (the
simplest path when you are on the cluster), but the run dies with the connection. A Ray Job runs
the driver on the head node: a laptop or a Prefect worker submits it, streams the logs, and a
dropped connection does not stop training. The job runs `p2p train --address auto` with the
resolved params (uploaded as the job's working_dir) and the same run name; the p2p package must be
installed on the cluster nodes. Non-secret settings from `p2p.settings` (S3 endpoint, region,
MLflow URI without a password) reach the job and every worker through `runtime_env`; secrets
(`p2p.settings.SECRET_VARS`: AWS keys, tokens, passwords) never do, since Ray writes runtime
envs into its session logs. Every node gets credentials from its own environment or the
standard AWS chain (instance role, a Kubernetes secret exported as env, a profile); a local Ray
started here inherits this process's environment. On a multi-node cluster
`train.storage_path` and `data.shards` must be reachable from every node (s3://..., or a shared
filesystem) and MLflow should be a server.

Resuming: the Ray run name is `--run-name`, else `train.run_name`, else derived from the data
version and the params hash, so running the same command again continues the same run from its
latest checkpoint (Ray Train V2 resumes by `(storage_path, name)`) and the same MLflow run.
Run names are one path component (`run_store.RUN_NAME_RE`). One driver at a time trains a run:
it holds a lease in `<storage_path>/<run name>/` (p2p.training.lease) and a second `p2p train`
with that name is refused while the first lives. A resume whose params differ from the
checkpoint's in anything that changes the model (p2p.training.state.needs_permission: lr, batch,
data, ...) is refused unless `allow_changed_params` (`--allow-changed-params`); then the run
continues with the new values and MLflow records each change as a `params_changed.<key>` tag.
Worker failures inside one run are retried by Ray (`resources.max_failures`) from the latest
checkpoint, except DataErrors, which stop the run at once (p2p.training.failures).

Outputs (`out_dir`, default `models/`): `generator.pt` (weights-only, from the final checkpoint),
`train_log.csv` (step, epoch, losses, lr, images/s, val metrics: the DVC plot) and
`train_metrics.json` (the final metrics: the DVC metrics file).

Run names, reading checkpoints (resume checks) and exporting outputs live in
p2p.training.run_store; where checkpoints are stored (local directory, s3://, any scheme
p2p.data.storage serves) is that package's business: Ray gets its `storage_path` and
`storage_filesystem` from `p2p.data.storage.ray_storage`.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from p2p.config import ExperimentConfig, to_yaml
from p2p.data.storage import ray_storage
from p2p.errors import DataError, P2PError
from p2p.settings import Settings, has_password
from p2p.training import tracking
from p2p.training.lease import Lease, check_free, lease_url
from p2p.training.run_store import (
    TrainResult,
    check_run_name,
    checkpoint_uri,
    default_run_name,
    export_outputs,
    finished_checkpoint,
    latest_checkpoint,
    resume_changes,
)

log = logging.getLogger(__name__)

FAULT_ENV = "P2P_FAULT_STEP"  # test-only fault injection, see p2p.training.loop
_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray in the driver of a submitted job


def fit(
    cfg: ExperimentConfig,
    *,
    shards: str | None = None,
    out_dir: str | Path = "models",
    address: str | None = None,
    run_name: str | None = None,
    allow_changed_params: bool = False,
) -> TrainResult:
    """Train pix2pix with Ray Train and export the final generator.

    Args:
        cfg: the experiment config.
        shards: shard dir or s3:// prefix; overrides `data.shards`.
        out_dir: where generator.pt, train_log.csv and train_metrics.json go.
        address: Ray address (see the module docstring); None = `resources.address`, else
            `RAY_ADDRESS`, else a local Ray.
        run_name: Ray/MLflow run name; None = `train.run_name`, else derived (resumable).
        allow_changed_params: resume a run even if params that change the model differ from
            its checkpoint's (trains with the new values; recorded in MLflow).

    Raises:
        DataError: the shards cannot be read, or a worker met bad data (not retried).
        P2PError: a bad run name; the run is being trained by another driver; changed params
            on resume; training failed (after Ray's retries) or produced no checkpoint.
    """
    if shards:
        cfg = cfg.replace(**{"data.shards": str(shards)})
    if cfg.resources.num_workers < 1:
        raise P2PError(
            "resources.num_workers must be >= 1 for `p2p train` (Ray Train's local mode, "
            "num_workers 0, keeps no checkpoints and cannot resume)"
        )
    settings = Settings.from_env()
    if address is None:
        address = cfg.resources.address or settings.ray_address or ""
    if run_name:
        check_run_name(run_name, "--run-name")
    elif cfg.train.run_name:
        check_run_name(cfg.train.run_name, "train.run_name")
    _check_shards(cfg)
    run_name = check_run_name(run_name or cfg.train.run_name or default_run_name(cfg), "run name")
    run_cfg = _absolute_paths(cfg)  # workers and jobs run elsewhere: no relative local paths
    if address.startswith(("http://", "https://")):
        # The job's driver takes the lease and checks the params; checking here first gives
        # the same answer without a job submission.
        check_free(lease_url(run_cfg.train.storage_path, run_name), run_name)
        resume_changes(run_cfg, run_name, allow=allow_changed_params)
        return _submit_job(
            run_cfg,
            address=address,
            out_dir=Path(out_dir),
            run_name=run_name,
            allow_changed_params=allow_changed_params,
        )
    with Lease(lease_url(run_cfg.train.storage_path, run_name), run_name):
        changes, step = resume_changes(run_cfg, run_name, allow=allow_changed_params)
        return _fit_here(
            cfg,
            run_cfg,
            address=address,
            out_dir=Path(out_dir),
            run_name=run_name,
            resumed=(step, changes),
        )


# ----------------------------------------------------------------------------- modes


def _fit_here(
    cfg: ExperimentConfig,
    run_cfg: ExperimentConfig,
    *,
    address: str,
    out_dir: Path,
    run_name: str,
    resumed: tuple[int | None, dict[str, tuple[str, str]]],
) -> TrainResult:
    """Local Ray or a driver connection: TorchTrainer.fit() in this process (which holds the
    run's lease). `resumed`: (the checkpoint's step or None, the params changed since)."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from p2p.training.distributed import P2PTorchConfig  # gloo/NCCL interface per worker
    from p2p.training.failures import StopOnDataError, data_error_message
    from p2p.training.loop import train_loop_per_worker
    from p2p.training.ray_console import (
        drop_known_noise,
        quiet_auth_notice,
        train_logging_config,
    )

    res = cfg.resources
    storage = run_cfg.train.storage_path
    done = finished_checkpoint(storage, run_name, cfg.epochs)
    if done is not None:  # nothing left to train: skip starting Ray
        print(f"p2p train: run {run_name} already finished {cfg.epochs} epochs ({done})")
        run_id = tracking.find_run(cfg.train.experiment, run_name)
        return export_outputs(done, out_dir, run_name=run_name, mlflow_run_id=run_id)
    env = _worker_env()
    uri = tracking.tracking_uri()
    data_ver = tracking.data_version(cfg.data.shards, cfg.data.raw_dir)
    tags = tracking.run_tags(cfg, run_name=run_name, storage_path=storage, data_ver=data_ver)
    step, changes = resumed
    run_id = tracking.open_run(
        cfg, run_name=run_name, tags=tags, uri=uri, resumed_at=step, changed=changes
    )
    tracking.log_config_artifact(run_id, to_yaml(cfg), uri=uri)

    started = False
    if not ray.is_initialized():
        try:
            if os.environ.get(_JOB_ENV):  # the driver of a Ray Job: the job's runtime_env holds
                ray.init(address=address or "auto")  # `env` already; Ray refuses to merge both
            elif address:
                _init_with_retry(ray, address, {"env_vars": env})
            else:
                with quiet_auth_notice():  # Ray's default token auth, without the notice
                    ray.init(
                        address="local",  # a new Ray: never a cluster `ray start` left here
                        num_cpus=max(1, math.ceil(res.num_workers * res.cpus_per_worker)),
                        num_gpus=math.ceil(res.num_workers * res.gpus_per_worker)
                        if res.use_gpu
                        else 0,
                        # The dashboard serves Ray's State API. Ray Train's placement-group
                        # cleaner polls it to see whether the run's controller is alive; with no
                        # dashboard here it asks 127.0.0.1:8265, where another Ray may answer
                        # "no such actor", and then tears down this run's workers.
                        include_dashboard=True,
                        runtime_env={"env_vars": env},
                    )
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as e:
            tracking.close_run(run_id, ok=False, uri=uri)
            hint = ""
            if "auth" in str(e).lower():
                hint = " (the cluster uses token auth: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN)"
            where = address or "a local Ray"
            raise P2PError(f"cannot start or reach {where}: {_first_line(e)}{hint}") from None
        started = True
    drop_known_noise()  # Ray's known-harmless worker lines stay in its log files

    per_worker = {"CPU": float(res.cpus_per_worker)}
    if res.use_gpu:
        per_worker["GPU"] = float(res.gpus_per_worker)
    storage_path, storage_fs = ray_storage(storage)  # the backend's pyarrow filesystem, if any
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": run_cfg.to_dict(),
            "mlflow_run_id": run_id,
            # a URI with a password stays out of Ray: workers read MLFLOW_TRACKING_URI then
            "tracking_uri": None if has_password(uri) else uri,
            "fault_step": int(os.environ.get(FAULT_ENV) or 0),
        },
        torch_config=P2PTorchConfig(backend="nccl" if res.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.num_workers, use_gpu=res.use_gpu, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=res.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            worker_runtime_env={"env_vars": env},
            callbacks=[StopOnDataError()],  # bad data is not retried
            logging_config=train_logging_config(),  # Ray Train's INFO lines: log files only
        ),
    )
    ok = False
    try:
        try:
            result = trainer.fit()
        except ray.train.TrainingFailedError as e:
            bad_data = data_error_message(e)
            if bad_data is not None:  # the cause, as one line, naming the shard
                raise DataError(bad_data) from None
            raise P2PError(f"training run {run_name} failed: {_first_line(e)}") from e
        ckpt_uri = (
            checkpoint_uri(result.checkpoint, storage)
            if result.checkpoint is not None
            else latest_checkpoint(storage, run_name)
        )
        if ckpt_uri is None:
            raise P2PError(f"training run {run_name} produced no checkpoint under {storage}")
        out = export_outputs(ckpt_uri, out_dir, run_name=run_name, mlflow_run_id=run_id)
        tracking.log_run_summary(run_id, {"p2p.checkpoint": ckpt_uri}, uri=uri)
        ok = True
        return out
    finally:
        tracking.close_run(run_id, ok=ok, uri=uri)
        if started:
            ray.shutdown()


def _submit_job(
    cfg: ExperimentConfig,
    *,
    address: str,
    out_dir: Path,
    run_name: str,
    allow_changed_params: bool = False,
) -> TrainResult:
    """Ray Jobs API: run `p2p train --address auto` on the cluster, tail its logs, wait."""
    import asyncio

    from ray.job_submission import JobStatus, JobSubmissionClient

    env = _worker_env()
    if not has_password(tracking.tracking_uri()):
        env.setdefault("MLFLOW_TRACKING_URI", tracking.tracking_uri())
    client = JobSubmissionClient(address)
    with tempfile.TemporaryDirectory(prefix="p2p-job-") as wd:
        Path(wd, "params.yaml").write_text(to_yaml(cfg))  # the resolved params, paths absolute
        argv = ["p2p", "train", "--params", "params.yaml", "--address", "auto"]
        argv += ["--run-name", run_name, "--out", "models"]
        if allow_changed_params:
            argv.append("--allow-changed-params")
        job_id = client.submit_job(
            entrypoint=shlex.join(argv),  # every argument quoted: no shell interpretation
            runtime_env={"working_dir": wd, "env_vars": env},
            submission_id=f"{run_name}-{uuid.uuid4().hex[:8]}",
            metadata={"p2p.run_name": run_name},
        )
    print(f"p2p train: submitted Ray job {job_id} to {address}", flush=True)

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        client.stop_job(job_id)
        raise
    status = client.get_job_status(job_id)
    if status != JobStatus.SUCCEEDED:
        # The job's `p2p train` ends with its one-line error: that is the cause to show.
        errors = [
            line.split("error: ", 1)[1]
            for line in (client.get_job_logs(job_id) or "").splitlines()
            if line.startswith("p2p train: error: ")
        ]
        if errors:
            raise P2PError(f"{errors[-1]} (Ray job {job_id} {status.value})")
        info = client.get_job_info(job_id)
        raise P2PError(f"Ray job {job_id} {status.value}: {_first_line(info.message or '')}")
    storage = cfg.train.storage_path
    ckpt_uri = latest_checkpoint(storage, run_name)
    if ckpt_uri is None:
        raise P2PError(f"Ray job {job_id} succeeded but no checkpoint is under {storage}")
    run_id = tracking.find_run(cfg.train.experiment, run_name)
    return export_outputs(ckpt_uri, out_dir, run_name=run_name, mlflow_run_id=run_id)


# ----------------------------------------------------------------------------- helpers


def _check_shards(cfg: ExperimentConfig) -> None:
    from p2p.data.shards import read_index

    try:
        index = read_index(cfg.data.shards)
    except P2PError:
        raise
    except Exception as e:
        raise DataError(f"{cfg.data.shards}: cannot read the shard index: {e}") from None
    if not index.samples("train"):
        raise DataError(f"{cfg.data.shards}: the shards hold no train samples")


def _absolute_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """Local data.shards and train.storage_path made absolute (workers' cwd differs)."""
    over: dict[str, Any] = {}
    for key, value in (
        ("data.shards", cfg.data.shards),
        ("train.storage_path", cfg.train.storage_path),
    ):
        if value and "://" not in value:
            over[key] = str(Path(value).expanduser().resolve())
    return cfg.replace(**over) if over else cfg


def _worker_env() -> dict[str, str]:
    """Non-secret settings the job and workers need (endpoint, region, MLflow URI)."""
    return Settings.from_env().worker_env()


def _first_line(e: BaseException | str) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _init_with_retry(ray: Any, address: str, runtime_env: dict[str, Any]) -> None:
    """ray.init on a cluster. A Ray Client server sometimes answers a connect with a bare
    "Initialization failure from server" while it is still setting up the previous session's
    teardown: an infrastructure fault, so tried again twice after a pause, then raised."""
    for attempt in range(3):
        try:
            ray.init(address=address, runtime_env=runtime_env)
            return
        except ConnectionError as e:
            if not address.startswith("ray://") or attempt == 2:
                raise
            log.warning("ray: %s; trying %s again in 5 s", _first_line(e), address)
            if ray.is_initialized():
                ray.shutdown()
            time.sleep(5)
