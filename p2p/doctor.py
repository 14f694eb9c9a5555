"""`p2p doctor`: what the settings point at, and whether each endpoint answers.

One check per service, run concurrently, each bounded by a short timeout:

| check   | what is tried                                                               |
|---------|-----------------------------------------------------------------------------|
| s3      | list buckets at AWS_ENDPOINT_URL; head every bucket the settings/params use |
| mlflow  | sqlite: the file (or its directory) is writable, tables present;           |
|         | http(s): `/health`, the registry API and the proxied artifact store        |
| prefect | PREFECT_API_URL `/health` and server version, or "ephemeral mode"          |
| ray     | RAY_ADDRESS / resources.address: GCS (nodes, version, token auth), Ray      |
|         | Client port, or dashboard `/api/version`; or "local Ray will be started"   |
| dvc     | the remote pushes go to (P2P_DVC_REMOTE_URL, else the default) answers     |
| gpu     | torch.cuda: devices here, against resources.use_gpu                        |

A check ends OK (verified), SKIP (not used by these settings) or FAIL (with the reason: connection
refused, timed out, bucket missing, auth required, version mismatch...). Secrets are never
printed: credentials show as `***`, tokens as set/unset.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from p2p.config import ExperimentConfig
from p2p.settings import ENV_VARS, Settings, redact, redact_uri

OK, SKIP, FAIL = "OK", "SKIP", "FAIL"
DEFAULT_TIMEOUT = 5.0  # seconds per network call


@dataclass(frozen=True)
class Check:
    """The outcome of one check: status OK | SKIP | FAIL, what was checked, and why."""

    name: str
    status: str
    target: str
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def line(self) -> str:
        """`OK   s3        http://127.0.0.1:5000 (3 buckets)` / `FAIL mlflow    URL: reason`."""
        head = f"{self.status:<4} {self.name:<9} {self.target}"
        if not self.detail:
            return head
        return f"{head}: {self.detail}" if self.failed else f"{head} ({self.detail})"


@dataclass(frozen=True)
class Context:
    """What every check reads: the environment settings, the resolved params, the limits."""

    settings: Settings
    cfg: ExperimentConfig
    timeout: float
    cwd: Path


class _Unreachable(Exception):
    """An endpoint did not answer; the message is the specific reason."""


# ----------------------------------------------------------------------------- network helpers


def _tcp(host: str, port: int, timeout: float) -> None:
    """Raise _Unreachable with a specific reason unless host:port accepts a TCP connection."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except ConnectionRefusedError:
        raise _Unreachable("connection refused") from None
    except TimeoutError:
        raise _Unreachable(f"no answer within {timeout:g}s") from None
    except socket.gaierror:
        raise _Unreachable(f"cannot resolve host {host!r}") from None
    except OSError as e:
        raise _Unreachable(e.strerror or str(e)) from None


def _host_port(url: str, default_port: int | None = None) -> tuple[str, int]:
    u = urllib.parse.urlsplit(url if "://" in url else f"tcp://{url}")
    if not u.hostname:
        raise _Unreachable(f"no host in {redact_uri(url)!r}")
    try:
        port = u.port
    except ValueError:
        raise _Unreachable(f"bad port in {redact_uri(url)!r}") from None
    port = port or default_port or (443 if u.scheme == "https" else 80)
    return u.hostname, port


def _http_get(url: str, timeout: float, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET url -> (status, body); HTTP errors are returned, network errors raise _Unreachable."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(65536)
    except urllib.error.HTTPError as e:
        return e.code, e.read(65536)
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, ConnectionRefusedError):
            raise _Unreachable("connection refused") from None
        if isinstance(reason, TimeoutError | socket.timeout):
            raise _Unreachable(f"no answer within {timeout:g}s") from None
        raise _Unreachable(str(reason)) from None
    except TimeoutError:
        raise _Unreachable(f"no answer within {timeout:g}s") from None
    except OSError as e:
        raise _Unreachable(e.strerror or str(e)) from None


def _reachable(url: str, timeout: float, default_port: int | None = None) -> None:
    host, port = _host_port(url, default_port)
    _tcp(host, port, timeout)


def _short(body: bytes, n: int = 160) -> str:
    text = body.decode("utf-8", "replace").strip()
    try:  # MLflow / Prefect errors are JSON with a message
        data = json.loads(text)
        if isinstance(data, dict):
            text = str(data.get("message") or data.get("detail") or data)
    except ValueError:
        pass
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ----------------------------------------------------------------------------- s3


def _s3_urls(ctx: Context) -> dict[str, str]:
    """Where the settings and params use S3: {setting name: s3:// URL}."""
    candidates = {
        "P2P_DVC_REMOTE_URL": ctx.settings.dvc_remote_url or "",
        "data.shards": ctx.cfg.data.shards,
        "train.storage_path": ctx.cfg.train.storage_path,
    }
    return {k: v for k, v in candidates.items() if v.startswith("s3://")}


def _bucket(url: str) -> str:
    return url[len("s3://") :].split("/", 1)[0]


def _s3_error(e: Exception) -> str:
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(e, NoCredentialsError):
        return "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        code = str(err.get("Code", ""))
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"):
            return f"credentials rejected ({code})"
        if code in ("AccessDenied", "403"):
            return "access denied"
        return f"{code or 'error'}: {err.get('Message') or e}"
    return " ".join(str(e).split())


def _head_buckets(client: Any, urls: dict[str, str]) -> tuple[list[str], list[str]]:
    """-> (ok descriptions, failure reasons) for the buckets behind `urls`."""
    from botocore.exceptions import ClientError

    ok, bad = [], []
    by_bucket: dict[str, list[str]] = {}
    for what, url in urls.items():
        by_bucket.setdefault(_bucket(url), []).append(what)
    for bucket, users in sorted(by_bucket.items()):
        try:
            client.head_bucket(Bucket=bucket)
            ok.append(f"{bucket} ok")
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                bad.append(f"bucket {bucket!r} ({', '.join(users)}) does not exist")
            else:
                bad.append(f"bucket {bucket!r} ({', '.join(users)}): {_s3_error(e)}")
        except Exception as e:  # noqa: BLE001 - report any client failure as the reason
            bad.append(f"bucket {bucket!r}: {_s3_error(e)}")
    return ok, bad


def check_s3(ctx: Context) -> Check:
    endpoint = ctx.settings.s3_endpoint
    urls = _s3_urls(ctx)
    target = endpoint or "AWS S3"
    if not endpoint and not urls:
        return Check("s3", SKIP, "not used", "no AWS_ENDPOINT_URL and no s3:// URL in use")
    try:
        if endpoint:
            _reachable(endpoint, ctx.timeout)
    except _Unreachable as e:
        return Check("s3", FAIL, target, str(e))
    from p2p.data.storage import s3_client

    client = s3_client(max_attempts=1)
    parts = []
    try:
        n = len(client.list_buckets().get("Buckets", []))
        parts.append(f"{n} bucket{'s' if n != 1 else ''}")
    except Exception as e:  # noqa: BLE001
        reason = _s3_error(e)
        if reason != "access denied" or not urls:  # a scoped key may not list, yet use buckets
            return Check("s3", FAIL, target, f"list buckets: {reason}")
        parts.append("listing denied")
    ok, bad = _head_buckets(client, urls)
    if bad:
        return Check("s3", FAIL, target, "; ".join(bad))
    return Check("s3", OK, target, ", ".join(parts + ok))


# ----------------------------------------------------------------------------- mlflow


def _sqlite_path(uri: str) -> Path | None:
    rest = uri[len("sqlite://") :]
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        return None
    return Path(rest[1:])  # sqlite:///rel.db -> rel.db, sqlite:////abs.db -> /abs.db


def _check_sqlite(uri: str, cwd: Path) -> tuple[str, str]:
    path = _sqlite_path(uri)
    if path is None:
        return SKIP, "in-memory database"
    path = path if path.is_absolute() else cwd / path
    if not path.exists():
        parent = path.parent
        if not parent.is_dir():
            return FAIL, f"directory {parent} does not exist"
        if not os.access(parent, os.W_OK):
            return FAIL, f"directory {parent} is not writable"
        return OK, "sqlite, will be created on first use"
    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        return FAIL, f"{path} is not writable"
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
        try:
            tables = {
                r[0] for r in con.execute("select name from sqlite_master where type='table'")
            }
            if not tables:
                return OK, "sqlite, empty: initialised on first use"
            if "experiments" not in tables:
                return FAIL, f"{path} is not an MLflow database (no experiments table)"
            n_exp = con.execute("select count(*) from experiments").fetchone()[0]
            if "registered_models" not in tables:
                return FAIL, f"{path}: no registered_models table (registry unavailable)"
            n_models = con.execute("select count(*) from registered_models").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error as e:
        return FAIL, f"{path}: {e}"
    return OK, f"sqlite, {n_exp} experiments, {n_models} registered models"


def _mlflow_headers() -> dict[str, str]:
    env = os.environ
    if env.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {env['MLFLOW_TRACKING_TOKEN']}"}
    if env.get("MLFLOW_TRACKING_USERNAME"):
        return {
            "Authorization": _basic(
                env["MLFLOW_TRACKING_USERNAME"], env.get("MLFLOW_TRACKING_PASSWORD", "")
            )
        }
    return {}


def _check_mlflow_http(uri: str, timeout: float) -> tuple[str, str]:
    base = uri.rstrip("/")
    headers = _mlflow_headers()
    _reachable(base, timeout)
    status, body = _http_get(f"{base}/health", timeout, headers)
    if status in (401, 403):
        return FAIL, (
            "authentication required: set MLFLOW_TRACKING_USERNAME/PASSWORD or "
            "MLFLOW_TRACKING_TOKEN"
            if status == 401
            else "permission denied"
        )
    if status != 200:
        return FAIL, f"/health answered HTTP {status}: {_short(body)} (not an MLflow server?)"
    status, body = _http_get(f"{base}/version", timeout, headers)
    version = body.decode(errors="replace").strip() if status == 200 else "?"
    status, body = _http_get(
        f"{base}/api/2.0/mlflow/registered-models/search?max_results=1", timeout, headers
    )
    if status != 200:
        return FAIL, f"registry API answered HTTP {status}: {_short(body)}"
    # The proxied artifact store (`--artifacts-destination`): listing its root goes to S3.
    status, body = _http_get(f"{base}/api/2.0/mlflow-artifacts/artifacts", timeout * 3, headers)
    if status == 200:
        artifacts = "artifacts proxied"
    elif status in (404, 503):
        artifacts = "artifacts not proxied: clients write to the artifact store directly"
    else:
        return FAIL, f"artifact store behind the server failed (HTTP {status}): {_short(body)}"
    return OK, f"server {version}, registry ok, {artifacts}"


def _check_tracking(uri: str, ctx: Context) -> tuple[str, str]:
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme == "sqlite":
        return _check_sqlite(uri, ctx.cwd)
    if scheme in ("http", "https"):
        return _check_mlflow_http(uri, ctx.timeout)
    if scheme.split("+")[0] in ("postgresql", "postgres", "mysql", "mssql"):
        default = {"mysql": 3306, "mssql": 1433}.get(scheme.split("+")[0], 5432)
        _reachable(
            uri.split("://", 1)[-1].rsplit("@", 1)[-1].split("/", 1)[0], ctx.timeout, default
        )
        return OK, "database port open (schema not checked)"
    if scheme in ("file", "") or uri.startswith(("/", ".")):
        return FAIL, "file store is in maintenance mode in MLflow 3: use sqlite:///mlflow.db"
    return SKIP, f"{scheme} tracking URIs are not checked"


def check_mlflow(ctx: Context) -> Check:
    uri = ctx.settings.mlflow_tracking_uri
    target = redact_uri(uri)
    try:
        status, detail = _check_tracking(uri, ctx)
        registry = os.environ.get("MLFLOW_REGISTRY_URI")
        if status != FAIL and registry and registry != uri:
            r_status, r_detail = _check_tracking(registry, ctx)
            if r_status == FAIL:
                return Check("mlflow", FAIL, target, f"registry {redact_uri(registry)}: {r_detail}")
            detail += f"; registry {redact_uri(registry)}: {r_detail}"
    except _Unreachable as e:
        return Check("mlflow", FAIL, target, str(e))
    return Check("mlflow", status, target, detail)


# ----------------------------------------------------------------------------- prefect


def _prefect_api_url(settings: Settings) -> tuple[str | None, str]:
    """The API URL flows will use: the environment, else the active Prefect profile."""
    if settings.prefect_api_url:
        return settings.prefect_api_url, "PREFECT_API_URL"
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return (str(url), "Prefect profile") if url else (None, "")


def check_prefect(ctx: Context) -> Check:
    url, source = _prefect_api_url(ctx.settings)
    if not url:
        return Check("prefect", OK, "ephemeral mode (no server)")
    base = url.rstrip("/")
    env = os.environ
    headers = {}
    if env.get("PREFECT_API_KEY"):
        headers["Authorization"] = f"Bearer {env['PREFECT_API_KEY']}"
    elif env.get("PREFECT_API_AUTH_STRING"):
        user, _, password = env["PREFECT_API_AUTH_STRING"].partition(":")
        headers["Authorization"] = _basic(user, password)
    try:
        _reachable(base, ctx.timeout)
        status, body = _http_get(f"{base}/health", ctx.timeout, headers)
    except _Unreachable as e:
        return Check("prefect", FAIL, base, str(e))
    if status != 200 or body.strip() != b"true":
        hint = "" if base.endswith("/api") else " (the URL usually ends in /api)"
        return Check("prefect", FAIL, base, f"/health answered HTTP {status}{hint}")
    try:  # /health is open to probes; the API itself may need the server's auth string
        status, body = _http_get(f"{base}/admin/version", ctx.timeout, headers)
    except _Unreachable as e:
        return Check("prefect", FAIL, base, f"/admin/version: {e}")
    if status == 401:
        reason = "rejected" if headers else "required: set PREFECT_API_AUTH_STRING"
        return Check("prefect", FAIL, base, f"authentication {reason}")
    if status != 200:
        return Check("prefect", FAIL, base, f"/admin/version answered HTTP {status}")
    server = json.loads(body)
    client = metadata.version("prefect")
    if str(server).split(".")[0] != client.split(".")[0]:
        return Check("prefect", FAIL, base, f"server {server} vs client {client}: major differs")
    suffix = "" if source == "PREFECT_API_URL" else f", from the {source}"
    return Check("prefect", OK, base, f"server {server}{suffix}")


# ----------------------------------------------------------------------------- ray

# Runs in a child process: a GCS client holds process-wide auth state and blocks on dead
# addresses, so a subprocess keeps doctor isolated and its timeout enforceable.
_GCS_PROBE = """
import json, sys
address, timeout, auto = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "auto"
if auto:  # like ray.init("auto"): a local cluster found automatically picks up a local token
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
try:
    from ray._raylet import GcsClient
    from ray._common.usage import usage_lib
    from ray.core.generated import gcs_pb2
    client = GcsClient(address=address)
    meta = usage_lib.get_cluster_metadata(client) or {}
    nodes = [n for n in client.get_all_node_info(timeout=timeout).values()
             if n.state == gcs_pb2.GcsNodeInfo.ALIVE]
    total = {}
    for n in nodes:
        for k, v in n.resources_total.items():
            total[k] = total.get(k, 0) + v
    out = {"ray_version": meta.get("ray_version"), "nodes": len(nodes),
           "cpus": total.get("CPU", 0), "gpus": total.get("GPU", 0)}
except Exception as e:
    out = {"error": type(e).__name__, "message": str(e)}
print("P2P_PROBE " + json.dumps(out), flush=True)
"""


def probe_gcs(
    address: str, timeout: float, *, auto: bool = False, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Ask the Ray GCS at `address` (host:port) for its version and alive nodes.

    Runs in a child process with `env` (default this process's environment): RAY_AUTH_MODE and
    RAY_AUTH_TOKEN there decide how it authenticates.

    Returns:
        {"ray_version", "nodes", "cpus", "gpus"}, or {"error": kind, "message": ...}.
    """
    argv = [sys.executable, "-c", _GCS_PROBE, address, str(timeout), "auto" if auto else "-"]
    limit = timeout + 20  # a child interpreter importing ray, then the GCS calls
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=limit, check=False, env=env
        )
    except subprocess.TimeoutExpired:
        return {"error": "Timeout", "message": f"GCS did not answer within {limit:g}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("P2P_PROBE ")]
    if not lines:
        tail = " ".join(proc.stderr.strip().splitlines()[-1:])
        return {"error": "ProbeCrashed", "message": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1][len("P2P_PROBE ") :])


def _ray_token_source() -> str | None:
    """Where a Ray auth token would come from (never the token itself)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return path if Path(path).is_file() else None
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() else None


def _ray_token() -> str | None:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    source = _ray_token_source()
    return Path(source).read_text().strip() if source else None


def _probe_gcs(address: str, ctx: Context, auto: bool) -> Check:
    local = metadata.version("ray")
    mode = (os.environ.get("RAY_AUTH_MODE") or "").lower()
    if mode == "token" and not _ray_token_source():
        return Check(
            "ray",
            FAIL,
            address,
            "RAY_AUTH_MODE=token but no token: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH "
            "(or create ~/.ray/auth_token)",
        )
    try:
        _reachable(address, ctx.timeout, 6379)
    except _Unreachable as e:
        return Check("ray", FAIL, address, f"GCS {e}")
    out = probe_gcs(address, ctx.timeout, auto=auto)
    if "error" in out:
        msg = out["message"]
        if out["error"] == "AuthenticationError" or "InvalidAuthToken" in msg:
            if "currently 'disabled'" in msg or mode != "token":
                reason = (
                    "the cluster requires Ray token auth: set RAY_AUTH_MODE=token and "
                    "RAY_AUTH_TOKEN (the cluster's token)"
                )
            else:
                reason = "the cluster rejected this Ray auth token (RAY_AUTH_TOKEN differs)"
            return Check("ray", FAIL, address, reason)
        return Check("ray", FAIL, address, f"{out['error']}: {' '.join(msg.split())[:200]}")
    version = out.get("ray_version")
    if version and version != local:
        return Check("ray", FAIL, address, f"cluster runs ray {version}, this client {local}")
    detail = f"ray {version or '?'}, {out['nodes']} nodes, {out['cpus']:g} CPU, {out['gpus']:g} GPU"
    if ctx.cfg.resources.use_gpu and not out["gpus"]:
        detail += "; no GPU yet (resources.use_gpu needs an autoscaling GPU group)"
    return Check("ray", OK, address, detail)


def _check_dashboard(address: str, ctx: Context) -> Check:
    base = address.rstrip("/")
    local = metadata.version("ray")
    try:
        _reachable(base, ctx.timeout)
        status, body = _http_get(f"{base}/api/authentication_mode", ctx.timeout)
        token = _ray_token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        v_status, v_body = _http_get(f"{base}/api/version", ctx.timeout, headers)
    except _Unreachable as e:
        return Check("ray", FAIL, base, f"dashboard {e}")
    mode = ""
    if status == 200:
        try:
            mode = str(json.loads(body).get("authentication_mode", ""))
        except (ValueError, AttributeError):
            mode = ""
    if v_status == 401:
        return Check("ray", FAIL, base, "the cluster requires Ray token auth: set RAY_AUTH_TOKEN")
    if v_status == 403:
        return Check("ray", FAIL, base, "the cluster rejected this Ray auth token")
    if v_status == 404:
        return Check(
            "ray",
            FAIL,
            base,
            "no Jobs API at this address (is the head installed with ray[default]?)",
        )
    if v_status != 200:
        return Check("ray", FAIL, base, f"/api/version answered HTTP {v_status}: {_short(v_body)}")
    try:
        version = json.loads(v_body).get("ray_version", "?")
    except (ValueError, AttributeError):
        return Check("ray", FAIL, base, "/api/version did not answer JSON (not a Ray dashboard?)")
    if version != local:
        return Check("ray", FAIL, base, f"cluster runs ray {version}, this client {local}")
    auth = f", {mode} auth" if mode else ""
    return Check("ray", OK, base, f"Jobs API, ray {version}{auth}")


def check_ray(ctx: Context) -> Check:
    # Same precedence as `p2p train`: resources.address, else RAY_ADDRESS, else a local Ray.
    address = ctx.cfg.resources.address or ctx.settings.ray_address or ""
    if not address:
        return Check("ray", OK, "local Ray will be started", "no RAY_ADDRESS or resources.address")
    if address.startswith(("http://", "https://")):
        return _check_dashboard(address, ctx)
    if address.startswith("ray://"):
        try:
            import grpc  # noqa: F401  # Ray Client needs ray[client]
        except ImportError:
            return Check("ray", FAIL, address, "ray:// needs Ray Client: pip install 'ray[client]'")
        try:
            _reachable(address, ctx.timeout, 10001)
        except _Unreachable as e:
            return Check("ray", FAIL, address, f"Ray Client port {e}")
        return Check("ray", OK, address, "Ray Client port open")
    if address == "auto":
        from ray._private.utils import read_ray_address

        found = read_ray_address(None)
        if not found:
            return Check(
                "ray", FAIL, "auto", "no local Ray cluster found (start one: ray start --head)"
            )
        check = _probe_gcs(found, ctx, auto=True)
        return Check("ray", check.status, f"auto -> {found}", check.detail)
    return _probe_gcs(address, ctx, auto=False)


# ----------------------------------------------------------------------------- dvc


def _find_dvc_root(start: Path) -> Path | None:
    for d in (start, *start.parents):
        if (d / ".dvc").is_dir():
            return d
    return None


def _check_remote(name: str, config: dict[str, Any], timeout: float) -> str | None:
    """None if DVC remote `name` is reachable, else the reason."""
    from dvc.fs import get_cloud_fs

    cls, conf, path = get_cloud_fs(config, name=name)
    if cls.protocol == "local":
        p = Path(path)
        probe = p if p.exists() else p.parent
        if not probe.is_dir():
            return f"{p} does not exist"
        return None if os.access(probe, os.W_OK) else f"{probe} is not writable"
    if conf.get("endpointurl"):
        try:
            _reachable(conf["endpointurl"], timeout)
        except _Unreachable as e:
            return f"{conf['endpointurl']}: {e}"
    bucket = path.split("/", 1)[0]
    try:  # the filesystem DVC itself pushes with (same endpoint, credentials, options)
        cls(**conf).fs.info(bucket)
    except FileNotFoundError:
        return f"bucket {bucket!r} does not exist"
    except Exception as e:  # noqa: BLE001
        return _s3_error(e)
    return None


def check_dvc(ctx: Context) -> Check:
    root = _find_dvc_root(ctx.cwd)
    if root is None:
        if ctx.settings.dvc_remote_url:
            return Check(
                "dvc",
                SKIP,
                ctx.settings.dvc_remote_url,
                f"no DVC repository at {ctx.cwd}; the bucket is checked under s3",
            )
        return Check("dvc", SKIP, "no DVC repository", f"none at or above {ctx.cwd}")
    from dvc.repo import Repo

    from p2p.data.versioning import default_remote_name, env_config

    # the same in-memory remote and default rule as p2p.data.versioning
    url = ctx.settings.dvc_remote_url
    overrides = env_config(url, ctx.settings.s3_endpoint) if url else {}
    with Repo(str(root), config=overrides or None) as repo:
        config = repo.config
        remotes = {n: s for n, s in config.get("remote", {}).items() if s.get("url")}
        default = default_remote_name(config, url)
        if not remotes:
            return Check(
                "dvc", FAIL, str(root), "no DVC remote configured (set P2P_DVC_REMOTE_URL)"
            )
        if not default:
            return Check("dvc", FAIL, str(root), "no default DVC remote (dvc remote default NAME)")
        if default not in remotes:
            return Check("dvc", FAIL, str(root), f"default remote {default!r} is not configured")
        # The remote pushes and pulls go to must answer; others are listed, not contacted.
        url = remotes[default]["url"]
        try:
            reason = _check_remote(default, config, ctx.timeout)
        except Exception as e:  # noqa: BLE001
            reason = " ".join(str(e).split())[:200] or type(e).__name__
    if reason:
        return Check("dvc", FAIL, str(root), f"remote {default} {url}: {reason}")
    others = ", ".join(f"{n} {s['url']}" for n, s in sorted(remotes.items()) if n != default)
    detail = f"remote {default} {url}" + (f"; also configured: {others}" if others else "")
    return Check("dvc", OK, str(root), detail)


# ----------------------------------------------------------------------------- gpu


def check_gpu(ctx: Context) -> Check:
    import torch

    build = f"torch {torch.__version__}"
    remote = bool(ctx.cfg.resources.address or ctx.settings.ray_address)
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        name = torch.cuda.get_device_name(0)
        return Check("gpu", OK, f"{n} x {name}", f"CUDA {torch.version.cuda}, {build}")
    if not ctx.cfg.resources.use_gpu:
        return Check(
            "gpu", SKIP, "no CUDA device", f"resources.use_gpu=false: CPU training, {build}"
        )
    if remote:
        return Check("gpu", SKIP, "no CUDA device here", "GPUs are expected on the Ray cluster")
    return Check(
        "gpu", FAIL, "no CUDA device", f"resources.use_gpu is true but torch sees none ({build})"
    )


# ----------------------------------------------------------------------------- runner

# The explicit registry, in output order.
CHECKS: dict[str, Callable[[Context], Check]] = {
    "s3": check_s3,
    "mlflow": check_mlflow,
    "prefect": check_prefect,
    "ray": check_ray,
    "dvc": check_dvc,
    "gpu": check_gpu,
}


def _deadline(timeout: float) -> float:
    """Wall time one check may take: a few network calls plus a child interpreter."""
    return 3 * timeout + 30


def run_checks(
    cfg: ExperimentConfig,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    settings: Settings | None = None,
    cwd: str | os.PathLike | None = None,
    names: tuple[str, ...] | None = None,
) -> list[Check]:
    """Run the checks concurrently (daemon threads, so a hung call cannot block exit).

    Args:
        cfg: the resolved params (shards, storage path, Ray address, use_gpu).
        timeout: seconds per network call.
        settings: default `Settings.from_env()`.
        cwd: where relative paths (sqlite file, DVC repo) are resolved; default the CWD.
        names: a subset of CHECKS to run, default all.
    """
    ctx = Context(
        settings or Settings.from_env(), cfg, float(timeout), Path(cwd or os.getcwd()).resolve()
    )
    selected = names or tuple(CHECKS)
    results: dict[str, Check] = {}

    def run(name: str) -> None:
        try:
            results[name] = CHECKS[name](ctx)
        except Exception as e:  # noqa: BLE001 - a crashing check is a failed check
            results[name] = Check(name, FAIL, "?", f"{type(e).__name__}: {e}")

    threads = {n: threading.Thread(target=run, args=(n,), daemon=True) for n in selected}
    for t in threads.values():
        t.start()
    limit = _deadline(ctx.timeout)
    end = time.monotonic() + limit  # one deadline for all: they run concurrently
    for t in threads.values():
        t.join(max(0.0, end - time.monotonic()))
    out = []
    for n in selected:
        out.append(results.get(n) or Check(n, FAIL, "?", f"no result within {limit:g}s"))
    return out


def settings_report(cfg: ExperimentConfig) -> dict[str, str]:
    """What doctor prints before the checks: env settings (secrets redacted), Ray auth, params."""
    env = os.environ
    effective = Settings.from_env()
    defaults = {
        "AWS_DEFAULT_REGION": effective.aws_region,
        "MLFLOW_TRACKING_URI": effective.mlflow_tracking_uri,
    }
    out = {}
    for name in ENV_VARS:
        value = env.get(name) or None
        if value is None and name in defaults:
            out[name] = f"{defaults[name]} (default)"
        else:
            out[name] = redact(name, value)
        if "://" in out[name]:
            out[name] = redact_uri(out[name])  # a password inside a URL
    out["RAY_AUTH_MODE"] = env.get("RAY_AUTH_MODE") or "(unset)"
    source = _ray_token_source()
    where = "env" if source == "RAY_AUTH_TOKEN" else source
    out["ray auth token"] = f"set ({where})" if source else "(none)"
    out["data.shards"] = cfg.data.shards
    out["train.storage_path"] = cfg.train.storage_path
    out["resources.address"] = cfg.resources.address or '""'
    return out


def report(cfg: ExperimentConfig, checks: list[Check], *, as_json: bool = False) -> str:
    """The text (or JSON) doctor prints."""
    settings = settings_report(cfg)
    if as_json:
        return json.dumps(
            {
                "ok": not any(c.failed for c in checks),
                "settings": settings,
                "checks": [asdict(c) for c in checks],
            },
            indent=2,
        )
    width = max(len(k) for k in settings)
    lines = ["settings:"] + [f"  {k:<{width}}  {v}" for k, v in settings.items()]
    lines += ["", "checks:"] + [c.line() for c in checks]
    failed = [c.name for c in checks if c.failed]
    lines += ["", f"{len(failed)} failed: {', '.join(failed)}" if failed else "all reachable"]
    return "\n".join(lines)
