"""Reaching the registry and reading it: the client, errors, versions, `show`, loading a model.

Every MLflow call of p2p.registry goes through `client()`: for an http(s) tracking/registry
server it first checks, within P2P_MLFLOW_TIMEOUT_S seconds (default 30), that the server
answers, and bounds MLflow's own HTTP retries to the same budget (unless the MLFLOW_HTTP_*
variables are set). An unreachable server is one line naming the redacted URI, what failed and
what to check, instead of MLflow's ~4 minutes of retries. Errors never carry URI credentials.
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from p2p.errors import P2PError
from p2p.settings import redact_uri

CHAMPION, CHALLENGER = "champion", "challenger"
TIMEOUT_ENV = "P2P_MLFLOW_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 30.0
_REACHED: set[str] = set()  # http(s) URIs that answered once in this process

F = TypeVar("F", bound=Callable[..., Any])


class RegistryError(P2PError):
    """A registry operation is impossible as asked (unknown model/version, no history, ...)."""


@dataclass(frozen=True)
class ModelVersionInfo:
    """One registered version, as p2p sees it."""

    name: str
    version: int
    run_id: str | None
    model_id: str | None
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def group(self, prefix: str) -> dict[str, str]:
        """Tags under `prefix.` with the prefix removed, e.g. group("lineage")."""
        p = prefix + "."
        return {k[len(p) :]: v for k, v in sorted(self.tags.items()) if k.startswith(p)}

    def scores(self) -> dict[str, float]:
        """The numeric test metrics (metric.* tags), e.g. {"l1": ..., "psnr": ...}; metrics
        recorded as "unavailable: reason" are left out."""
        out = {}
        for k, v in self.group("metric").items():
            try:
                out[k] = float(v)
            except ValueError:
                continue
        return out


# ----------------------------------------------------------------------------- client


def mlflow_timeout_s() -> float:
    """How long registry commands wait for an MLflow server (P2P_MLFLOW_TIMEOUT_S, > 0)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise RegistryError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds > 0")
    return value


def client():
    """An MlflowClient on the store MLflow resolves (MLFLOW_TRACKING_URI, default
    sqlite:///mlflow.db), after checking an http(s) server answers. No global MLflow state
    is changed.

    Raises:
        RegistryError: the server did not answer within P2P_MLFLOW_TIMEOUT_S.
    """
    import mlflow
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm noise
    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    budget = mlflow_timeout_s()
    for uri, var in ((tracking, "MLFLOW_TRACKING_URI"), (registry, "MLFLOW_REGISTRY_URI")):
        if uri.split(":", 1)[0].lower() in ("http", "https"):
            _bound_mlflow_retries(budget)
            _check_reachable(uri, var, budget)
    return MlflowClient(tracking_uri=tracking, registry_uri=registry)


def _bound_mlflow_retries(budget: float) -> None:
    """MLflow's HTTP retries within `budget` seconds (its default is 7 retries, backoff 2:
    ~4 minutes against a dead server). Variables the user set are left alone.

    urllib3 sleeps backoff * 2**(n-1) s before retry n >= 2 (plus up to 1 s of jitter): with
    backoff 1 the sleeps are 0, 2, 4, 8, ... s; take the most retries whose sleeps fit."""
    retries, slept = 0, 0.0
    while retries < 7:
        nxt = (2.0**retries if retries else 0.0) + 1.0  # sleep before the next retry + jitter
        if slept + nxt > budget:
            break
        retries, slept = retries + 1, slept + nxt
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(budget))))


def _check_reachable(uri: str, var: str, budget: float) -> None:
    """GET <uri>/health until it answers (any HTTP status) or `budget` seconds pass."""
    import requests

    if uri in _REACHED:
        return
    deadline = time.monotonic() + budget
    attempt, reason = 0, "no attempt"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            # requests sends URI credentials as basic auth; no retries of its own
            requests.get(f"{uri.rstrip('/')}/health", timeout=(min(5.0, left), min(10.0, left)))
            _REACHED.add(uri)
            return
        except requests.exceptions.Timeout:
            reason = "no answer"
        except requests.exceptions.ConnectionError as e:
            text = str(e).lower()
            if "refused" in text:
                reason = "connection refused"
            elif "resolve" in text or "name or service" in text or "nodename" in text:
                reason = "cannot resolve the host"
            else:
                reason = "connection failed"
        except requests.exceptions.RequestException as e:
            reason = type(e).__name__
        attempt += 1
        time.sleep(max(0.0, min(2.0 ** (attempt - 1) * 0.5, 5.0, deadline - time.monotonic())))
    raise RegistryError(
        f"MLflow server {redact_uri(uri)} unreachable ({reason}; {attempt} tries in "
        f"{budget:g}s): check that the server is running and that {var} is right "
        f"({TIMEOUT_ENV} sets how long to wait)"
    )


def short(e: BaseException) -> str:
    """First line of an error, at most 300 characters, credentials redacted."""
    msg = getattr(e, "message", None) or str(e)
    text = msg.strip().splitlines()[0][:300] if msg.strip() else type(e).__name__
    return redact_uri(text)


def mlflow_errors(fn: F) -> F:
    """Turn the MLflow / HTTP errors of a registry operation into one redacted RegistryError
    line (a P2PError: the CLI prints it and exits 2)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import requests
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args, **kwargs)
        except (MlflowException, requests.exceptions.RequestException) as e:
            raise RegistryError(f"{fn.__name__}: MLflow failed: {short(e)}") from None

    return wrapper  # type: ignore[return-value]


def experiment_id(c, name: str) -> str:
    exp = c.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else c.create_experiment(name)


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def quote(s: str) -> str:
    """`s` as a string literal of an MLflow search filter, quotes included.

    MLflow takes the text between the quotes literally (no escape sequences: a backslash is
    a backslash, and a backslash-escaped quote never matches), so the literal uses single
    quotes, or double quotes when `s` holds a single quote. A value holding both kinds of
    quote cannot be written in a filter.

    Raises:
        RegistryError: `s` contains both ' and ".
    """
    s = str(s)
    if "'" not in s:
        return f"'{s}'"
    if '"' not in s:
        return f'"{s}"'
    raise RegistryError(f"{s!r}: an MLflow search cannot match a value with both ' and \"")


# ----------------------------------------------------------------------------- lookup


def info(mv) -> ModelVersionInfo:
    return ModelVersionInfo(
        name=mv.name,
        version=int(mv.version),
        run_id=mv.run_id or None,
        model_id=getattr(mv, "model_id", None) or _logged_model_id(mv.source),
        aliases=tuple(sorted(mv.aliases or ())),
        tags=dict(mv.tags or {}),
    )


def _logged_model_id(source: str | None) -> str | None:
    # a version registered from a LoggedModel has source "models:/m-<id>"
    return source[len("models:/") :] if source and source.startswith("models:/m-") else None


@mlflow_errors
def get_version(name: str, version: int | str) -> ModelVersionInfo:
    """A version by number or by alias ("champion", "challenger", ...)."""
    from mlflow.exceptions import MlflowException

    c = client()
    try:
        if isinstance(version, int) or str(version).isdigit():
            return info(c.get_model_version(name, str(version)))
        return info(c.get_model_version_by_alias(name, str(version)))
    except MlflowException as e:
        raise RegistryError(f"model {name!r} version/alias {version!r}: {short(e)}") from None


def alias_version(c, name: str, alias: str) -> int | None:
    """The version `alias` points at, None if it is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return int(c.get_model_version_by_alias(name, alias).version)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


@mlflow_errors
def find_version(name: str, *, data_version: str, params_hash: str) -> ModelVersionInfo | None:
    """The newest version registered for this data version + params hash (an idempotency key
    for flows), or None."""
    from mlflow.exceptions import MlflowException

    c = client()
    try:
        found = c.search_model_versions(
            f"name = {quote(name)} and tags.`lineage.data_version` = {quote(data_version)}"
            f" and tags.`lineage.params_hash` = {quote(params_hash)}"
        )
    except MlflowException:
        return None
    return info(max(found, key=lambda mv: int(mv.version))) if found else None


def download(v: ModelVersionInfo, artifact: str, dst: Path) -> Path:
    """One file of a version's logged model (artifacts/<artifact>) into dst."""
    import mlflow

    base = client().get_model_version_download_uri(v.name, str(v.version)).rstrip("/")
    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{base}/artifacts/{artifact}", dst_path=str(dst)
        )
    except Exception as e:  # noqa: BLE001 - any store error means the same to the user
        raise RegistryError(f"{v.uri}: cannot download artifacts/{artifact} ({short(e)})") from None
    return Path(local)


def version_config(v: ModelVersionInfo):
    """The ExperimentConfig logged with a version."""
    from p2p.config import load_config
    from p2p.serving import ARTIFACT_CONFIG

    with tempfile.TemporaryDirectory(prefix="p2p-cfg-") as tmp:
        return load_config(download(v, ARTIFACT_CONFIG, Path(tmp)))


# ----------------------------------------------------------------------------- show / load


@mlflow_errors
def show(name: str | None = None) -> dict[str, Any]:
    """Versions, aliases, metrics, lineage and gate decisions of `name` (all models if None)."""
    from mlflow.exceptions import MlflowException

    from p2p.registry.aliases import ALIAS_LOG_TAG, HISTORY_TAG, ROLLBACK_TAG, is_lock, read_log

    c = client()
    if name is None:
        models = [m for m in c.search_registered_models() if not is_lock(m.name)]
        return {
            "models": [
                {"name": m.name, "aliases": {a: int(v) for a, v in (m.aliases or {}).items()}}
                for m in models
            ]
        }
    try:
        m = c.get_registered_model(name)
    except MlflowException as e:
        raise RegistryError(f"model {name!r}: {short(e)}") from None
    versions = sorted(
        (info(mv) for mv in c.search_model_versions(f"name = {quote(name)}")),
        key=lambda v: v.version,
    )
    aliases = {a: int(v) for a, v in (m.aliases or {}).items()}
    # search results carry no aliases (mlflow#9952): take them from the registered model
    by_version: dict[int, list[str]] = {}
    for a, v in sorted(aliases.items()):
        by_version.setdefault(v, []).append(a)
    tags = dict(m.tags or {})
    return {
        "name": name,
        "aliases": aliases,
        "champion_history": read_log(tags, HISTORY_TAG),
        "rollbacks": read_log(tags, ROLLBACK_TAG),
        "alias_moves": read_log(tags, ALIAS_LOG_TAG),
        "versions": [
            {
                "version": v.version,
                "aliases": by_version.get(v.version, []),
                "run_id": v.run_id,
                "metrics": v.group("metric"),
                "eval": v.group("eval"),
                "lineage": v.group("lineage"),
                "gate": v.group("gate"),
                "onnx": v.group("onnx"),
            }
            for v in versions
        ],
    }


def parse_model_uri(uri: str) -> tuple[str, str]:
    """`models:/NAME@alias` or `models:/NAME/VERSION` -> (NAME, alias or version)."""
    if not uri.startswith("models:/"):
        raise RegistryError(f"{uri!r}: expected models:/NAME@alias or models:/NAME/VERSION")
    rest = uri[len("models:/") :].strip("/")
    if "@" in rest:
        name, _, ref = rest.rpartition("@")
    else:
        name, _, ref = rest.rpartition("/")
        if not ref.isdigit():
            raise RegistryError(f"{uri!r}: the version must be a number (or use @alias)")
    if not name or not ref:
        raise RegistryError(f"{uri!r}: expected models:/NAME@alias or models:/NAME/VERSION")
    return name, ref


@mlflow_errors
def load_registered_generator(uri: str, device: str = "cpu"):
    """Load the generator of a registered version and its config.

    Args:
        uri: `models:/NAME@alias` (e.g. @champion) or `models:/NAME/VERSION`.
        device: where the generator lives.

    Returns:
        (generator, ExperimentConfig); the generator is in eval mode unless the version's
        config says `eval.eval_mode: false`.
    """
    from p2p.checkpoints import load_generator
    from p2p.config import load_config
    from p2p.serving import ARTIFACT_CONFIG, ARTIFACT_GENERATOR

    name, ref = parse_model_uri(uri)
    v = get_version(name, ref)
    with tempfile.TemporaryDirectory(prefix="p2p-model-") as tmp:
        cfg = load_config(download(v, ARTIFACT_CONFIG, Path(tmp)))
        g = load_generator(
            download(v, ARTIFACT_GENERATOR, Path(tmp)),
            device=device,
            eval_mode=cfg.eval.eval_mode,
        )
    return g, cfg
