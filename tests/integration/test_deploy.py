"""The scheduled retrain deployment: the `serve` entry point's deployment (pipelines/deploy.py)
against the session's Prefect test API, then a real `prefect server start` (the only kind that
runs the scheduler service) turning the cron schedule into scheduled runs, and prefect.yaml
deployed to it with `prefect deploy --all`."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_flows import start_prefect_harness

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prefect_api(pytestconfig) -> str:
    return start_prefect_harness(pytestconfig)  # the same harness as test_flows.py


def _deployment(name: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)


def test_retrain_deployment_has_its_cron_schedule(prefect_api):
    from pipelines.deploy import build_deployment

    deployment = build_deployment(
        "retrain-test",
        cron="15 4 * * 2",
        params="params.yaml",
        overrides=["data.shards=s3://bucket/shards/demo"],
        refresh=True,
        timezone="Europe/Paris",
    )
    deployment_id = deployment.apply()

    dep = _deployment("retrain_flow/retrain-test")
    assert dep.id == deployment_id
    [schedule] = dep.schedules
    assert schedule.active
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("15 4 * * 2", "Europe/Paris")
    assert dep.parameters == {
        "params": "params.yaml",
        "refresh": True,
        "overrides": ["data.shards=s3://bucket/shards/demo"],
    }
    assert set(dep.tags) == {"p2p", "retrain"}
    assert dep.global_concurrency_limit is not None and dep.global_concurrency_limit.limit == 1
    assert dep.entrypoint.endswith("retrain_flow.py:retrain_flow")

    # applying again updates the same deployment (no duplicate), e.g. with a new schedule
    again = build_deployment("retrain-test", cron="0 5 * * *", params="params.yaml").apply()
    assert again == deployment_id
    [schedule] = _deployment("retrain_flow/retrain-test").schedules
    assert schedule.schedule.cron == "0 5 * * *"


def test_deploy_entry_point_needs_a_server(monkeypatch, capsys):
    from pipelines.deploy import main

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(SystemExit) as e:
        main(["--apply-only"])
    assert e.value.code == 2 and "prefect server start" in capsys.readouterr().err


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real `prefect server start` (API + scheduler service) on a free port, own sqlite DB."""
    import httpx

    tmp_path = tmp_path_factory.mktemp("prefect-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
        + ["--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "prefect server did not start in 120 s"
            time.sleep(1)
        yield url, tmp_path / "server.log"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_local_server_schedules_runs_of_the_retrain_deployment(prefect_server):
    """`prefect server start`'s scheduler turns the cron schedule into scheduled flow runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pipelines.deploy import build_deployment

    url, server_log = prefect_server
    with temporary_settings({PREFECT_API_URL: url}):
        deployment_id = build_deployment("retrain-scheduled", cron="0 3 * * 1").apply()
        deadline = time.monotonic() + 90
        while True:
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                    sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                    limit=10,
                )
            if runs or time.monotonic() > deadline:
                break
            time.sleep(2)
    assert runs, "no scheduled runs after 90 s; server log:\n" + server_log.read_text()[-3000:]
    for run in runs:
        assert run.state.is_scheduled()
        start = run.expected_start_time
        assert (start.weekday(), start.hour, start.minute) == (0, 3, 0)  # Mondays 03:00 UTC


def test_prefect_yaml_deploys_the_scheduled_retrain(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url, _ = prefect_server

    # prefect.yaml and the flow code in a scratch directory: `prefect deploy` records the
    # directory it runs in, which must not be the real checkout here
    work = tmp_path / "project"
    work.mkdir()
    shutil.copyfile(PROJECT / "prefect.yaml", work / "prefect.yaml")
    shutil.copytree(
        PROJECT / "pipelines", work / "pipelines", ignore=shutil.ignore_patterns("__pycache__")
    )
    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="p2p-process", type="process"), overwrite=True)
    env = {**os.environ, "PREFECT_API_URL": url}
    out = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr

    with temporary_settings({PREFECT_API_URL: url}):
        dep = _deployment("retrain_flow/retrain")
    [schedule] = dep.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 3 * * 1", "UTC")
    assert dep.work_pool_name == "p2p-process"
    assert dep.parameters == {"params": "params.yaml", "refresh": False}
    assert dep.global_concurrency_limit is not None and dep.global_concurrency_limit.limit == 1
    assert dep.entrypoint == "pipelines/retrain_flow.py:retrain_flow"
    [pull] = dep.pull_steps
    assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == str(
        work.resolve()
    )
