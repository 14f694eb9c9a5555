"""Registering an evaluated generator: checks first, then log to MLflow, then register.

Every trained generator that passed evaluation becomes a new version of `eval.model_name`
with the alias `challenger`, tagged with its lineage (lineage.*), test scores (metric.*), how
they were measured (eval.*), the ONNX check (onnx.*) and which samples it trained on
(lineage.train_keys_*: see p2p.registry.lineage).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

from p2p.errors import P2PError
from p2p.gitinfo import git_commit
from p2p.registry import lineage as keys_lineage
from p2p.registry.aliases import set_challenger
from p2p.registry.versions import (
    ModelVersionInfo,
    RegistryError,
    client,
    experiment_id,
    get_version,
    mlflow_errors,
)
from p2p.settings import redact_uri

log = logging.getLogger(__name__)

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


def check_metrics(metrics: dict[str, Any], checkpoint: str | Path) -> None:
    """Refuse to register anything that was not successfully evaluated, as this exact file.

    Raises:
        RegistryError: metrics missing/not finite, no samples, or computed for another file.
    """
    from p2p.atomic import file_sha256

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


@mlflow_errors
def log_and_register(
    checkpoint: str | Path,
    cfg,
    metrics: dict[str, Any],
    *,
    lineage: dict[str, Any],
    run_id: str | None = None,
    train_shards: str | None = None,
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
            the current checkout, params_hash to the checkpoint config's model_hash().
        run_id: log into this existing MLflow run (e.g. the training run) instead of a new one.
        train_shards: the shard set whose train split the model was trained on (its keys are
            recorded for the gate); default: `data.shards` of the config stored in the
            checkpoint. Unreadable default shards are a warning (keys not recorded), unreadable
            explicit ones an error.

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
        export_onnx(g, staged / ARTIFACT_ONNX, example, mode=served, cfg=model_cfg)
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
        lin.setdefault("params_hash", (trained_cfg or model_cfg).model_hash())
        for k in LINEAGE_KEYS:
            lin.setdefault(k, "")

        tags = {f"lineage.{k}": v for k, v in lin.items()}
        key_tags, key_text = _train_keys(train_shards, trained_cfg, checkpoint)
        tags.update(key_tags)
        tags.update(_metric_tags(metrics))
        tags.update({f"onnx.{k}": str(v) for k, v in onnx_check.items()})
        tags["serving.inference_mode"] = served  # eval.inference_mode: the mode scored

        c = client()
        active = mlflow.active_run()
        if run_id and active is not None and active.info.run_id == run_id:
            run_ctx = contextlib.nullcontext(active)  # the caller's run: leave it open
        elif run_id:
            run_ctx = mlflow.start_run(run_id=run_id, nested=active is not None)
        else:
            run_ctx = mlflow.start_run(
                experiment_id=experiment_id(c, cfg.train.experiment),
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
            if key_text is not None:
                mlflow.log_text(key_text, keys_lineage.TRAIN_KEYS_ARTIFACT)
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
    set_challenger(name, int(mv.version), reason=f"registered v{mv.version}")
    return get_version(name, int(mv.version))


def _train_keys(
    explicit: str | None, trained_cfg, checkpoint: Path
) -> tuple[dict[str, str], str | None]:
    """(tags, keys file text) of the training keys; ({...unavailable}, None) if unknown."""
    shards = explicit or (trained_cfg.data.shards if trained_cfg is not None else None)
    if not shards:
        return {"lineage.train_keys": "unavailable: no training shards known"}, None
    try:
        return keys_lineage.train_key_tags(shards)
    except P2PError as e:
        if explicit:
            raise RegistryError(
                redact_uri(f"--train-shards {explicit}: cannot read its keys ({e})")
            ) from None
        why = redact_uri(str(e))
        log.warning("%s: training keys not recorded: %s", checkpoint, why)
        return {"lineage.train_keys": f"unavailable: {why[:200]}"}, None


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
    # the trivial baselines on the same test images (p2p.evaluation.baselines)
    labels = metrics.get("baseline_labels") or {}
    for name, scores in (metrics.get("baselines") or {}).items():
        tags[f"baseline.{name}"] = str(labels.get(name, name))
        tags.update({f"baseline.{name}.{k}": repr(float(v)) for k, v in scores.items()})
    for name, v in (metrics.get("margins_psnr") or {}).items():
        tags[f"margin.{name}.psnr"] = repr(float(v))
    if "beats_baselines" in metrics:
        tags["eval.beats_baselines"] = str(bool(metrics["beats_baselines"])).lower()
    return tags
