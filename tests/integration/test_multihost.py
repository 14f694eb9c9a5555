"""`p2p train`, `p2p data import|shard` and `p2p predict` on a real multi-host Ray cluster: two
hosts as network namespaces (netns_cluster).

Host 0 (10.77.0.1) runs the Ray head and the driver (`p2p train --address 10.77.0.1:6379`, run
with `ip netns exec`); host 1 (10.77.0.2) a Ray worker node; each advertises one CPU, so the two
training workers land on different hosts. The moto S3 server (shards, checkpoints, MLflow
artifacts) and an MLflow tracking server (sqlite) listen on the bridge, 10.77.0.254. Ray runs
with token authentication. Nobody sets GLOO_SOCKET_IFNAME: the host name resolves to 127.0.0.1
in every namespace, so gloo's full mesh connects only because p2p picks each worker's interface
(p2p.training.distributed).

0. data and batch prediction (first, on the fresh cluster): `p2p data import` and `p2p data
   shard` (to S3) with `--address`: tasks on both hosts, output bytes equal to a local run;
   `p2p predict --address` from s3:// to s3://: one actor per host (the summary's node IPs),
   outputs equal to single-process predict.
1. driver mode: 2 epochs; each checkpoint's workers.json shows two ranks on two node IPs with
   node ranks 0 and 1 and the namespace interface chosen; shards and checkpoints on S3; one
   MLflow run with metrics from every step.
2. a worker host dies mid-run (every process in its namespace gets SIGKILL), comes back with
   `ray start` later; the run resumes from the last checkpoint, steps continue without a gap or
   a repeat and every epoch is trained once.
3. job mode: `p2p train --address http://10.77.0.1:8265` from the root namespace.

Needs root and network namespaces (skips otherwise). Heavy: run under `flock /tmp/p2p-heavy.lock`.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from netns_cluster import (
    BRIDGE_IP,
    REPO,
    NetnsCluster,
    cleanup_leftovers,
    links,
    namespaces,
    started_lines,
    unsupported_reason,
    wait_http,
)
from team_server import BIN, free_port

pytestmark = pytest.mark.slow

TRAIN_PAIRS = 96  # of build.num_pairs=120 (val and test take 12 each)
BATCH = 2  # global: one image per worker
SPE = TRAIN_PAIRS // BATCH
TINY = [  # tiny U-Net at 32 px: the 2 shared cores run the whole cluster
    "build.num_pairs=120",  # 48 steps per epoch: the kill lands mid-run
    "build.size=40",
    "data.load_size=36",
    "data.crop_size=32",
    "data.shard_max_count=8",
    "data.loader_workers=0",
    "model.num_downs=5",
    "model.base_channels=8",
    "model.disc_channels=8",
    f"train.batch_size={BATCH}",
    "train.log_every=1",
    "train.val_batches=1",
    "resources.num_workers=2",
    "resources.cpus_per_worker=1",
    "resources.max_failures=3",
    "eval.num_samples=2",
]


def test_cleanup_removes_a_crashed_runs_leftovers(tmp_path):
    """What a killed test run leaves (a namespace with a process in it, a veth, a bridge, a
    recorded process group in the root namespace) is gone after cleanup_leftovers. Its own
    prefix, so a live cluster is never touched."""
    reason = unsupported_reason()
    if reason:
        pytest.skip(reason)
    prefix, state = "p2pmx", tmp_path / "state.json"
    ns, veth, peer, bridge = f"{prefix}-0", f"{prefix}-v0", f"{prefix}-n0", f"{prefix}-br"
    try:
        for argv in (
            ["netns", "add", ns],
            ["link", "add", bridge, "type", "bridge"],
            ["link", "add", veth, "type", "veth", "peer", "name", peer],
            ["link", "set", veth, "master", bridge],
            ["link", "set", peer, "netns", ns],
        ):
            subprocess.run(["ip", *argv], check=True, capture_output=True)
        inside = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "300"])
        outside = subprocess.Popen(["sleep", "301"], start_new_session=True)
        state.write_text(json.dumps([{"pid": outside.pid, "argv": ["sleep", "301"]}]))
        time.sleep(0.5)  # `ip netns exec` has entered the namespace and exec'd sleep

        removed = cleanup_leftovers(prefix, state)

        assert f"namespace {ns}" in removed and f"process {outside.pid} (sleep)" in removed
        assert inside.wait(10) == -9 and outside.wait(10) == -9
        assert namespaces(prefix) == [] and links(prefix) == [] and not state.exists()
    finally:
        cleanup_leftovers(prefix, state)


@pytest.fixture(scope="module")
def mh(request, tmp_path_factory):
    """The two-host cluster, S3 and MLflow; torn down by finalizers even when setup fails."""
    reason = unsupported_reason()
    if reason:
        pytest.skip(reason)
    left = cleanup_leftovers()
    if left:
        print(f"multihost: removed leftovers of an earlier run: {', '.join(left)}")
    cluster = NetnsCluster(tmp_path_factory.mktemp("multihost"), num_hosts=2, cpus_per_host=1)
    request.addfinalizer(cluster.teardown)

    from moto.server import ThreadedMotoServer

    s3 = ThreadedMotoServer(ip_address=BRIDGE_IP, port=0, verbose=False)
    cluster.create_network()  # first: BRIDGE_IP must exist before moto binds it
    s3.start()
    request.addfinalizer(s3.stop)
    endpoint = f"http://{BRIDGE_IP}:{s3.get_host_and_port()[1]}"
    aws = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in aws}
    os.environ.update(aws)  # this process writes the shards and reads S3 back

    def restore() -> None:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)

    request.addfinalizer(restore)
    import boto3

    bucket = f"p2p-mh-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    mlflow_uri = f"http://{BRIDGE_IP}:{free_port()}"
    cluster.env.update({**aws, "MLFLOW_TRACKING_URI": mlflow_uri})
    port = mlflow_uri.rsplit(":", 1)[1]
    argv = [str(BIN / "mlflow"), "server", "--host", BRIDGE_IP, "--port", port, "--workers", "1"]
    argv += ["--backend-store-uri", f"sqlite:///{cluster.workdir / 'mlflow.db'}"]
    argv += ["--artifacts-destination", f"s3://{bucket}/mlflow"]
    base = {**os.environ, "DO_NOT_TRACK": "1"}
    base.pop("MLFLOW_TRACKING_URI", None)
    cluster.start("mlflow", argv, base)
    cluster.start_ray(cluster.head, base)
    cluster.wait_nodes(1)
    for host in cluster.hosts[1:]:
        cluster.start_ray(host, base)
    cluster.wait_nodes(len(cluster.hosts))
    wait_http(f"{mlflow_uri}/health", 240, cluster.procs, cluster.logs)
    cluster.bucket = bucket
    cluster.base_env = base
    return cluster


@pytest.fixture(scope="module")
def shards(mh):
    """Demo pairs sharded to S3 (96 train pairs)."""
    from p2p.config import load_config
    from p2p.data.build import build_demo
    from p2p.data.shards import write_shards

    uri = f"s3://{mh.bucket}/shards"
    cfg = load_config(None, [*TINY, f"data.shards={uri}"])
    raw = mh.workdir / "raw"
    build_demo(raw, cfg.build, cfg.data)
    index = write_shards(raw, uri, cfg.data)
    assert index.samples("train") == TRAIN_PAIRS
    return uri


def _project(mh, name: str) -> Path:
    root = mh.workdir / name
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    return root


def _train_argv(mh, shards: str, run_name: str, epochs: int, experiment: str) -> list[str]:
    sets = [
        *TINY,
        f"data.shards={shards}",
        f"train.epochs={epochs}",
        f"optim.n_epochs={epochs}",
        "optim.n_epochs_decay=0",
        f"train.storage_path=s3://{mh.bucket}/runs",
        f"train.keep_checkpoints={epochs}",
        f"train.experiment={experiment}",
    ]
    argv = [str(BIN / "p2p"), "train", "--params", "params.yaml"]
    for kv in sets:
        argv += ["--set", kv]
    argv += ["--address", mh.ray_address, "--run-name", run_name, "--out", "models"]
    return mh.in_host(mh.head, argv)  # the driver runs on the head "host"


def _s3(mh):
    import boto3

    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])


def _epochs_on_s3(mh, run_name: str) -> list[int]:
    """Checkpoints of a run that hold their metrics.json (written last by rank 0)."""
    keys = _s3(mh).list_objects_v2(Bucket=mh.bucket, Prefix=f"runs/{run_name}/epoch_")
    names = {k["Key"].split("/")[2] for k in keys.get("Contents", []) if k["Key"].endswith(".json")}
    return sorted(int(n.split("_")[1]) for n in names)


def _registered_epoch(mh, run_name: str) -> int:
    """The latest checkpoint Ray Train's controller has registered (its snapshot file names
    the checkpoint directories it keeps); 0 before the first."""
    key = f"runs/{run_name}/checkpoint_manager_snapshot.json"
    try:
        text = _s3(mh).get_object(Bucket=mh.bucket, Key=key)["Body"].read().decode()
    except _s3(mh).exceptions.NoSuchKey:
        return 0
    return max((int(n) for n in re.findall(r"epoch_(\d{4})", text)), default=0)


def _placement(mh, run_name: str, epoch: int) -> list[dict]:
    key = f"runs/{run_name}/epoch_{epoch:04d}/workers.json"
    return json.loads(_s3(mh).get_object(Bucket=mh.bucket, Key=key)["Body"].read())


def _assert_two_hosts(mh, placement: list[dict]) -> None:
    by_ip = {h.ip: h for h in mh.hosts}
    assert sorted(p["rank"] for p in placement) == [0, 1]
    assert sorted(p["node_rank"] for p in placement) == [0, 1]
    assert {p["node_ip"] for p in placement} == set(by_ip), placement  # two distinct hosts
    for p in placement:  # chosen by p2p: the namespace's veth, not loopback
        assert p["gloo_socket_ifname"] == by_ip[p["node_ip"]].ifname, p


def _mlflow_runs(mh, experiment: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(mh.env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment}"
    return client.search_runs([exp.experiment_id]), client


def _log_steps(project: Path) -> tuple[list[int], set[int]]:
    with open(project / "models" / "train_log.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("loss_d")]
    return [int(r["step"]) for r in rows], {int(r["epoch"]) for r in rows}


def _on_head(mh, project: Path, argv: list[str], timeout: int = 600) -> str:
    """`p2p ARGV` run as a driver on host 0 (its namespace); stdout + stderr. Exit 0 asserted."""
    proc = subprocess.run(
        mh.in_host(mh.head, [str(BIN / "p2p"), *argv]),
        cwd=project,
        env=mh.node_env(mh.base_env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{out[-6000:]}\n{mh.log_tail()}"
    return out


def _ray_nodes(out: str) -> set[str]:
    """The node ids (8-char prefixes) of the `ray: N tasks on M node(s): ID K, ...` line."""
    m = re.search(r"ray: \d+ tasks on (\d+) node\(s\): (.*)", out)
    assert m, out[-4000:]
    ids = {part.split()[0] for part in m.group(2).split(", ")}
    assert len(ids) == int(m.group(1))
    return ids


def _s3_objects(mh, prefix: str) -> dict[str, bytes]:
    """name below `prefix` -> bytes, for every object there."""
    got = _s3(mh).list_objects_v2(Bucket=mh.bucket, Prefix=prefix + "/").get("Contents", [])
    return {
        o["Key"][len(prefix) + 1 :]: _s3(mh)
        .get_object(Bucket=mh.bucket, Key=o["Key"])["Body"]
        .read()
        for o in got
    }


def test_data_import_and_shard_across_two_hosts(mh):
    """`p2p data import|shard --address head:6379` on host 0: the per-pair and per-bucket tasks
    ran on both hosts' nodes; the dataset and the S3 shard set equal a local run's bytes."""
    from data_fixtures import make_aligned, tree_hashes

    from p2p.cli import main

    project = _project(mh, "data")
    src = project / "src"
    make_aligned(src, {"train": 30, "val": 3, "test": 3}, size=32)
    params = ["--params", str(project / "params.yaml")]
    imp = ["data", "import", "--format", "aligned", "--src", str(src), *params]

    # local reference runs, in this process, without Ray
    assert main([*imp, "--out", str(project / "local" / "raw")]) == 0
    shard = ["data", "shard", "--max-count", "4", *params]
    local_shards = project / "local" / "shards"
    assert main([*shard, "--src", str(project / "local" / "raw"), "--out", str(local_shards)]) == 0

    # the same on the cluster, the driver on host 0
    raw = project / "ray" / "raw"
    out = _on_head(mh, project, [*imp, "--out", str(raw), "--address", mh.ray_address])
    assert len(_ray_nodes(out)) == 2, out  # pairs decoded on both hosts
    assert tree_hashes(raw) == tree_hashes(project / "local" / "raw")

    url = f"s3://{mh.bucket}/mh-data/shards"
    out = _on_head(
        mh, project, [*shard, "--src", str(raw), "--out", url, "--address", mh.ray_address]
    )
    assert len(_ray_nodes(out)) == 2, out  # buckets packed on both hosts
    local = {p.name: p.read_bytes() for p in local_shards.iterdir()}
    assert len(local) > 2 and _s3_objects(mh, "mh-data/shards") == local  # index.json, tars


def test_batch_predict_across_two_hosts(mh, tmp_path):
    """`p2p predict --address head:6379` over s3:// in and out: one actor per host (the summary
    names both hosts' IPs) and outputs equal to single-process `p2p predict`."""
    import io

    import numpy as np
    import torch
    from data_fixtures import TINY, noise, save
    from PIL import Image

    from p2p.checkpoints import save_generator
    from p2p.cli import main
    from p2p.config import load_config
    from p2p.models import build_generator

    cfg = load_config(None, {**TINY, "model.base_channels": 4})
    torch.manual_seed(0)
    g = build_generator(cfg.model, cfg.data.input_nc, cfg.data.output_nc).eval()
    (mh.workdir / "predict").mkdir()
    ckpt = save_generator(mh.workdir / "predict" / "generator.pt", g, cfg)
    names = ["a.png", "b.png", "sub/c.png", "sub/d.png"]
    for i, rel in enumerate(names):
        save(tmp_path / "in" / rel, noise(64, 64, seed=i))
        _s3(mh).put_object(
            Bucket=mh.bucket, Key=f"pred/in/{rel}", Body=(tmp_path / "in" / rel).read_bytes()
        )

    project = _project(mh, "predict-project")
    argv = ["predict", "--checkpoint", str(ckpt), "--input", f"s3://{mh.bucket}/pred/in/"]
    argv += ["--output", f"s3://{mh.bucket}/pred/out/", "--address", mh.ray_address]
    _on_head(mh, project, [*argv, "--actors", "2", "--batch-size", "1"])

    summary = json.loads(_s3_objects(mh, "pred/out")["_summary.json"])
    assert summary["counts"] == {"total": 4, "written": 4, "skipped": 0, "failed": 0}
    assert {n["ip"] for n in summary["nodes"]} == {h.ip for h in mh.hosts}, summary["nodes"]
    assert len({n["node_id"] for n in summary["nodes"]}) == 2
    outputs = _s3_objects(mh, "pred/out")
    for rel in names:  # single-process predict, here, without Ray
        ref = tmp_path / "ref" / rel
        assert main(["predict", "--checkpoint", str(ckpt), "--input", str(tmp_path / "in" / rel),
                     "--output", str(ref), "--device", "cpu"]) == 0  # fmt: skip
        a, b = (
            np.asarray(Image.open(io.BytesIO(x)).convert("RGB"), dtype=np.int16)
            for x in (outputs[rel], ref.read_bytes())
        )
        assert np.abs(a - b).max() <= 1, rel


def test_driver_mode_trains_across_two_hosts(mh, shards):
    epochs, run, experiment = 2, "mh-driver", f"mh-{uuid.uuid4().hex[:6]}"
    project = _project(mh, "driver")
    env = mh.node_env(mh.base_env)
    assert not any(k.endswith("_SOCKET_IFNAME") for k in env)  # nothing set by hand
    proc = subprocess.run(
        _train_argv(mh, shards, run, epochs, experiment),
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{out[-6000:]}\n{mh.log_tail()}"

    assert _epochs_on_s3(mh, run) == [1, 2]
    for epoch in (1, 2):
        _assert_two_hosts(mh, _placement(mh, run, epoch))
    assert "rank 0 @ 10.77.0." in out and "rank 1 @ 10.77.0." in out
    steps, seen = _log_steps(project)
    assert steps == list(range(1, epochs * SPE + 1)) and seen == {1, 2}

    runs, client = _mlflow_runs(mh, experiment)
    assert [r.info.run_name for r in runs] == [run]
    assert runs[0].info.status == "FINISHED"
    history = client.get_metric_history(runs[0].info.run_id, "train/loss_d")
    assert sorted(m.step for m in history) == steps  # rank 0 on host 0 logged every step


def test_worker_host_killed_mid_run_resumes_from_last_checkpoint(mh, shards):
    epochs, run, experiment = 4, "mh-kill", f"mh-{uuid.uuid4().hex[:6]}"
    project = _project(mh, "kill")
    log = mh.workdir / "logs" / "driver-kill.log"
    worker_host = mh.hosts[1]
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            _train_argv(mh, shards, run, epochs, experiment),
            cwd=project,
            env=mh.node_env(mh.base_env),
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    mh.procs.procs["driver-kill"] = proc  # teardown stops it if the test fails
    try:
        # Kill as soon as the controller has registered a checkpoint, before the last epoch.
        deadline = time.monotonic() + 600
        while not (registered := _registered_epoch(mh, run)):
            assert proc.poll() is None, f"run ended before the kill:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 600 s"
            time.sleep(0.2)
        assert registered < epochs, "the run finished before the kill"
        mh.kill_host(worker_host)
        mh.wait_nodes(1, timeout_s=180)  # the GCS has seen the host die
        last = _registered_epoch(mh, run)  # the last checkpoint before the failure
        assert registered <= last < epochs
        print(f"multihost: killed host 1 after checkpoint epoch {registered}; last: {last}")
        mh.start_ray(worker_host, mh.base_env)  # the host comes back
        mh.wait_nodes(2)
        rc = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    out = log.read_text(errors="replace")
    assert rc == 0, f"{out[-6000:]}\n{mh.log_tail()}"

    # the second attempt started at the last checkpoint taken before the kill
    assert started_lines(out) == [0, last * SPE], out[-4000:]
    print(f"multihost: attempts started at steps {started_lines(out)}")
    steps, seen = _log_steps(project)
    assert steps == list(range(1, epochs * SPE + 1))  # continuous: no gap, no repeat
    assert seen == set(range(1, epochs + 1))  # every epoch trained, none lost
    assert _epochs_on_s3(mh, run) == list(range(1, epochs + 1))
    _assert_two_hosts(mh, _placement(mh, run, epochs))  # the new worker is on the new host
    runs, _ = _mlflow_runs(mh, experiment)
    assert [r.info.run_name for r in runs] == [run] and runs[0].info.status == "FINISHED"


def test_job_mode_trains_across_two_hosts(mh, shards):
    """`--address http://head:8265` from outside the cluster (the root namespace): the driver
    runs as a Ray Job on host 0, the workers on both hosts, the outputs come back from S3."""
    epochs, run, experiment = 1, "mh-job", f"mh-{uuid.uuid4().hex[:6]}"
    project = _project(mh, "job")
    argv = _train_argv(mh, shards, run, epochs, experiment)[4:]  # not inside a namespace
    argv[argv.index("--address") + 1] = mh.jobs_url
    proc = subprocess.run(
        argv,
        cwd=project,
        env=mh.node_env(mh.base_env),
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{out[-6000:]}\n{mh.log_tail()}"
    assert f"submitted Ray job {run}-" in out
    _assert_two_hosts(mh, _placement(mh, run, epochs))
    assert (project / "models" / "generator.pt").is_file()
    runs, _ = _mlflow_runs(mh, experiment)
    assert [r.info.run_name for r in runs] == [run] and runs[0].info.status == "FINISHED"
