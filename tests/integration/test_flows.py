"""The Prefect flows end to end against real components: one Prefect test API for the session,
a temp git + DVC repository (local DVC remote), shards on the moto S3 server, a sqlite MLflow
registry in tmp, and one real Ray Train fit (plus one that fails on purpose).

The tests of this module share one first `retrain_flow` run (the module fixture `first_run`);
they read its results and add to the same registry, in file order.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[2]
MODEL = "p2p-flows"

# A config small enough for a 2-core CI box: 30 demo pairs at 72 px, 64 px crops, a thin U-Net,
# one epoch of 12 steps on one Ray worker.
PARAMS: dict[str, dict[str, Any]] = {
    "data": {"load_size": 72, "crop_size": 64, "loader_workers": 0, "shard_max_count": 8},
    "build": {"num_pairs": 30, "size": 72},
    "model": {"num_downs": 6, "base_channels": 8, "disc_channels": 8},
    "train": {"batch_size": 2, "epochs": 1, "val_batches": 1, "log_every": 4},
    "resources": {"num_workers": 1, "max_failures": 0},
    "eval": {"batch_size": 4, "num_samples": 2, "model_name": MODEL},
}

# ----------------------------------------------------------------------------- Prefect API

_HARNESS: list[Any] = []
LIMIT = 200  # rows per Prefect API query (the sync client sends no default; the API needs one)


def start_prefect_harness(config: pytest.Config) -> str:
    """Start the session's one `prefect_test_harness` (a temp-DB Prefect API subprocess) on
    first use; every module asking for it gets the same one. Returns its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    if not _HARNESS:
        harness = prefect_test_harness(server_startup_timeout=120)
        harness.__enter__()
        config.add_cleanup(lambda: harness.__exit__(None, None, None))
        _HARNESS.append(harness)
    return PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def prefect_api(pytestconfig) -> str:
    return start_prefect_harness(pytestconfig)


def _task_runs(flow_run_id: Any) -> dict[str, Any]:
    """Task runs of a flow run and of its subflow runs, by task name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort

    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
            ),
            sort=FlowRunSort.ID_DESC,
            limit=LIMIT,
        )
        ids = [flow_run_id, *(fr.id for fr in children)]
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)),
            sort=TaskRunSort.ID_DESC,
            limit=LIMIT,
        )
    return {tr.name.split("-")[0]: tr for tr in runs}


def _state_names(task_run_id: Any) -> list[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        states = client.read_task_run_states(task_run_id)
    return [s.name for s in sorted(states, key=lambda s: s.timestamp)]


def _flow_run_count(flow_name: str) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            sort=FlowRunSort.ID_DESC,
            limit=LIMIT,
        )
    return len(runs)


# ----------------------------------------------------------------------------- project


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, check=True, capture_output=True, text=True, timeout=60
    ).stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory, s3_server, prefect_api):
    """A fresh git + DVC repository with params.yaml (shards on S3) as the working directory,
    its own MLflow sqlite registry, and the project's .dvc/config (default remote: local)."""
    import boto3
    from dvc.repo import Repo

    tmp = tmp_path_factory.mktemp("flows")
    root = tmp / "repo"
    root.mkdir()
    bucket = "p2p-flows-test"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    params = {g: dict(v) for g, v in PARAMS.items()}
    params["data"]["shards"] = f"s3://{bucket}/shards/demo"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _git(root, "init", "-q")
    _git(root, "config", "user.email", "ci@example.com")
    _git(root, "config", "user.name", "ci")
    Repo.init(str(root)).close()
    for name in ("config", ".gitignore"):
        shutil.copyfile(PROJECT / ".dvc" / name, root / ".dvc" / name)
    (root / ".gitignore").write_text("/runs/\n/mlruns/\n/models/\n/reports/\n")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "init")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        mp.chdir(root)  # flows run in the project directory, like `dvc repro`
        yield {"root": root, "bucket": bucket, "shards": params["data"]["shards"]}


@pytest.fixture(scope="module")
def first_run(project):
    """retrain_flow on a fresh project: no data version, no champion -> data + training."""
    from pipelines.retrain_flow import retrain_flow

    state = retrain_flow(params="params.yaml", return_state=True)
    assert state.is_completed(), state.message
    return state.result(), state.state_details.flow_run_id


def _versions() -> list[int]:
    from p2p.registry import show

    return [v["version"] for v in show(MODEL)["versions"]]


# ----------------------------------------------------------------------------- tests


def test_is_transient_classifies_errors():
    from botocore.exceptions import ClientError, EndpointConnectionError
    from dvc.exceptions import UploadError

    from p2p.data.storage import StorageError
    from p2p.errors import DataError, P2PError
    from pipelines.tasks import is_transient

    def chained(outer: BaseException, cause: BaseException) -> BaseException:
        try:
            raise outer from cause
        except BaseException as e:  # noqa: BLE001
            return e

    down = EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    slow = ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {}}, "PutObject")
    denied = ClientError(
        {"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "Put"
    )
    assert is_transient(chained(StorageError("s3://b/k: list failed"), down))
    assert is_transient(slow)
    assert is_transient(chained(P2PError("version data/raw/demo: push"), UploadError(2)))
    assert is_transient(ConnectionResetError())
    assert not is_transient(chained(StorageError("s3://b/k: denied"), denied))
    assert not is_transient(chained(DataError("bad pair"), ConnectionResetError()))
    assert not is_transient(ValueError("bug"))


@pytest.mark.slow
def test_retrain_flow_versions_shards_trains_registers_and_promotes(project, first_run):
    from p2p.data.shards import read_index
    from p2p.data.versioning import current_version
    from p2p.registry import get_version

    result, flow_run_id = first_run
    assert result["skipped"] is False
    dv = result["data_version"]
    # DVC: the version recorded in data/raw/demo.dvc, staged in git, pushed to the local remote
    recorded = current_version("data/raw/demo")
    assert recorded is not None and recorded.md5 == dv and dv.endswith(".dir")
    assert "data/raw/demo.dvc" in _git(project["root"], "diff", "--cached", "--name-only")
    pushed = project["root"] / ".dvc" / "storage" / "files" / "md5" / dv[:2] / dv[2:]
    assert pushed.is_file()  # the directory manifest is on the remote
    # shards on S3, recording the same data version
    index = read_index(project["shards"])
    assert index.data_version["dvc_md5"] == dv
    assert result["data"]["totals"] == index.totals
    # trained, evaluated, registered with lineage, promoted (there was no champion)
    training = result["training"]
    assert (training["version"], training["promoted"], training["skipped"]) == (1, True, False)
    champ = get_version(MODEL, "champion")
    assert champ.version == 1
    assert champ.tags["lineage.data_version"] == dv
    assert champ.tags["lineage.params_hash"] == training["params_hash"]
    assert champ.tags["lineage.ray_checkpoint"].endswith("epoch_0001")
    assert champ.tags["gate.decision"] == "promoted"
    assert float(champ.tags["metric.psnr"]) == pytest.approx(training["metrics"]["psnr"])
    assert Path("reports/samples.png").is_file() and Path("models/generator.pt").is_file()
    # every stage ran once, as a Prefect task run, and completed
    runs = _task_runs(flow_run_id)
    for stage in ("prepare", "validate", "version", "shard", "train", "evaluate", "register"):
        assert runs[stage].state.is_completed(), (stage, runs[stage].state)
        assert runs[stage].run_count == 1
    assert runs["gate"].state.is_completed()


@pytest.mark.slow
def test_retrain_flow_skips_when_data_unchanged_and_says_so(project, first_run, caplog):
    from pipelines.retrain_flow import retrain_flow

    trainings, data_runs = _flow_run_count("training_flow"), _flow_run_count("data_flow")
    with caplog.at_level("INFO"):
        state = retrain_flow(params="params.yaml", return_state=True)
    result = state.result()
    assert result == {
        "skipped": True,
        "data_version": first_run[0]["data_version"],
        "champion_version": 1,
    }
    assert "unchanged" in caplog.text and "skipping retraining" in caplog.text
    assert _task_runs(state.state_details.flow_run_id) == {}  # no stage ran
    assert (_flow_run_count("training_flow"), _flow_run_count("data_flow")) == (
        trainings,
        data_runs,
    )
    assert _versions() == [1]


@pytest.mark.slow
def test_training_flow_is_idempotent_per_data_version_and_params(project, first_run):
    from pipelines.training_flow import training_flow

    state = training_flow(params="params.yaml", return_state=True)
    result = state.result()
    assert result["skipped"] is True and result["version"] == 1 and result["champion"] is True
    assert result["data_version"] == first_run[0]["data_version"]
    assert _task_runs(state.state_details.flow_run_id) == {}  # no train, no register, no gate
    assert _versions() == [1]


@pytest.mark.slow
def test_worse_challenger_is_registered_but_not_promoted(project, first_run, tmp_path):
    import torch
    from prefect import flow

    from p2p.checkpoints import save_generator
    from p2p.models import build_generator
    from p2p.registry import get_version
    from pipelines import tasks

    @flow(name="register_challenger")
    def register_challenger(cfg: dict, checkpoint: str, lineage: dict) -> dict:
        metrics = tasks.evaluate(cfg, checkpoint, out_dir=str(tmp_path / "reports"))
        return tasks.gate(cfg, tasks.register(cfg, checkpoint, metrics, lineage))

    cfg = tasks.load("params.yaml", None)
    c = tasks.cfg_of(cfg)
    # an untrained generator whose last bias saturates tanh: a white image whatever the input
    torch.manual_seed(0)
    g = build_generator(c.model, c.data.input_nc, c.data.output_nc)
    last = [m for m in g.modules() if isinstance(m, torch.nn.ConvTranspose2d)][-1]
    with torch.no_grad():
        last.bias.fill_(10.0)
    ckpt = save_generator(tmp_path / "untrained.pt", g, c)
    lineage = {"data_version": first_run[0]["data_version"], "params_hash": "untrained"}

    decision = register_challenger(cfg, str(ckpt), lineage)

    assert decision["version"] == 2 and decision["promoted"] is False
    assert decision["champion_version"] == 1 and decision["rescored_champion"] is False
    assert decision["challenger_score"] < decision["champion_score"]  # psnr: higher is better
    assert get_version(MODEL, "champion").version == 1
    chal = get_version(MODEL, 2)
    assert "challenger" in chal.aliases
    assert chal.tags["gate.decision"] == "rejected"
    assert float(chal.tags["gate.champion_score"]) == decision["champion_score"]


@pytest.mark.slow
def test_failed_s3_call_is_retried_then_succeeds(project, first_run, monkeypatch):
    import boto3
    from botocore.config import Config

    from p2p.data import storage
    from p2p.data.shards import read_index
    from pipelines.data_flow import data_flow

    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    real = storage.s3_client
    calls: list[str] = []

    def flaky_client(**kw: Any) -> Any:
        """The first S3 client of the run points at the dead endpoint, later ones at moto."""
        if not calls:
            calls.append("dead")
            return boto3.client(
                "s3", endpoint_url=dead, config=Config(retries={"total_max_attempts": 1})
            )
        calls.append("live")
        return real(**kw)

    monkeypatch.setattr(storage, "s3_client", flaky_client)
    url = f"s3://{project['bucket']}/shards/retry"
    state = data_flow(params="params.yaml", overrides=[f"data.shards={url}"], return_state=True)

    assert state.is_completed(), state.message
    assert calls[0] == "dead" and "live" in calls
    shard = _task_runs(state.state_details.flow_run_id)["shard"]
    assert shard.state.is_completed() and shard.run_count == 2
    names = _state_names(shard.id)
    assert "AwaitingRetry" in names and "Retrying" in names and names[-1] == "Completed"
    assert read_index(url).data_version["dvc_md5"] == first_run[0]["data_version"]


@pytest.mark.slow
def test_failed_training_leaves_the_registry_untouched(project, first_run):
    from p2p.data import storage
    from p2p.registry import get_version, show
    from pipelines.training_flow import training_flow

    # shards whose index is intact but whose train tars are gone: training fails in Ray
    broken = f"s3://{project['bucket']}/shards/broken"
    for src in storage.list_urls(project["shards"]):
        name = src.rsplit("/", 1)[1]
        if not name.startswith("train-"):
            storage.write_bytes(f"{broken}/{name}", storage.read_bytes(src))
    before = show(MODEL)

    # another seed: a model the registry does not hold yet (the shards' location alone is not
    # part of the model hash, and the copied index records the same data version)
    state = training_flow(
        params="params.yaml",
        overrides=[f"data.shards={broken}", "train.seed=7"],
        return_state=True,
    )

    assert state.is_failed()
    runs = _task_runs(state.state_details.flow_run_id)
    assert runs["train"].state.is_failed() and runs["train"].run_count == 1  # never retried
    assert not {"evaluate", "register", "gate"} & set(runs)
    after = show(MODEL)
    assert after["versions"] == before["versions"] and after["aliases"] == before["aliases"]
    assert get_version(MODEL, "champion").version == 1


@pytest.mark.slow
def test_loader_workers_exit_cleanly_in_a_flow_process(project, first_run, loader_exit_codes):
    """CI: once a flow had run in the process, Prefect's services left a thread at-exit hook
    that fails in a forked DataLoader worker, so every worker exited with status 1 and torch's
    SIGCHLD handler raised "DataLoader worker exited unexpectedly" mid-evaluation."""
    from prefect import flow

    from p2p.config import load_config
    from p2p.data.dataset import make_loader

    data = load_config("params.yaml").data

    @flow
    def read_split(split: str) -> int:
        loader = make_loader(project["shards"], split, data, num_workers=2, batch_size=1)
        return sum(a.shape[0] for a, _ in loader)

    assert read_split("val") + read_split("train") > 0
    assert sorted(loader_exit_codes.values()) == [0, 0, 0, 0]
