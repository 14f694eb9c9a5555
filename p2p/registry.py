"""The MLflow model registry: register evaluated generators, gate promotions, roll back.

Every trained generator that passed evaluation becomes a new version of `eval.model_name` with
the alias `challenger`. Deployments consume `models:/NAME@champion`. The promotion gate moves
`champion` to a challenger only if it beats the current champion on the same test set by more
than `eval.margin` in `eval.metric` (or there is no champion); the decision and both scores are
tags on the challenger's version. Aliases only: stages are deprecated in MLflow.

Tags on each version (keys are stable: flows and deployment teams read them):

    lineage.data_version      DVC data version the model was trained on (retrain_flow compares it)
    lineage.git_commit        code version (lineage.git_dirty: uncommitted changes present)
    lineage.params_hash       ExperimentConfig.params_hash() of the training config
    lineage.ray_run           Ray Train run (storage path / name)
    lineage.ray_checkpoint    Ray checkpoint URI the weights came from
    metric.<name>             test metrics (l1, psnr, ssim, ...), eval.* how they were measured
    onnx.*                    how the ONNX export was verified (onnx.mode: its inference mode)
    serving.inference_mode    the mode the pyfunc and ONNX serve (eval.inference_mode: scored)
    gate.*                    the promotion decision, both scores, the metric and margin

The registered model keeps `p2p.champion_history` (a JSON stack of champions) and
`p2p.rollbacks` (a JSON log), so `rollback` knows the previous champion.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2p.errors import P2PError

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG, ROLLBACK_TAG = "p2p.champion_history", "p2p.rollbacks"
HISTORY_MAX = 50  # entries kept in the registered-model tags (tag values are size-limited)
LINEAGE_KEYS = ("data_version", "git_commit", "params_hash", "ray_run", "ray_checkpoint")
# metric -> True if higher is better
HIGHER_IS_BETTER: dict[str, bool] = {
    "psnr": True,
    "ssim": True,
    "l1": False,
    "lpips": False,
    "fid": False,
}
REQUIRED_METRICS = ("l1", "psnr", "ssim")


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


@dataclass(frozen=True)
class GateDecision:
    """The outcome of `promotion_gate`; also recorded as gate.* tags on the version."""

    name: str
    version: int
    metric: str
    margin: float
    higher_is_better: bool
    challenger_score: float
    champion_version: int | None
    champion_score: float | None
    promoted: bool
    reason: str
    rescored_champion: bool = False  # the champion was scored again on the challenger's test set


# ----------------------------------------------------------------------------- clients


def _client():
    """An MlflowClient on the store MLflow resolves (MLFLOW_TRACKING_URI, default
    sqlite:///mlflow.db: see p2p.settings). No global MLflow state is changed."""
    import mlflow
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm noise
    return MlflowClient(
        tracking_uri=mlflow.get_tracking_uri(), registry_uri=mlflow.get_registry_uri()
    )


def _experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else client.create_experiment(name)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _info(mv) -> ModelVersionInfo:
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


def get_version(name: str, version: int | str) -> ModelVersionInfo:
    """A version by number or by alias ("champion", "challenger", ...)."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        if isinstance(version, int) or str(version).isdigit():
            return _info(client.get_model_version(name, str(version)))
        return _info(client.get_model_version_by_alias(name, str(version)))
    except MlflowException as e:
        raise RegistryError(f"model {name!r} version/alias {version!r}: {_short(e)}") from None


def _alias_version(client, name: str, alias: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _short(e: Exception) -> str:
    msg = getattr(e, "message", None) or str(e)
    return msg.strip().splitlines()[0][:300] if msg.strip() else type(e).__name__


# ----------------------------------------------------------------------------- register


def git_commit(repo: str | Path | None = None) -> tuple[str, bool]:
    """(HEAD sha, has uncommitted changes) of the code: the checkout p2p is imported from
    (editable install), else `repo` (default: the working directory); ("unknown", False)
    outside git."""
    import p2p

    for where in (Path(p2p.__file__).resolve().parents[1], Path(repo or ".")):
        try:
            sha = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
            )
            if sha.returncode != 0 or not sha.stdout.strip():
                continue
            from p2p.data.versioning import code_changes  # what dvc.lock/outs do not count

            return sha.stdout.strip(), bool(code_changes(where))
        except (OSError, subprocess.SubprocessError):
            continue
    return "unknown", False


def check_metrics(metrics: dict[str, Any], checkpoint: str | Path) -> None:
    """Refuse to register anything that was not successfully evaluated, as this exact file.

    Raises:
        RegistryError: metrics missing/not finite, no samples, or computed for another file.
    """
    from p2p.evaluation.evaluate import file_sha256

    if not isinstance(metrics, dict):
        raise RegistryError("metrics must be the dict written by `p2p evaluate` (metrics.json)")
    for k in REQUIRED_METRICS:
        v = metrics.get(k)
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise RegistryError(
                f"metrics: {k!r} missing or not a finite number ({v!r}); "
                "run `p2p evaluate` on this checkpoint first"
            )
    if not isinstance(metrics.get("n_samples"), int) or metrics["n_samples"] <= 0:
        raise RegistryError("metrics: n_samples must be > 0 (the evaluation saw no data)")
    want = metrics.get("checkpoint_sha256")
    got = file_sha256(checkpoint)
    if want != got:
        raise RegistryError(
            f"{checkpoint}: the metrics were computed for another file (sha256 {str(want)[:12]} "
            f"vs {got[:12]}); evaluate this checkpoint before registering it"
        )


def lineage_from_training(train_metrics: str | Path) -> dict[str, str]:
    """Lineage of a training run from the `train_metrics.json` that `p2p train` writes beside
    generator.pt: {"ray_run", "ray_checkpoint", "training_run_id"} (the keys it has).

    Raises:
        RegistryError: the file is unreadable or is not such a file.
    """
    path = Path(train_metrics)
    try:
        run = json.loads(path.read_text()).get("run") or {}
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        raise RegistryError(f"{path}: not a readable train_metrics.json ({e})") from None
    if not isinstance(run, dict):
        raise RegistryError(f"{path}: no 'run' section (not written by `p2p train`)")
    out = {
        "ray_run": run.get("name"),
        "ray_checkpoint": run.get("checkpoint"),
        "training_run_id": run.get("mlflow_run_id"),
    }
    return {k: str(v) for k, v in out.items() if v}


def log_and_register(
    checkpoint: str | Path,
    cfg,
    metrics: dict[str, Any],
    *,
    lineage: dict[str, Any],
    run_id: str | None = None,
) -> ModelVersionInfo:
    """Log the evaluated generator (pyfunc + ONNX) to MLflow and register a new version.

    Everything is checked before MLflow is touched: the metrics must be a complete evaluation
    of this exact file (its sha256), and the ONNX export must match torch. Only then is the
    model logged, registered under `cfg.eval.model_name`, tagged with lineage, metrics and the
    evaluation, and given the alias `challenger`.

    Args:
        checkpoint: p2p generator checkpoint (or a reference `latest_net_G.pth`, stored as a
            p2p checkpoint with `cfg`'s data settings).
        cfg: the config it was evaluated with (name, experiment, eval settings).
        metrics: the dict `evaluate_checkpoint` returned / wrote to metrics.json.
        lineage: data_version, git_commit, params_hash, ray_run, ray_checkpoint (and any other
            str keys). data_version falls back to the evaluated shards' version, git_commit to
            the current checkout, params_hash to the checkpoint config's hash.
        run_id: log into this existing MLflow run (e.g. the training run) instead of a new one.

    Returns:
        The new version (with its tags and aliases).
    """
    import mlflow
    import torch

    from p2p.checkpoints import read_generator_config
    from p2p.config import to_yaml
    from p2p.serving import (
        ARTIFACT_CONFIG,
        ARTIFACT_GENERATOR,
        ARTIFACT_ONNX,
        log_pyfunc_model,
    )
    from p2p.serving.onnx_export import export_onnx, verify_onnx

    checkpoint = Path(checkpoint)
    check_metrics(metrics, checkpoint)
    name = cfg.eval.model_name
    with tempfile.TemporaryDirectory(prefix="p2p-register-") as tmp:
        staged = Path(tmp)
        # The registered files always have the same names and a self-describing checkpoint.
        g, model_cfg = _registrable(checkpoint, cfg, staged / ARTIFACT_GENERATOR)
        model_cfg = _with_eval_settings(model_cfg, cfg)
        (staged / ARTIFACT_CONFIG).write_text(to_yaml(model_cfg))
        side = model_cfg.data.crop_size
        rng = torch.Generator().manual_seed(0)  # fixed inputs; the global RNG is not touched
        example = torch.rand(2, model_cfg.data.input_nc, side, side, generator=rng) * 2 - 1
        served = model_cfg.eval.inference_mode  # the pyfunc and the ONNX export use it
        export_onnx(g, staged / ARTIFACT_ONNX, example, mode=served)
        # check on another batch size than the traced one: the batch axis must be dynamic
        probe = torch.rand(3, *example.shape[1:], generator=rng) * 2 - 1
        onnx_check = verify_onnx(staged / ARTIFACT_ONNX, g, probe, mode=served)

        lin = {k: str(v) for k, v in (lineage or {}).items() if v is not None and v != ""}
        lin.setdefault("data_version", str(metrics.get("data_version") or "unknown"))
        if "git_commit" not in lin:
            sha, dirty = git_commit()
            lin["git_commit"] = sha
            lin.setdefault("git_dirty", str(dirty).lower())
        trained_cfg = read_generator_config(checkpoint)
        lin.setdefault("params_hash", (trained_cfg or model_cfg).params_hash())
        for k in LINEAGE_KEYS:
            lin.setdefault(k, "")

        tags = {f"lineage.{k}": v for k, v in lin.items()}
        tags.update(_metric_tags(metrics))
        tags.update({f"onnx.{k}": str(v) for k, v in onnx_check.items()})
        tags["serving.inference_mode"] = served  # eval.inference_mode: the mode scored

        client = _client()
        active = mlflow.active_run()
        if run_id and active is not None and active.info.run_id == run_id:
            run_ctx = contextlib.nullcontext(active)  # the caller's run: leave it open
        elif run_id:
            run_ctx = mlflow.start_run(run_id=run_id, nested=active is not None)
        else:
            run_ctx = mlflow.start_run(
                experiment_id=_experiment_id(client, cfg.train.experiment),
                run_name=f"register-{name}-{lin['params_hash'][:8]}",
                nested=active is not None,
            )
        with run_ctx as run:
            if not run_id:  # a training run already has its params
                mlflow.log_params(_mlflow_params(model_cfg))
            split = metrics.get("split", "test")
            mlflow.log_metrics(
                {f"{split}_{k}": float(v) for k, v in metrics.items() if _is_score(k, v)}
            )
            mlflow.set_tags({k: v for k, v in tags.items() if v != ""})
            info = log_pyfunc_model(
                staged / ARTIFACT_GENERATOR,
                staged / ARTIFACT_CONFIG,
                staged / ARTIFACT_ONNX,
                model_cfg,
                name="generator",
                tags={k: v for k, v in tags.items() if k.startswith("lineage.")},
            )
            run_id = run.info.run_id
    # Registration happens only after the model was logged completely.
    mv = mlflow.register_model(info.model_uri, name, tags=tags)
    client.set_registered_model_alias(name, CHALLENGER, mv.version)
    return get_version(name, int(mv.version))


def _registrable(checkpoint: Path, cfg, dest: Path):
    """(generator, its config) and a self-describing p2p checkpoint at `dest`."""
    import shutil

    from p2p.checkpoints import (
        load_generator,
        read_checkpoint_info,
        read_generator_config,
        save_generator,
    )

    stored = read_generator_config(checkpoint)
    g = load_generator(checkpoint, device="cpu", eval_mode=True)
    if stored is not None:
        shutil.copyfile(checkpoint, dest)
        return g, stored
    # A reference file: its architecture comes from the weights, data settings from cfg.
    spec = read_checkpoint_info(checkpoint)
    over = {
        "data.input_nc": spec["input_nc"],
        "data.output_nc": spec["output_nc"],
        "model.generator": spec["generator"],
        "model.base_channels": spec["base_channels"],
        "model.norm": spec["norm"],
    }
    if spec["generator"] == "unet":
        over["model.num_downs"] = spec["num_downs"]
    else:
        over["model.resnet_blocks"] = spec["resnet_blocks"]
        over["model.use_dropout"] = spec["use_dropout"]
    model_cfg = cfg.replace(**over)
    save_generator(dest, g, model_cfg, extra={"imported_from": str(checkpoint)})
    return g, model_cfg


def _with_eval_settings(model_cfg, cfg):
    """The model's config with the settings it was evaluated under (the eval group and the
    eval transform), so the gate can score another model the same way."""
    from p2p.config import ConfigError

    over = {f"eval.{k}": v for k, v in cfg.to_dict()["eval"].items()}
    model_cfg = model_cfg.replace(**over)
    transform = {
        f"data.{k}": getattr(cfg.data, k) for k in ("preprocess", "load_size", "crop_size")
    }
    try:
        return model_cfg.replace(**transform)
    except ConfigError:  # e.g. a crop size this network cannot take: keep the model's own
        return model_cfg


def _mlflow_params(cfg) -> dict[str, str]:
    return {k: str(v) for k, v in cfg.flat().items()}


def _is_score(k: str, v: Any) -> bool:
    return k in HIGHER_IS_BETTER and isinstance(v, (int, float)) and math.isfinite(v)


def _metric_tags(metrics: dict[str, Any]) -> dict[str, str]:
    tags = {f"metric.{k}": repr(float(v)) for k, v in metrics.items() if _is_score(k, v)}
    for k in (
        "split",
        "n_samples",
        "shards",
        "data_version",
        "testset",
        "checkpoint_sha256",
        "eval_mode",
        "inference_mode",
    ):
        if metrics.get(k) is not None:
            tags[f"eval.{k}"] = (
                str(metrics[k]).lower() if isinstance(metrics[k], bool) else str(metrics[k])
            )
    for k, reason in (metrics.get("unavailable") or {}).items():
        tags[f"metric.{k}"] = f"unavailable: {reason}"
    return tags


def find_version(name: str, *, data_version: str, params_hash: str) -> ModelVersionInfo | None:
    """The newest version registered for this data version + params hash (an idempotency key
    for flows), or None."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        found = client.search_model_versions(
            f"name = '{_quote(name)}' and tags.`lineage.data_version` = '{_quote(data_version)}'"
            f" and tags.`lineage.params_hash` = '{_quote(params_hash)}'"
        )
    except MlflowException:
        return None
    return _info(max(found, key=lambda mv: int(mv.version))) if found else None


def _quote(s: str) -> str:
    return str(s).replace("'", "\\'")


# ----------------------------------------------------------------------------- gate


def promotion_gate(
    name: str,
    version: int,
    *,
    metric: str | None = None,
    margin: float | None = None,
    cfg=None,
) -> GateDecision:
    """Promote `version` to champion only if it beats the champion on the same test set.

    Both scores come from `p2p evaluate` on the same shards, split, transform and eval mode
    (the `eval.testset` key). If the champion was evaluated on another test set it is scored
    again now, on the challenger's shards. Promotion needs improvement > margin (in the
    metric's better direction); with no champion the challenger is promoted.

    Args:
        name: registered model name.
        version: the challenger version.
        metric: l1 (lower is better), psnr, ssim (higher is better); default cfg.eval.metric.
        margin: required improvement (>= 0); default cfg.eval.margin.
        cfg: config for metric/margin defaults and re-scoring; default: the challenger's own
            logged config.

    Returns:
        The decision; also recorded as gate.* tags on the challenger version.
    """
    client = _client()
    chal = get_version(name, version)
    if cfg is None:
        cfg = _version_config(chal)
    metric = metric or cfg.eval.metric
    margin = float(cfg.eval.margin if margin is None else margin)
    if metric not in HIGHER_IS_BETTER:
        raise RegistryError(f"gate metric {metric!r} is not one of {', '.join(HIGHER_IS_BETTER)}")
    if margin < 0:
        raise RegistryError(f"gate margin must be >= 0, got {margin}")
    higher = HIGHER_IS_BETTER[metric]
    c_score = _score(chal, metric)
    if c_score is None:
        raise RegistryError(
            f"{name} v{chal.version} has no recorded {metric!r} test score (tag metric.{metric});"
            " register versions through `p2p registry register` after `p2p evaluate`"
        )
    champ_v = _alias_version(client, name, CHAMPION)
    champ_score, rescored = None, False
    if champ_v is None:
        promoted, reason = True, "no champion yet"
    elif champ_v == chal.version:
        promoted, reason = False, "already the champion"
        champ_score = c_score
    else:
        champ = get_version(name, champ_v)
        same = champ.tags.get("eval.testset") and champ.tags.get("eval.testset") == chal.tags.get(
            "eval.testset"
        )
        champ_score = _score(champ, metric) if same else None
        if champ_score is None:
            champ_score = _rescore(champ, chal, cfg, metric)
            rescored = True
        gain = (c_score - champ_score) if higher else (champ_score - c_score)
        direction = "higher" if higher else "lower"
        promoted = gain > margin
        reason = (
            f"{metric} {c_score:.6g} vs champion v{champ_v} {champ_score:.6g} "
            f"({direction} is better): improvement {gain:.6g} "
            f"{'>' if promoted else '<='} margin {margin:g}"
        )
    decision = GateDecision(
        name=name,
        version=chal.version,
        metric=metric,
        margin=margin,
        higher_is_better=higher,
        challenger_score=c_score,
        champion_version=champ_v,
        champion_score=champ_score,
        promoted=promoted,
        reason=reason,
        rescored_champion=rescored,
    )
    tags = {
        "gate.decision": "promoted" if promoted else "rejected",
        "gate.reason": reason,
        "gate.metric": metric,
        "gate.margin": repr(margin),
        "gate.higher_is_better": str(higher).lower(),
        "gate.challenger_score": repr(c_score),
        "gate.champion_version": "" if champ_v is None else str(champ_v),
        "gate.champion_score": "" if champ_score is None else repr(champ_score),
        "gate.champion_rescored": str(rescored).lower(),
        "gate.testset": chal.tags.get("eval.testset", ""),
        "gate.at": _now(),
    }
    for k, v in tags.items():
        client.set_model_version_tag(name, str(chal.version), k, v)
    if promoted:
        promote(name, chal.version, reason=f"gate: {reason}")
    return decision


def _score(v: ModelVersionInfo, metric: str) -> float | None:
    raw = v.tags.get(f"metric.{metric}")
    try:
        x = float(raw) if raw is not None else None
    except ValueError:  # "unavailable: ..."
        return None
    return x if x is not None and math.isfinite(x) else None


def _download(v: ModelVersionInfo, artifact: str, dst: Path) -> Path:
    """One file of a version's logged model (artifacts/<artifact>) into dst."""
    import mlflow

    client = _client()
    base = client.get_model_version_download_uri(v.name, str(v.version)).rstrip("/")
    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{base}/artifacts/{artifact}", dst_path=str(dst)
        )
    except Exception as e:  # noqa: BLE001 - any store error means the same to the user
        raise RegistryError(
            f"{v.uri}: cannot download artifacts/{artifact} ({_short(e)})"
        ) from None
    return Path(local)


def _version_config(v: ModelVersionInfo):
    from p2p.config import load_config

    with tempfile.TemporaryDirectory(prefix="p2p-cfg-") as tmp:
        from p2p.serving import ARTIFACT_CONFIG

        return load_config(_download(v, ARTIFACT_CONFIG, Path(tmp)))


def _rescore(champ: ModelVersionInfo, chal: ModelVersionInfo, cfg, metric: str) -> float:
    """Score the champion on the challenger's test set (its shards, split and transform)."""
    from p2p.evaluation.evaluate import evaluate_checkpoint
    from p2p.serving import ARTIFACT_GENERATOR

    shards, split = chal.tags.get("eval.shards"), chal.tags.get("eval.split", "test")
    if not shards:
        raise RegistryError(
            f"{chal.uri}: no eval.shards tag: cannot score champion {champ.uri} on the same "
            "test set"
        )
    with tempfile.TemporaryDirectory(prefix="p2p-gate-") as tmp:
        ckpt = _download(champ, ARTIFACT_GENERATOR, Path(tmp))
        result = evaluate_checkpoint(ckpt, shards, cfg, Path(tmp) / "eval", split=split)
    if result.get("testset") != chal.tags.get("eval.testset"):
        raise RegistryError(
            f"scoring {champ.uri} on {shards} did not reproduce the test set {chal.uri} was "
            f"scored on (data version {result.get('data_version')} vs "
            f"{chal.tags.get('eval.data_version')}; the shards or the eval settings differ): "
            "evaluate the challenger again, or pass the config it was evaluated with"
        )
    return float(result[metric])


# ----------------------------------------------------------------------------- aliases


def _history(client, name: str, tag: str) -> list[dict[str, Any]]:
    from mlflow.exceptions import MlflowException

    try:
        raw = client.get_registered_model(name).tags.get(tag)
    except MlflowException as e:
        raise RegistryError(f"model {name!r}: {_short(e)}") from None
    try:
        data = json.loads(raw) if raw else []
    except json.JSONDecodeError:
        data = []
    return data if isinstance(data, list) else []


def _set_history(client, name: str, tag: str, entries: list[dict[str, Any]]) -> None:
    client.set_registered_model_tag(name, tag, json.dumps(entries[-HISTORY_MAX:]))


def promote(name: str, version: int, *, reason: str = "manual") -> ModelVersionInfo:
    """Make `version` the champion (recorded in the champion history)."""
    client = _client()
    v = get_version(name, version)
    current = _alias_version(client, name, CHAMPION)
    if current == v.version:
        return v
    history = _history(client, name, HISTORY_TAG)
    if current is not None and (not history or history[-1].get("version") != current):
        # champion was set outside p2p: keep it on the stack so rollback can return to it
        history.append({"version": current, "at": _now(), "reason": "found as champion"})
    history.append({"version": v.version, "at": _now(), "reason": reason})
    client.set_registered_model_alias(name, CHAMPION, str(v.version))
    _set_history(client, name, HISTORY_TAG, history)
    client.set_model_version_tag(name, str(v.version), "promoted_at", _now())
    if _alias_version(client, name, CHALLENGER) == v.version:
        client.delete_registered_model_alias(name, CHALLENGER)
    return get_version(name, v.version)


def rollback(name: str) -> ModelVersionInfo:
    """Move `champion` back to the previous champion; logs the rollback on the model.

    Raises:
        RegistryError: there is no champion, or no earlier champion still registered.
    """
    from mlflow.exceptions import MlflowException

    client = _client()
    current = _alias_version(client, name, CHAMPION)
    if current is None:
        raise RegistryError(f"model {name!r} has no champion to roll back")
    history = _history(client, name, HISTORY_TAG)
    while history and history[-1].get("version") == current:
        history.pop()
    target = None
    while history:
        cand = int(history[-1]["version"])
        try:
            client.get_model_version(name, str(cand))
            target = cand
            break
        except MlflowException:  # deleted since: skip it
            history.pop()
    if target is None:
        raise RegistryError(f"model {name!r}: no previous champion to roll back to from v{current}")
    client.set_registered_model_alias(name, CHAMPION, str(target))
    _set_history(client, name, HISTORY_TAG, history)
    log = _history(client, name, ROLLBACK_TAG)
    log.append({"from": current, "to": target, "at": _now()})
    _set_history(client, name, ROLLBACK_TAG, log)
    client.set_model_version_tag(name, str(current), "rolled_back_at", _now())
    return get_version(name, target)


# ----------------------------------------------------------------------------- show / load


def show(name: str | None = None) -> dict[str, Any]:
    """Versions, aliases, metrics, lineage and gate decisions of `name` (all models if None)."""
    from mlflow.exceptions import MlflowException

    client = _client()
    if name is None:
        models = client.search_registered_models()
        return {
            "models": [
                {"name": m.name, "aliases": {a: int(v) for a, v in (m.aliases or {}).items()}}
                for m in models
            ]
        }
    try:
        m = client.get_registered_model(name)
    except MlflowException as e:
        raise RegistryError(f"model {name!r}: {_short(e)}") from None
    versions = sorted(
        (_info(mv) for mv in client.search_model_versions(f"name = '{_quote(name)}'")),
        key=lambda v: v.version,
    )
    aliases = {a: int(v) for a, v in (m.aliases or {}).items()}
    # search results carry no aliases (mlflow#9952): take them from the registered model
    by_version: dict[int, list[str]] = {}
    for a, v in sorted(aliases.items()):
        by_version.setdefault(v, []).append(a)
    return {
        "name": name,
        "aliases": aliases,
        "champion_history": _history(client, name, HISTORY_TAG),
        "rollbacks": _history(client, name, ROLLBACK_TAG),
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
        cfg = load_config(_download(v, ARTIFACT_CONFIG, Path(tmp)))
        g = load_generator(
            _download(v, ARTIFACT_GENERATOR, Path(tmp)),
            device=device,
            eval_mode=cfg.eval.eval_mode,
        )
    return g, cfg
