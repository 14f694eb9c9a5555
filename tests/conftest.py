"""Shared fixtures. Real components, local only: a moto S3 server over HTTP, sqlite MLflow in a
temp dir, an isolated Prefect home. No network, no GPU, no Docker, no cloud account.

Where a test goes (the folder says how it runs; the marks follow the folders):

    tests/unit         fast, in-process tests; `pytest -m "not slow"` (make test-fast) runs them.
                       None may be marked slow (collection fails if one is).
    tests/integration  real Ray / S3 (moto) / MLflow / Prefect / DVC, torch.compile, or
                       full-size data: every test here is marked `slow` by
                       tests/integration/conftest.py.
    tests/gpu          needs CUDA: every test here is `gpu`-marked, and skips where there is
                       no CUDA. None may sit in tests/unit (collection fails if one does).

Helpers shared by several test files are modules in tests/ (on the path: pyproject's pytest
`pythonpath`): data_fixtures.py, download_fixtures.py, step_paths.py.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

# Isolate every tool's home before anything imports them.
_SESSION_TMP = Path(os.environ.get("P2P_TEST_TMP", "/tmp")) / f"p2p-tests-{os.getpid()}"
_SESSION_TMP.mkdir(parents=True, exist_ok=True)
os.environ.setdefault("PREFECT_HOME", str(_SESSION_TMP / "prefect"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ["DO_NOT_TRACK"] = "1"  # prefect/dvc telemetry off (no network here)
os.environ["DVC_NO_ANALYTICS"] = "1"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{_SESSION_TMP / 'mlflow.db'}")
for _k in ("AWS_PROFILE", "RAY_ADDRESS", "PREFECT_API_URL"):
    os.environ.pop(_k, None)
# The environment's commands (`p2p`, `dvc`, `ray`, `mlflow`) for subprocesses and DVC stages, as
# in an activated venv: `make test` runs .venv/bin/python without activating it.
_BIN = str(Path(sys.executable).parent)
if _BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _BIN + os.pathsep + os.environ.get("PATH", "")


UNIT = Path(__file__).parent / "unit"


def pytest_collection_modifyitems(config, items):
    """No slow or gpu test in tests/unit (module docstring); `gpu` tests run only where CUDA
    is available (the lent GPU machine)."""
    for mark, home in (("slow", "tests/integration"), ("gpu", "tests/gpu")):
        misplaced = [i.nodeid for i in items if mark in i.keywords and UNIT in Path(i.path).parents]
        if misplaced:
            raise pytest.UsageError(
                f"{misplaced[0]}: marked {mark} but in tests/unit; move it to {home}"
            )
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 HTTP endpoint (moto) for the whole session; exports AWS_ENDPOINT_URL so boto3,
    s3fs, DVC, MLflow and pyarrow (Ray storage) all talk to it, in this process and children."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in _AWS_ENV}
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


_AWS_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
)


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket on the session's moto server; returns its name."""
    import boto3

    name = f"p2p-test-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


@pytest.fixture
def tiny_cfg():
    """A config small enough for CPU tests: 64x64 crops, a 6-level U-Net with 8 base channels."""
    from data_fixtures import TINY

    from p2p.config import load_config

    return load_config(None, TINY)


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (tiny convolutions on a shared 2-core machine)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def loader_exit_codes(monkeypatch) -> dict[int, int]:
    """Every DataLoader worker's exit status, by pid, once its loader has shut it down."""
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    codes: dict[int, int] = {}
    shutdown = _MultiProcessingDataLoaderIter._shutdown_workers

    def recording_shutdown(self):  # torch's shutdown runs more than once per loader
        shutdown(self)
        codes.update((w.pid, w.exitcode) for w in self._workers)

    monkeypatch.setattr(_MultiProcessingDataLoaderIter, "_shutdown_workers", recording_shutdown)
    return codes
