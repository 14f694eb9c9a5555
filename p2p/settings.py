"""Where things live: every endpoint comes from one set of environment variables.

The same names are used by the CLI, the Prefect flows, the Ray workers, the tests and every file
under infra/. Credentials are read by boto3 from the standard AWS variables and are never
logged or stored by p2p.

| variable                | meaning                                    | default                 |
|-------------------------|--------------------------------------------|-------------------------|
| AWS_ENDPOINT_URL        | S3-compatible endpoint (MinIO, moto)       | AWS S3                  |
| AWS_ACCESS_KEY_ID       | S3 credentials (read by boto3 only)        | (boto3 chain)           |
| AWS_SECRET_ACCESS_KEY   |                                            |                         |
| AWS_DEFAULT_REGION      | S3 region                                  | us-east-1               |
| MLFLOW_TRACKING_URI     | MLflow tracking server or database         | sqlite:///mlflow.db     |
| PREFECT_API_URL         | Prefect server API                         | (ephemeral local API)   |
| RAY_ADDRESS             | Ray cluster: auto, ray://host:10001, http://head:8265 | local Ray    |
| P2P_DVC_REMOTE_URL      | S3 DVC remote, e.g. s3://bucket/dvc        | (local remote only)     |
"""

from __future__ import annotations

import os
from dataclasses import dataclass

ENV_VARS = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "MLFLOW_TRACKING_URI",
    "PREFECT_API_URL",
    "RAY_ADDRESS",
    "P2P_DVC_REMOTE_URL",
)
SECRET_VARS = frozenset(
    {
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_ACCESS_KEY_ID",
        "RAY_AUTH_TOKEN",
        "PREFECT_API_AUTH_STRING",
        "PREFECT_API_KEY",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_TOKEN",
    }
)
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


@dataclass(frozen=True)
class Settings:
    s3_endpoint: str | None
    aws_region: str
    mlflow_tracking_uri: str
    prefect_api_url: str | None
    ray_address: str | None
    dvc_remote_url: str | None

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            s3_endpoint=env.get("AWS_ENDPOINT_URL") or None,
            aws_region=env.get("AWS_DEFAULT_REGION") or "us-east-1",
            mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI,
            prefect_api_url=env.get("PREFECT_API_URL") or None,
            ray_address=env.get("RAY_ADDRESS") or None,
            dvc_remote_url=env.get("P2P_DVC_REMOTE_URL") or None,
        )

    def worker_env(self) -> dict[str, str]:
        """The settings a Ray job and its workers get through `runtime_env`: endpoints, region
        and the MLflow URI, never a secret. Ray writes runtime envs in clear into its session
        logs (runtime_env_agent.log), so credentials (SECRET_VARS, or a tracking URI with a
        password) must reach each node another way: its own environment or the AWS chain
        (instance role, a Kubernetes secret exported as env, a profile)."""
        env = {
            k: os.environ[k]
            for k in ENV_VARS
            if os.environ.get(k) and k != "RAY_ADDRESS" and k not in SECRET_VARS
        }
        if has_password(env.get("MLFLOW_TRACKING_URI", "")):
            del env["MLFLOW_TRACKING_URI"]
        return env


def has_password(uri: str) -> bool:
    """Whether a URI carries a password (user:password@host): then it is a secret too."""
    from urllib.parse import urlsplit

    try:
        return bool(urlsplit(uri).password)
    except ValueError:
        return False


def redact(name: str, value: str | None) -> str:
    """How a setting may be printed: secrets never appear in logs or output."""
    if value is None:
        return "(unset)"
    return "***" if name in SECRET_VARS else value


def redact_uri(text: str) -> str:
    """`text` with the credentials of every URI in it replaced by ***.

    Works on a bare URI (`postgresql://user:secret@db/mlflow` -> `postgresql://user:***@db/mlflow`,
    `https://token@host` -> `https://***@host`) and on any message quoting one (an MLflow error
    naming the request URL): every error and log line p2p prints about an endpoint goes through
    it. The one place URI credentials are redacted (doctor, registry, CLI errors).
    """
    import re

    def hide(m: re.Match) -> str:
        return f"{m['scheme']}{m['user']}:***@" if m["pw"] else f"{m['scheme']}***@"

    # the password runs to the LAST "@" of the word: passwords may hold "@" or "/"
    return re.sub(
        r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/\s:@]*)(?P<pw>:\S*)?@", hide, str(text)
    )
