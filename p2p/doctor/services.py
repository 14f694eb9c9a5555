"""Doctor checks for the HTTP services: the MLflow tracking store/registry and the Prefect API."""

from __future__ import annotations

import json
import os
import sqlite3
from importlib import metadata
from pathlib import Path

from p2p.doctor.base import (
    FAIL,
    OK,
    SKIP,
    Check,
    Context,
    _basic,
    _http_get,
    _reachable,
    _short,
    _Unreachable,
)
from p2p.settings import Settings, redact_uri

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
