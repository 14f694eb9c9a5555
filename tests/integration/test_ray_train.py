"""Ray Train end to end on a real 2-node local cluster (gloo), S3 shards and checkpoints on the
moto server, sqlite MLflow.

Three Ray runs in all (each costs ~30 s here):
1. `killed_run`: 3 epochs; rank 1 dies mid-epoch 2 (P2P_FAULT_STEP). Ray restarts the worker
   group from the epoch-1 checkpoint and the run finishes -> fault tolerance + MLflow checks.
2. the resume test: the same run name again with 4 epochs and a new lr
   (--allow-changed-params) -> continues at the last step of run 1, in the same MLflow run,
   with the new lr, recorded as a params_changed tag.
3. `p2p train` (local Ray started by p2p) on shards with a corrupt sample: the DataError stops
   the run at once, no retries, and is the last line of the output.
The cluster's nodes and the CLI carry a marker AWS secret in their environment, as real nodes
carry credentials; the last test checks that it was never written under either Ray temp dir.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EPOCHS = 3
BATCH = 4  # global: 2 per worker
REPO = Path(__file__).resolve().parents[2]
SECRET = f"p2p-marker-secret-{uuid.uuid4().hex}"  # the S3 secret key (moto accepts any)


@pytest.fixture(scope="module")
def cluster(s3_server):
    """Two Ray nodes with one CPU each: the two training workers land on different nodes.
    The nodes start with the marker secret in their environment (as real nodes carry
    credentials); so does this process, the driver."""
    from ray.cluster_utils import Cluster
    from team_server import free_port

    saved = os.environ["AWS_SECRET_ACCESS_KEY"]
    os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET
    # The dashboard serves the State API that Ray Train's placement-group cleaner polls; on a
    # free port, since 8265 may belong to another Ray on this machine.
    head = {"num_cpus": 1, "include_dashboard": True, "dashboard_port": free_port()}
    c = Cluster(initialize_head=True, head_node_args=head)
    try:
        c.add_node(num_cpus=1)
        c.wait_for_nodes()
        yield c
    finally:
        c.shutdown()
        os.environ["AWS_SECRET_ACCESS_KEY"] = saved


@pytest.fixture(scope="module")
def local_ray_tmp():
    """RAY_TMPDIR of the local Ray that `p2p train` starts (short: Ray's socket paths)."""
    path = Path(tempfile.mkdtemp(prefix="p2p-rt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def bucket(s3_server):
    import boto3

    name = f"p2p-train-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def train_cfg(tmp_path_factory, bucket):
    """Tiny config; demo pairs sharded to S3 (train 24 pairs -> 6 steps/epoch)."""
    from p2p.config import load_config
    from p2p.data.build import build_demo
    from p2p.data.shards import write_shards

    cfg = load_config(
        None,
        {
            "build.num_pairs": 30,
            "build.size": 72,
            "data.load_size": 72,
            "data.crop_size": 64,
            "data.shard_max_count": 8,  # several train shards of unequal size
            "data.loader_workers": 0,
            "data.shards": f"s3://{bucket}/shards",
            "model.num_downs": 6,
            "model.base_channels": 8,
            "model.disc_channels": 8,
            "optim.n_epochs": 2,
            "optim.n_epochs_decay": 2,
            "train.batch_size": BATCH,
            "train.epochs": EPOCHS,
            "train.log_every": 2,
            "train.val_batches": 2,
            "train.storage_path": f"s3://{bucket}/runs",
            "train.experiment": f"ray-train-{uuid.uuid4().hex[:6]}",
            "resources.num_workers": 2,
            "resources.cpus_per_worker": 1,
            "resources.max_failures": 2,
        },
    )
    raw = tmp_path_factory.mktemp("raw") / "demo"
    build_demo(raw, cfg.build, cfg.data)
    index = write_shards(raw, cfg.data.shards, cfg.data)
    assert index.samples("train") == 24
    return cfg


@pytest.fixture(scope="module")
def killed_run(cluster, train_cfg, tmp_path_factory):
    """fit() with rank 1 exiting at step spe + 3 (epoch 2): one restart from epoch_0001.
    Also returns what the driver printed (p2p's lines and the workers' forwarded output)."""
    from p2p.training.trainer import fit

    spe = 24 // BATCH
    out = tmp_path_factory.mktemp("models")
    os.environ["P2P_FAULT_STEP"] = str(spe + 3)
    console = io.StringIO()
    try:
        with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
            result = fit(train_cfg, out_dir=out, address=cluster.address, run_name="killed")
    finally:
        os.environ.pop("P2P_FAULT_STEP")
    return result, spe, console.getvalue()


def _client():
    from mlflow import MlflowClient

    return MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def _steps(run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in _client().get_metric_history(run_id, key))


def _s3_dirs(bucket: str, prefix: str) -> set[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    keys = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {k["Key"][len(prefix) :].split("/")[0] for k in keys}


def test_worker_killed_mid_run_recovers(killed_run, bucket):
    from p2p.checkpoints import load_generator

    result, spe, _ = killed_run
    total = EPOCHS * spe
    # The run finished with every step done once in the final history: no restart from zero.
    assert result.metrics["step"] == total and result.metrics["epoch"] == EPOCHS
    with open(result.train_log_path) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(2, total + 1, 2))
    assert all(rows[i]["val_psnr"] for i in (spe // 2 - 1, spe - 1, total // 2 - 1))

    # The kill really happened: steps logged between the epoch-1 checkpoint and the kill were
    # logged twice (before and after the restart), everything before the checkpoint once.
    seen = Counter(_steps(result.mlflow_run_id, "train/loss_d"))
    assert seen[spe + 2] == 2, seen
    assert all(seen[s] == 1 for s in range(2, spe + 1, 2)), seen
    assert all(seen[s] == 1 for s in range(spe + 4, total + 1, 2)), seen

    # Final checkpoint on S3, loadable outputs.
    assert result.checkpoint_uri == f"s3://{bucket}/runs/killed/epoch_{EPOCHS:04d}"
    assert {f"epoch_{e:04d}" for e in range(1, EPOCHS + 1)} <= _s3_dirs(bucket, "runs/killed/")
    g = load_generator(result.generator_path)
    assert sum(p.numel() for p in g.parameters()) > 0
    metrics = json.loads(result.metrics_path.read_text())
    assert metrics["run"]["mlflow_run_id"] == result.mlflow_run_id


def test_console_has_p2p_lines_not_ray_chatter(killed_run):
    """The driver's console: p2p's progress and the fault, without Ray's per-report lines, its
    Ray Train INFO logs or the PreemptionWatcher error (p2p.training.ray_console)."""
    _, spe, console = killed_run
    assert f"epoch 1/{EPOCHS} step 2/{EPOCHS * spe} loss_d" in console, console[-3000:]
    assert f"p2p train: epoch {EPOCHS}/{EPOCHS} done" in console, console[-3000:]
    assert "P2P_FAULT_STEP" in console  # the worker's own line about its exit
    for chatter in ("Reporting training result", "PreemptionWatcher", "Moving model to device"):
        assert chatter not in console, chatter


def test_mlflow_run_contents(killed_run, train_cfg):
    result, spe, _ = killed_run
    client = _client()
    exp = client.get_experiment_by_name(train_cfg.train.experiment)
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [result.mlflow_run_id]  # one run despite the restart
    run = runs[0]
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert set(train_cfg.flat()) <= set(params)  # every param, dotted keys
    assert params["train.batch_size"] == str(BATCH) and params["model.base_channels"] == "8"
    tags = run.data.tags
    assert tags["p2p.run_name"] == "killed" and tags["p2p.params_hash"] == train_cfg.model_hash()
    assert tags["dvc.data_version"] and tags["p2p.version"] and tags["git.commit"]
    for key in ("train/loss_d", "train/loss_g_gan", "train/loss_g_l1", "train/lr"):
        assert len(set(_steps(run.info.run_id, key))) == EPOCHS * spe // 2, key
    assert _steps(run.info.run_id, "val/psnr") == [spe * e for e in range(1, EPOCHS + 1)]
    assert 0 < run.data.metrics["val/ssim"] <= 1
    samples = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert {f"samples/epoch_{e:04d}.png" for e in range(1, EPOCHS + 1)} <= samples


def test_rerun_with_same_name_resumes(killed_run, cluster, train_cfg, tmp_path):
    """One more epoch with a doubled lr: a changed param, so only with allow_changed_params;
    the new lr is the one that trains and MLflow says so."""
    from p2p.errors import P2PError
    from p2p.training.schedule import linear_factor
    from p2p.training.trainer import fit

    first, spe, _ = killed_run
    new_lr = 2 * train_cfg.optim.lr
    cfg = train_cfg.replace(**{"train.epochs": EPOCHS + 1, "optim.lr": new_lr})
    with pytest.raises(P2PError, match=r"optim\.lr 0\.0002 -> 0\.0004; pass --allow-changed"):
        fit(cfg, out_dir=tmp_path, address=cluster.address, run_name="killed")
    result = fit(
        cfg, out_dir=tmp_path, address=cluster.address, run_name="killed", allow_changed_params=True
    )
    assert result.mlflow_run_id == first.mlflow_run_id  # the same MLflow run continues
    assert result.metrics["step"] == (EPOCHS + 1) * spe
    assert result.checkpoint_uri.endswith(f"epoch_{EPOCHS + 1:04d}")
    # The new attempt started at step EPOCHS*spe: its steps are logged once, none repeated.
    seen = Counter(_steps(result.mlflow_run_id, "train/loss_d"))
    assert all(seen[s] == 1 for s in range(EPOCHS * spe + 2, (EPOCHS + 1) * spe + 1, 2)), seen
    with open(result.train_log_path) as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == list(range(2, (EPOCHS + 1) * spe + 1, 2))
    run = _client().get_run(result.mlflow_run_id)
    assert json.loads(run.data.tags["p2p.resumed_with"]) == {
        "train.epochs": str(EPOCHS + 1),
        "optim.lr": str(new_lr),
    }
    # MLflow: the params that trained steps 1..18, and what changed at step 18
    assert run.data.params["optim.lr"] == str(train_cfg.optim.lr)
    at = EPOCHS * spe
    assert run.data.tags["params_changed.optim.lr"] == f"0.0002 -> 0.0004 @ step {at}"
    assert run.data.tags["params_changed.train.epochs"] == f"{EPOCHS} -> {EPOCHS + 1} @ step {at}"
    # the new lr trained: the last epoch's lr is the new base lr on the linear schedule
    o = cfg.optim
    want = new_lr * linear_factor(EPOCHS, o.n_epochs, o.n_epochs_decay)
    lrs = {m.step: m.value for m in _client().get_metric_history(run.info.run_id, "train/lr")}
    assert lrs[(EPOCHS + 1) * spe] == pytest.approx(want)
    old = train_cfg.optim.lr * linear_factor(EPOCHS - 1, o.n_epochs, o.n_epochs_decay)
    assert lrs[EPOCHS * spe] == pytest.approx(old)  # the epochs before ran with the old one

    # Once more: nothing left to train, so the outputs come straight from the checkpoint (whose
    # params are now the new ones: no flag needed).
    again = fit(cfg, out_dir=tmp_path / "again", address=cluster.address, run_name="killed")
    assert again.checkpoint_uri == result.checkpoint_uri
    assert again.mlflow_run_id == result.mlflow_run_id
    assert again.generator_path.read_bytes() == result.generator_path.read_bytes()


def test_cli_bad_shards_is_one_line_error(tmp_path, capsys):
    from p2p.cli import main

    missing = tmp_path / "no-shards"
    rc = main(["train", "--shards", str(missing), "--out", str(tmp_path / "models")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("p2p train: error:") and str(missing) in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "models").exists()


def _corrupt_copy(bucket: str, src: str, dst: str) -> str:
    """Copy the shard set `src` to `dst`, with every target image of the first train shard
    replaced by bytes that are not an image. Returns the bad shard's URL."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{src}/")["Contents"]]
    bad = sorted(k for k in keys if k.rsplit("/", 1)[1].startswith("train-"))[0]
    for key in keys:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        if key == bad:
            out = io.BytesIO()
            with (
                tarfile.open(fileobj=io.BytesIO(body)) as tin,
                tarfile.open(fileobj=out, mode="w") as tout,
            ):
                for info in tin:
                    data = tin.extractfile(info).read()
                    if info.name.endswith(".target.png"):
                        data = b"this is not a png"
                        info.size = len(data)
                    tout.addfile(info, io.BytesIO(data))
            body = out.getvalue()
        s3.put_object(Bucket=bucket, Key=f"{dst}/{key[len(src) + 1 :]}", Body=body)
    return f"s3://{bucket}/{dst}/{bad[len(src) + 1 :]}"


def test_corrupt_shard_fails_at_once_with_the_cause(
    killed_run, train_cfg, bucket, local_ray_tmp, tmp_path
):
    """`p2p train` with a local Ray (started by p2p, inheriting this environment) on shards
    with a corrupt shard: exit 2 after one attempt although resources.max_failures is 2, and the
    last line names the shard. The console has none of Ray's start-up chatter."""
    from p2p.config import to_yaml

    bad_url = _corrupt_copy(bucket, "shards", "bad-shards")
    params = tmp_path / "params.yaml"
    params.write_text(to_yaml(train_cfg))
    env = {
        **os.environ,
        "AWS_SECRET_ACCESS_KEY": SECRET,  # in this environment only: the workers inherit it
        "RAY_TMPDIR": str(local_ray_tmp),
        "PYTHONPATH": str(REPO),
    }
    env.pop("RAY_ADDRESS", None)
    argv = [sys.executable, "-m", "p2p", "train", "--params", str(params)]
    argv += ["--set", f"data.shards=s3://{bucket}/bad-shards", "--run-name", "bad-data"]
    argv += ["--out", str(tmp_path / "models")]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert lines[-1].startswith(f"p2p train: error: {bad_url}:"), lines[-5:]
    # the shard's checksum (p2p.data.shards) catches the corruption before the decoder does
    assert "sha256 differs from index.json" in lines[-1] and "Traceback" not in lines[-1]
    # not retried: rank 0's start line at most once (the run stops within a second or two of
    # it, and Ray's log forwarding may not deliver it before the driver shuts Ray down)
    assert (proc.stdout + proc.stderr).count("starting at step 0") <= 1
    for chatter in ("Token authentication", "PreemptionWatcher", "Setting up process group"):
        assert chatter not in proc.stdout + proc.stderr, chatter  # p2p.training.ray_console
    assert not (tmp_path / "models").exists()


def test_no_secret_under_the_ray_temp_dirs(killed_run, cluster, bucket, local_ray_tmp):
    """After the runs above (driver joining a cluster, and a local Ray started by `p2p train`),
    the marker secret is nowhere under either Ray temp dir, nor in the S3 bucket (shards,
    checkpoints), the MLflow database and artifacts or the Prefect home of this session."""
    import boto3

    session = Path(cluster.head_node.get_session_dir_path())
    assert (session / "logs").is_dir()
    local_sessions = list(local_ray_tmp.glob("ray/session_*/logs"))
    assert local_sessions, f"no local Ray session under {local_ray_tmp}: run the test above"
    needle = SECRET.encode()
    tracking_dir = Path(os.environ["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///")).parent
    for root in (session, local_ray_tmp, tracking_dir):  # tracking_dir: MLflow db + artifacts
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                try:
                    assert needle not in path.read_bytes(), path
                except OSError:  # sockets, files removed meanwhile
                    continue
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        assert needle not in s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read(), obj
