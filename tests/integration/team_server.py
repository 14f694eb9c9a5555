"""A local "team server" without Docker: the services of infra/compose as plain processes.

`team_server(...)` starts, on 127.0.0.1 and free ports:
- an MLflow tracking server (sqlite backend, artifacts proxied to `s3://BUCKET/mlflow` on the
  given S3 endpoint, as `--artifacts-destination` does with MinIO in compose),
- a Prefect server (`prefect server start`, its own PREFECT_HOME),
- a Ray head (`ray start --head`, with the dashboard: Jobs API and Ray Client server) plus
  `ray_nodes - 1` worker nodes (`ray start --address`), with Ray token authentication on and one
  shared token (what a multi-node Ray 2.60 cluster needs),
and yields the environment a client uses to reach them: the same variable names as production
(AWS_ENDPOINT_URL, MLFLOW_TRACKING_URI, PREFECT_API_URL, RAY_ADDRESS, P2P_DVC_REMOTE_URL, plus
RAY_AUTH_MODE/RAY_AUTH_TOKEN). Every process runs in its own process group and is stopped by
group id on exit (never `ray stop`, which would kill other people's Ray processes on the machine).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent  # the venv's console scripts: mlflow, prefect, ray, p2p
START_TIMEOUT_S = 240.0  # a cold 2-core machine migrates the Prefect and MLflow databases slowly


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class TeamServer:
    """What `team_server` started; `env` is what clients export (production variable names)."""

    workdir: Path
    env: dict[str, str]
    bucket: str = ""
    mlflow_uri: str = ""
    prefect_api_url: str = ""
    ray_address: str = ""  # host:port of the GCS (driver mode, RAY_ADDRESS)
    ray_jobs_url: str = ""  # http://host:port of the dashboard (Ray Jobs API)
    ray_client_address: str = ""  # ray://host:port (Ray Client)
    ray_token: str = ""
    ray_nodes: int = 0
    ray_tmp: Path | None = None  # the nodes' temp dirs (n0 = head, n1...), removed on exit
    logs: dict[str, Path] = field(default_factory=dict)

    def client_env(self, **extra: str) -> dict[str, str]:
        """os.environ + the team-server variables (+ extra): for CLI subprocesses."""
        return {**os.environ, **self.env, **extra}

    def log_tail(self, n: int = 40) -> str:
        out = []
        for name, path in self.logs.items():
            lines = path.read_text(errors="replace").splitlines()[-n:] if path.exists() else []
            out.append(f"--- {name} ({path})\n" + "\n".join(lines))
        return "\n".join(out)


class ProcessGroups:
    """Children started in their own sessions, stopped by process-group id."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        with open(log, "ab") as out:
            self.procs[name] = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def check_alive(self, logs: dict[str, Path]) -> None:
        for name in self.exited():
            tail = logs[name].read_text(errors="replace")[-3000:]
            code = self.procs[name].returncode
            raise RuntimeError(f"{name} exited with {code} while starting:\n{tail}")

    def exited(self) -> list[str]:
        return [name for name, p in self.procs.items() if p.poll() is not None]

    def kill(self, name: str) -> None:
        """SIGKILL one child's whole group (a failed `ray start` may leave its raylet)."""
        p = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every group, wait for its members to go, then SIGKILL what is left."""
        for p in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for p in self.procs.values():
            while _group_alive(p.pid) and time.monotonic() < deadline:
                p.poll()
                time.sleep(0.2)
        for p in self.procs.values():
            if _group_alive(p.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
        deadline = time.monotonic() + 10
        while any(_group_alive(p.pid) for p in self.procs.values()):
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    """Any non-zombie process left in process group `pgid` (zombies wait for their reaper)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state ppid pgrp ...
            return True
    return False


def _http_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers or {}), timeout=3
        ) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _ray_node_argv(temp_dir: Path, cpus: int) -> list[str]:
    """Options every local Ray node needs so several can share one machine."""
    return [
        "--block",
        "--node-ip-address",
        "127.0.0.1",  # Ray swaps loopback for the host's address; this keeps it on one host
        "--num-cpus",
        str(cpus),
        "--temp-dir",
        str(temp_dir),
        "--dashboard-agent-listen-port",
        str(free_port()),
        "--dashboard-agent-grpc-port",
        str(free_port()),
        "--runtime-env-agent-port",
        str(free_port()),
        "--metrics-export-port",
        str(free_port()),
        "--disable-usage-stats",
    ]


@contextlib.contextmanager
def team_server(
    workdir: str | os.PathLike,
    *,
    s3_endpoint: str,
    bucket: str,
    ray_nodes: int = 2,
    cpus_per_node: int = 1,
    services: tuple[str, ...] = ("mlflow", "prefect", "ray"),
) -> Iterator[TeamServer]:
    """Start the team-server processes and yield how to reach them; stop them all on exit.

    Args:
        workdir: where databases, homes and logs go.
        s3_endpoint: the S3 endpoint (moto server) that plays MinIO; AWS_* must be exported.
        bucket: an existing bucket: MLflow artifacts under mlflow/, DVC remote under dvc/.
        ray_nodes: Ray nodes: the head plus ray_nodes - 1 workers.
        cpus_per_node: logical CPUs each Ray node advertises.
        services: the subset of "mlflow", "prefect", "ray" to start.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    logs_dir = workdir / "logs"
    logs_dir.mkdir(exist_ok=True)
    base_env = {
        **os.environ,
        "AWS_ENDPOINT_URL": s3_endpoint,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    for k in ("RAY_ADDRESS", "PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        base_env.pop(k, None)
    server = TeamServer(
        workdir=workdir,
        bucket=bucket,
        env={
            "AWS_ENDPOINT_URL": s3_endpoint,
            "P2P_DVC_REMOTE_URL": f"s3://{bucket}/dvc",
        },
    )
    for k in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_DEFAULT_REGION",
    ):
        if os.environ.get(k):
            server.env[k] = os.environ[k]
    procs = ProcessGroups()
    # Ray's unix sockets must stay under ~107 characters: a short temp dir, not pytest's tmp_path.
    ray_tmp = Path(tempfile.mkdtemp(prefix="p2p-ray-", dir="/tmp"))
    server.ray_tmp = ray_tmp
    try:
        waits: dict[str, str] = {}
        if "mlflow" in services:
            port = free_port()
            server.mlflow_uri = f"http://127.0.0.1:{port}"
            server.logs["mlflow"] = logs_dir / "mlflow.log"
            argv = [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{workdir / 'mlflow.db'}",
                "--artifacts-destination",
                f"s3://{bucket}/mlflow",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ]
            procs.start("mlflow", argv, base_env, server.logs["mlflow"])
            server.env["MLFLOW_TRACKING_URI"] = server.mlflow_uri
            waits["mlflow"] = f"{server.mlflow_uri}/health"
        if "prefect" in services:
            port = free_port()
            server.prefect_api_url = f"http://127.0.0.1:{port}/api"
            server.logs["prefect"] = logs_dir / "prefect.log"
            env = {**base_env, "PREFECT_HOME": str(workdir / "prefect-server")}
            argv = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1"]
            argv += ["--port", str(port), "--no-ui"]
            procs.start("prefect", argv, env, server.logs["prefect"])
            server.env["PREFECT_API_URL"] = server.prefect_api_url
            waits["prefect"] = f"{server.prefect_api_url}/health"
        start_worker = None
        if "ray" in services:
            start_worker = _start_ray(
                server, procs, base_env, ray_tmp, ray_nodes, cpus_per_node, logs_dir
            )
            waits["ray-dashboard"] = f"{server.ray_jobs_url}/api/version"
        _wait(server, procs, waits, ray_nodes if "ray" in services else 0, start_worker)
        yield server
    finally:
        procs.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _start_ray(
    server: TeamServer,
    procs: ProcessGroups,
    base_env: dict[str, str],
    ray_tmp: Path,
    nodes: int,
    cpus: int,
    logs_dir: Path,
) -> Callable[[int], None]:
    """Start the head; return how to start worker node i (`_wait` starts them once the head
    and the other services are up). Token auth on, one shared token."""
    token = secrets.token_hex(32)  # what `ray get-auth-token --generate` makes
    env = {
        **base_env,
        "HOME": str(server.workdir / "ray-home"),  # keep ~/.ray/auth_token out of the real home
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        # Job entrypoints (`p2p train ...`) run in the head's environment: the venv's scripts
        # must be on its PATH, as they are in the p2p images.
        "PATH": f"{BIN}{os.pathsep}{base_env.get('PATH', '')}",
    }
    server.ray_token = token
    server.ray_nodes = nodes
    server.logs["ray-head"] = logs_dir / "ray-head.log"
    dashboard_port, client_port = free_port(), free_port()
    server.ray_jobs_url = f"http://127.0.0.1:{dashboard_port}"
    server.ray_client_address = f"ray://127.0.0.1:{client_port}"
    argv = [str(BIN / "ray"), "start", "--head", "--port", str(free_port())]
    argv += ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1"]
    argv += ["--dashboard-port", str(dashboard_port), "--ray-client-server-port", str(client_port)]
    # One temp dir per node, as on separate machines: nodes sharing one would delete each
    # other's runtime_env files (a job's working_dir) when they clean up.
    argv += _ray_node_argv(ray_tmp / "n0", cpus)
    procs.start("ray-head", argv, env, server.logs["ray-head"])
    session_logs = ray_tmp / "n0" / "session_latest" / "logs"
    server.logs["ray-client-server"] = session_logs / "ray_client_server.err"  # shown on failure
    server.logs["ray-jobs"] = session_logs / "dashboard_JobHead.log"
    deadline = time.monotonic() + START_TIMEOUT_S
    address = None
    while address is None:
        procs.check_alive(server.logs)
        m = re.search(r"ray start --address='([^']+)'", server.logs["ray-head"].read_text())
        address = m.group(1) if m else None
        if address is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"Ray head did not start:\n{server.log_tail()}")
            time.sleep(0.5)
    server.ray_address = address
    server.env.update({"RAY_ADDRESS": address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})

    def start_worker(i: int) -> None:
        name = f"ray-worker{i}"
        server.logs[name] = logs_dir / f"{name}.log"
        argv = [str(BIN / "ray"), "start", "--address", address]
        argv += _ray_node_argv(ray_tmp / f"n{i}", cpus)
        procs.start(name, argv, env, server.logs[name])

    return start_worker


# `ray start` gives its raylet a fixed 30 s to register with the GCS (ray/_private/node.py) and
# exits 1 after it; on a busy 2-core machine that happened to a worker node once in CI.
RAY_REGISTRATION_TIMEOUT = "The current node timed out during startup"
WORKER_START_TRIES = 3


def _wait(
    server: TeamServer,
    procs: ProcessGroups,
    urls: dict[str, str],
    ray_nodes: int,
    start_worker: Callable[[int], None] | None = None,
) -> None:
    """Wait for every service; Ray worker nodes start once the head has registered and the
    other services answer (fewer processes starting at once), and a worker that hit Ray's
    registration timeout is started again."""
    from p2p.doctor import probe_gcs

    deadline = time.monotonic() + START_TIMEOUT_S
    pending = dict(urls)
    if ray_nodes:
        pending["ray"] = ""
    ray_env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": server.ray_token}
    tries: dict[int, int] = {}  # worker node -> `ray start` attempts
    while pending:
        for name in procs.exited():
            i = int(name.removeprefix("ray-worker")) if name.startswith("ray-worker") else 0
            log = server.logs[name].read_text(errors="replace")
            if (
                i
                and start_worker
                and RAY_REGISTRATION_TIMEOUT in log
                and tries[i] < WORKER_START_TRIES
            ):
                procs.kill(name)
                tries[i] += 1
                start_worker(i)
        procs.check_alive(server.logs)
        for name, url in list(pending.items()):
            if name == "ray":
                nodes = probe_gcs(server.ray_address, 5.0, env=ray_env).get("nodes")
                if nodes == ray_nodes:
                    del pending[name]
                elif nodes == 1 and not tries and start_worker and pending.keys() == {"ray"}:
                    for i in range(1, ray_nodes):
                        tries[i] = 1
                        start_worker(i)
            elif name == "ray-dashboard":  # token auth covers the dashboard's API too
                if _http_ok(url, {"Authorization": f"Bearer {server.ray_token}"}):
                    del pending[name]
            elif _http_ok(url):
                del pending[name]
        if pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"not up: {sorted(pending)}\n{server.log_tail()}")
            time.sleep(1.0)
