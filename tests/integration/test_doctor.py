"""`p2p doctor` against live services (moto S3, `mlflow server`, `prefect server start`,
`ray start --head` with token auth) and against dead or misconfigured ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from team_server import BIN, free_port, team_server

from p2p.config import load_config
from p2p.doctor import FAIL, OK, SKIP, report, run_checks

REPO = Path(__file__).resolve().parents[2]
PARAMS = str(REPO / "params.yaml")
SERVICE_VARS = ("AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "PREFECT_API_URL", "RAY_ADDRESS")
RAY_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def doctor(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    argv = [str(BIN / "p2p"), "doctor", "--params", PARAMS, "--timeout", "5", *args]
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def lines_by_check(stdout: str) -> dict[str, str]:
    """{check name: its table line} from doctor's text output."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in (OK, SKIP, FAIL):
            out[parts[1]] = line
    return out


@pytest.fixture(scope="module")
def live(s3_server, tmp_path_factory):
    """MLflow + Prefect servers and a one-node Ray head (token auth) on free local ports."""
    import boto3

    bucket = f"p2p-doctor-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    workdir = tmp_path_factory.mktemp("doctor-team")
    with team_server(workdir, s3_endpoint=s3_server, bucket=bucket, ray_nodes=1) as ts:
        yield ts


@pytest.fixture
def dvc_repo(tmp_path: Path) -> Path:
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    return tmp_path


@pytest.mark.slow
def test_all_ok_against_live_services(live, dvc_repo):
    b = live.bucket
    result = doctor(
        live.client_env(),
        dvc_repo,
        "--set",
        f"data.shards=s3://{b}/shards",
        "--set",
        f"train.storage_path=s3://{b}/runs",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    checks = lines_by_check(result.stdout)
    assert checks["s3"].startswith(f"OK   s3        {live.env['AWS_ENDPOINT_URL']} (")
    assert f"{b} ok" in checks["s3"]
    assert checks["mlflow"].startswith(f"OK   mlflow    {live.mlflow_uri} (server 3.")
    assert "registry ok, artifacts proxied" in checks["mlflow"]
    assert checks["prefect"].startswith(f"OK   prefect   {live.prefect_api_url} (server 3.")
    assert checks["ray"].startswith(f"OK   ray       {live.ray_address} (ray ")
    assert "1 nodes" in checks["ray"]
    assert checks["dvc"].startswith("OK   dvc       ") and f"s3://{b}/dvc" in checks["dvc"]
    assert checks["gpu"].split()[0] in (OK, SKIP)
    assert "all reachable" in result.stdout
    # Secrets never reach the output.
    assert live.ray_token not in result.stdout + result.stderr
    assert "AWS_SECRET_ACCESS_KEY  ***" in result.stdout
    assert "ray auth token         set (env)" in result.stdout


@pytest.mark.slow
def test_dead_endpoints_fail_each_with_its_reason(tmp_path):
    ports = {name: free_port() for name in ("s3", "mlflow", "prefect", "ray")}
    env = {k: v for k, v in os.environ.items() if k not in (*SERVICE_VARS, *RAY_AUTH_VARS)}
    env.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{ports['s3']}",
        MLFLOW_TRACKING_URI=f"http://127.0.0.1:{ports['mlflow']}",
        PREFECT_API_URL=f"http://127.0.0.1:{ports['prefect']}/api",
        RAY_ADDRESS=f"127.0.0.1:{ports['ray']}",
    )
    result = doctor(env, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    checks = lines_by_check(result.stdout)
    p = ports
    assert checks["s3"] == f"FAIL s3        http://127.0.0.1:{p['s3']}: connection refused"
    assert checks["mlflow"] == f"FAIL mlflow    http://127.0.0.1:{p['mlflow']}: connection refused"
    assert (
        checks["prefect"]
        == f"FAIL prefect   http://127.0.0.1:{p['prefect']}/api: connection refused"
    )
    assert checks["ray"] == f"FAIL ray       127.0.0.1:{p['ray']}: GCS connection refused"
    assert "4 failed: s3, mlflow, prefect, ray" in result.stdout


@pytest.mark.slow
def test_misconfigured_live_services_name_the_problem(live, dvc_repo, tmp_path, monkeypatch):
    prefect_root = live.prefect_api_url.removesuffix("/api")
    for k, v in live.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("P2P_DVC_REMOTE_URL", "s3://p2p-no-such-bucket/dvc")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", prefect_root)  # a server, but not MLflow
    monkeypatch.setenv("PREFECT_API_URL", prefect_root)  # missing the /api suffix
    for k in RAY_AUTH_VARS:  # a client that lacks the cluster's token
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # and no ~/.ray/auth_token to fall back on
    checks = {c.name: c for c in run_checks(load_config(PARAMS), cwd=dvc_repo)}

    assert checks["s3"].status == FAIL
    assert "bucket 'p2p-no-such-bucket' (P2P_DVC_REMOTE_URL) does not exist" in checks["s3"].detail
    assert checks["dvc"].status == FAIL
    assert "remote s3 s3://p2p-no-such-bucket/dvc: bucket 'p2p-no-such-bucket' does not exist" in (
        checks["dvc"].detail
    )
    assert checks["mlflow"].status == FAIL
    assert "/health answered HTTP 404" in checks["mlflow"].detail
    assert "not an MLflow server" in checks["mlflow"].detail
    assert checks["prefect"].status == FAIL
    assert "the URL usually ends in /api" in checks["prefect"].detail
    assert checks["ray"].status == FAIL
    assert "requires Ray token auth: set RAY_AUTH_MODE=token" in checks["ray"].detail

    text = report(load_config(PARAMS), list(checks.values()), as_json=True)
    data = json.loads(text)
    assert data["ok"] is False
    assert {c["name"]: c["status"] for c in data["checks"]}["s3"] == FAIL


@pytest.mark.slow
def test_ray_token_problems(live, tmp_path, monkeypatch):
    cfg = load_config(PARAMS)
    monkeypatch.setenv("RAY_ADDRESS", live.ray_address)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 64)
    (check,) = run_checks(cfg, names=("ray",), cwd=tmp_path)
    assert check.status == FAIL and "rejected this Ray auth token" in check.detail

    monkeypatch.delenv("RAY_AUTH_TOKEN")  # token mode, but no token anywhere
    (check,) = run_checks(cfg, names=("ray",), cwd=tmp_path)
    assert check.status == FAIL and "RAY_AUTH_MODE=token but no token" in check.detail

    token_file = tmp_path / "token"
    token_file.write_text(live.ray_token)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))  # the file form works too
    (check,) = run_checks(cfg, names=("ray",), cwd=tmp_path)
    assert check.status == OK, check


def test_dvc_default_remote(dvc_repo, monkeypatch):
    cfg = load_config(PARAMS)
    monkeypatch.delenv("P2P_DVC_REMOTE_URL", raising=False)
    (check,) = run_checks(cfg, names=("dvc",), cwd=dvc_repo)
    assert check.status == FAIL and "no DVC remote configured" in check.detail

    dvc = [str(BIN / "dvc"), "remote", "add"]
    subprocess.run([*dvc, "-d", "local", "storage"], cwd=dvc_repo, check=True)
    subprocess.run([*dvc, "s3", "s3://p2p-unused-bucket/dvc"], cwd=dvc_repo, check=True)
    (check,) = run_checks(cfg, names=("dvc",), cwd=dvc_repo / ".dvc")  # found from a subdir
    assert check.status == OK, check
    assert f"remote local {dvc_repo}/storage" in check.detail  # relative to where it was added
    assert "also configured: s3 s3://p2p-unused-bucket/dvc" in check.detail  # not contacted

    (dvc_repo / ".dvc").chmod(0o500)  # root ignores modes: only meaningful for other users
    try:
        (check,) = run_checks(cfg, names=("dvc",), cwd=dvc_repo)
    finally:
        (dvc_repo / ".dvc").chmod(0o755)
    if os.geteuid() != 0:
        assert check.status == FAIL and "not writable" in check.detail


def test_mlflow_sqlite_states(tmp_path, monkeypatch):
    cfg = load_config(PARAMS)

    def mlflow_check(uri: str):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        (check,) = run_checks(cfg, names=("mlflow",), cwd=tmp_path)
        return check

    check = mlflow_check("sqlite:///mlflow.db")  # relative to cwd, not created yet
    assert check.status == OK and "will be created" in check.detail
    assert not (tmp_path / "mlflow.db").exists()  # doctor creates nothing

    check = mlflow_check(f"sqlite:///{tmp_path}/missing/dir/mlflow.db")
    assert check.status == FAIL and "does not exist" in check.detail

    (tmp_path / "notes.db").write_bytes(b"not a database at all, just text" * 100)
    check = mlflow_check(f"sqlite:///{tmp_path}/notes.db")
    assert check.status == FAIL

    db = tmp_path / "real.db"
    code = (
        "import mlflow, sys; mlflow.set_tracking_uri(sys.argv[1]); "
        "mlflow.MlflowClient().create_registered_model('m1'); mlflow.set_experiment('e1')"
    )
    subprocess.run([sys.executable, "-c", code, f"sqlite:///{db}"], check=True, timeout=300)
    check = mlflow_check(f"sqlite:///{db}")
    assert check.status == OK
    assert "2 experiments, 1 registered models" in check.detail  # Default + e1


def test_settings_are_redacted(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-key")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIASECRET")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "f" * 64)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://mlflow:pg-secret@db:5432/mlflow")
    text = report(load_config(PARAMS), [], as_json=False) + report(
        load_config(PARAMS), [], as_json=True
    )
    for secret in ("very-secret-key", "AKIASECRET", "f" * 64, "pg-secret"):
        assert secret not in text
    assert "postgresql://mlflow:***@db:5432/mlflow" in text


def test_uri_credentials_redacted_in_checks_and_settings(tmp_path, monkeypatch):
    """Passwords and bare tokens in URIs never reach doctor's output (p2p.settings.redact_uri,
    the one redaction shared with the registry and the CLI)."""
    cfg = load_config(PARAMS)
    port = free_port()  # nothing listens there
    for uri, shown in (
        (f"http://u:p@ss/w0rd@127.0.0.1:{port}", f"http://u:***@127.0.0.1:{port}"),
        (f"http://T0KEN-abc@127.0.0.1:{port}", f"http://***@127.0.0.1:{port}"),
    ):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        (check,) = run_checks(cfg, names=("mlflow",), cwd=tmp_path)
        text = check.line() + report(cfg, [check]) + report(cfg, [check], as_json=True)
        assert check.status == FAIL and check.target == shown
        assert "w0rd" not in text and "p@ss" not in text and "T0KEN" not in text
