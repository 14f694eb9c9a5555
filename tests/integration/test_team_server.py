"""The team server without Docker, end to end: the production pipeline pointed at real services.

`team_server` runs what infra/compose runs, as local processes on 127.0.0.1: an MLflow tracking
server (sqlite, artifacts proxied to a moto S3 bucket that plays MinIO), a Prefect server, and a
two-node Ray cluster with token authentication. The pipeline then runs through the `p2p` CLI in a
fresh git + DVC project, configured only through the production variables (AWS_ENDPOINT_URL,
MLFLOW_TRACKING_URI, PREFECT_API_URL, RAY_ADDRESS, P2P_DVC_REMOTE_URL, RAY_AUTH_*):
doctor -> data prepare -> data version (DVC push to S3) -> data shard (S3) -> train (on the
cluster, checkpoints on S3, tracked on the server) -> evaluate -> registry register + gate ->
registry show; and the retrain deployment lands on the Prefect server with its schedule.

Credentials: every service and Ray node starts with the S3 keys in its own environment (a marker
secret), as real nodes get them from their environment, an instance role or a Kubernetes secret;
p2p never ships them through Ray. The last test checks that the marker was never written to any
file of the team server (Ray temp dirs, MLflow, Prefect) nor to the bucket.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
from team_server import BIN, team_server

SECRET = f"p2p-marker-secret-{uuid.uuid4().hex}"  # the S3 secret key (moto accepts any)

REPO = Path(__file__).resolve().parents[2]
TINY = [  # small enough for 2 CPU cores; the same keys as params.yaml
    "build.num_pairs=30",
    "build.size=72",
    "data.load_size=72",
    "data.crop_size=64",
    "data.shard_max_count=8",
    "data.loader_workers=0",
    "model.num_downs=6",
    "model.base_channels=8",
    "model.disc_channels=8",
    "optim.n_epochs=1",
    "optim.n_epochs_decay=1",
    "train.batch_size=4",
    "train.epochs=2",
    "train.log_every=2",
    "train.val_batches=1",
    "resources.num_workers=2",  # 1 CPU each on 2 one-CPU nodes: the run spans both nodes
    "resources.cpus_per_worker=1",
    "eval.batch_size=2",
    "eval.num_samples=4",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def team(s3_server, tmp_path_factory):
    import boto3

    bucket = f"p2p-team-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    workdir = tmp_path_factory.mktemp("team-server")
    saved = os.environ["AWS_SECRET_ACCESS_KEY"]
    os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET  # the nodes' and the clients' credentials
    try:
        with team_server(
            workdir, s3_endpoint=s3_server, bucket=bucket, ray_nodes=2, cpus_per_node=1
        ) as ts:
            yield ts
    finally:
        os.environ["AWS_SECRET_ACCESS_KEY"] = saved


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh clone-like project: params.yaml in a git + DVC repository."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=root, check=True)
    return root


def run(team, cwd: Path, *argv: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a command with the team server's environment; fail with its output and the logs."""
    return run_env(team, team.env, cwd, *argv, timeout=timeout)


def run_env(
    team, env: dict[str, str], cwd: Path, *argv: str, timeout: int = 900
) -> subprocess.CompletedProcess:
    """`run` with `env` (team-server variables) on top of os.environ."""
    result = subprocess.run(
        list(argv),
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        pytest.fail(
            f"`{' '.join(argv)}` exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}"
            f"\n--- stderr\n{result.stderr[-6000:]}\n{team.log_tail(20)}"
        )
    return result


def s3_keys(bucket: str, prefix: str) -> list[str]:
    from p2p.data.storage import s3_client

    pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_pipeline_on_the_team_server(team, project):
    b = team.bucket
    shards = f"s3://{b}/shards/demo"
    experiment = f"team-{uuid.uuid4().hex[:6]}"
    model = f"pix2pix-team-{uuid.uuid4().hex[:6]}"
    sets = [
        *TINY,
        f"data.shards={shards}",
        f"train.storage_path=s3://{b}/runs",
        f"train.experiment={experiment}",
        f"eval.model_name={model}",
    ]
    opts = [x for s in sets for x in ("--set", s)]
    p2p = str(BIN / "p2p")

    # 1. Every service answers, through the production variables only.
    doctor = run(team, project, p2p, "doctor", *opts)
    for name in ("s3", "mlflow", "prefect", "ray", "dvc"):
        assert any(line.startswith(f"OK   {name} ") for line in doctor.stdout.splitlines()), (
            doctor.stdout
        )
    assert "2 nodes" in doctor.stdout

    # 2. Data: build the demo pairs, version them with DVC (pushed to the S3 remote), shard to S3.
    run(team, project, p2p, "data", "prepare", *opts)
    report = json.loads((project / "data/raw/demo/report.json").read_text())
    assert sum(report["counts"].values()) == 30
    version = run(team, project, p2p, "data", "version", "data/raw/demo", *opts)
    assert (project / "data/raw/demo.dvc").is_file(), version.stdout
    assert s3_keys(b, "dvc/"), "DVC pushed nothing to P2P_DVC_REMOTE_URL"
    run(team, project, p2p, "data", "shard", "--out", shards, *opts)
    assert "shards/demo/index.json" in s3_keys(b, "shards/demo/")

    # 3. Train on the two-node Ray cluster (driver connects with RAY_ADDRESS + the Ray token).
    train = run(team, project, p2p, "train", *opts)
    assert f"Connecting to existing Ray cluster at address: {team.ray_address}" in train.stderr
    assert (project / "models/generator.pt").is_file()
    assert s3_keys(b, "runs/"), "no checkpoints on S3"

    from mlflow import MlflowClient

    client = MlflowClient(team.mlflow_uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, "the run was not tracked on the team MLflow server"
    (train_run,) = client.search_runs([exp.experiment_id])
    assert train_run.data.params["resources.num_workers"] == "2"
    assert client.get_metric_history(train_run.info.run_id, "train/loss_g_l1")
    assert s3_keys(b, f"mlflow/{exp.experiment_id}/"), "artifacts not proxied to S3"

    # 4. Evaluate from the S3 shards, register on the server, gate, show.
    run(
        team,
        project,
        p2p,
        "evaluate",
        "--checkpoint",
        "models/generator.pt",
        "--shards",
        shards,
        "--out",
        "reports",
        *opts,
    )
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert metrics["psnr"] > 0
    run(
        team,
        project,
        p2p,
        "registry",
        "register",
        "--checkpoint",
        "models/generator.pt",
        "--metrics",
        "reports/metrics.json",
        "--gate",
        *opts,
    )
    shown = run(team, project, p2p, "registry", "show", model, "--json", *opts)
    info = json.loads(shown.stdout)
    assert "champion" in json.dumps(info), shown.stdout
    assert client.get_model_version_by_alias(model, "champion").version == "1"

    # 5. The scheduled retrain deployment goes to the team Prefect server.
    run(
        team,
        project,
        sys.executable,
        "-m",
        "pipelines.deploy",
        "--name",
        f"retrain-{experiment}",
        "--apply-only",
    )
    request = urllib.request.Request(
        f"{team.prefect_api_url}/deployments/filter",
        data=json.dumps({"deployments": {"name": {"any_": [f"retrain-{experiment}"]}}}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        (deployment,) = json.loads(r.read())
    assert deployment["schedules"][0]["schedule"]["cron"] == "0 3 * * 1"


def test_train_as_a_ray_job_then_resume_through_ray_client(team, project):
    """`--address http://head:8265` submits `p2p train` as a Ray Job; `--address ray://...`
    drives the cluster through Ray Client. The second run continues the first (same run name):
    steps go on from where the job stopped, in the same MLflow run."""
    b = team.bucket
    tag = uuid.uuid4().hex[:6]
    shards, experiment, run_name = f"s3://{b}/shards/{tag}", f"modes-{tag}", f"modes-{tag}"
    sets = [
        *TINY,
        f"data.shards={shards}",
        f"train.storage_path=s3://{b}/runs",
        f"train.experiment={experiment}",
        "train.epochs=1",
    ]
    opts = [x for s in sets for x in ("--set", s)]
    p2p = str(BIN / "p2p")
    run(team, project, p2p, "data", "prepare", *opts)
    run(team, project, p2p, "data", "shard", "--out", shards, *opts)

    # 1. Epoch 1 as a Ray Job: submitted over HTTP, logs tailed here, outputs fetched from S3.
    env_no_gcs = {k: v for k, v in team.env.items() if k != "RAY_ADDRESS"}  # the flag decides

    def train(address: str, *extra: str) -> subprocess.CompletedProcess:
        argv = [p2p, "train", "--address", address, "--run-name", run_name, *opts, *extra]
        return run_env(team, env_no_gcs, project, *argv)

    job = train(team.ray_jobs_url)
    assert f"submitted Ray job {run_name}-" in job.stdout, job.stdout
    assert "epoch 1/1 done, step 6" in job.stdout  # the job's logs reach this console
    first = json.loads((project / "models/train_metrics.json").read_text())
    assert (first["step"], first["epoch"]) == (6, 1)

    from ray.job_submission import JobStatus, JobSubmissionClient

    jobs = JobSubmissionClient(team.ray_jobs_url, headers=_ray_auth(team)).list_jobs()
    (mine,) = [j for j in jobs if (j.submission_id or "").startswith(f"{run_name}-")]
    assert mine.status == JobStatus.SUCCEEDED
    assert mine.entrypoint.startswith("p2p train --params params.yaml --address auto")

    # 2. Epoch 2 through Ray Client: the same run resumes from the job's checkpoint on S3.
    client = train(team.ray_client_address, "--set", "train.epochs=2")  # the last --set wins
    assert "starting at step 6" in client.stdout + client.stderr
    second = json.loads((project / "models/train_metrics.json").read_text())
    assert (second["step"], second["epoch"]) == (12, 2)
    assert {
        f"runs/{run_name}/epoch_0001/generator.pt",
        f"runs/{run_name}/epoch_0002/generator.pt",
    } <= set(s3_keys(b, f"runs/{run_name}/"))

    from mlflow import MlflowClient

    mlflow = MlflowClient(team.mlflow_uri)
    exp = mlflow.get_experiment_by_name(experiment)
    (tracked,) = mlflow.search_runs([exp.experiment_id])  # one run across both modes
    assert tracked.info.run_name == run_name
    steps = [m.step for m in mlflow.get_metric_history(tracked.info.run_id, "train/loss_g_l1")]
    assert steps == sorted(steps) and steps[-1] == 12 and min(steps) <= 6 < max(steps)


def _ray_auth(team) -> dict[str, str]:
    """The header a token-auth Ray dashboard wants (the CLI sends it from RAY_AUTH_TOKEN)."""
    return {"Authorization": f"Bearer {team.ray_token}"}


def test_no_secret_written_anywhere(team):
    """After the runs above (driver joining the cluster, Ray Job, Ray Client), the marker
    secret is in no file under the nodes' Ray temp dirs (runtime_env_agent.log, job logs,
    session files), the team server's MLflow and Prefect data and logs, nor in the bucket
    (shards, checkpoints, MLflow artifacts, DVC)."""
    needle = SECRET.encode()
    agent_logs = list(team.ray_tmp.glob("n*/session_*/logs/runtime_env_agent.log"))
    assert agent_logs, "no Ray session logs: run this module's training tests first"
    checked = 0
    for root in (team.ray_tmp, team.workdir):
        for path in root.rglob("*"):
            try:
                if path.is_file() and not path.is_symlink():
                    assert needle not in path.read_bytes(), path
                    checked += 1
            except OSError:  # sockets, files removed meanwhile
                continue
    assert checked > 50
    keys = s3_keys(team.bucket, "")
    assert any(k.startswith("runs/") for k in keys)
    from p2p.data.storage import s3_client

    for key in keys:
        body = s3_client().get_object(Bucket=team.bucket, Key=key)["Body"].read()
        assert needle not in body, key
