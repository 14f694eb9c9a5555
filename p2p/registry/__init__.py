"""The MLflow model registry: register evaluated generators, gate promotions, roll back.

Every trained generator that passed evaluation becomes a new version of `eval.model_name` with
the alias `challenger`. Deployments consume `models:/NAME@champion`. The promotion gate moves
`champion` to a challenger only if it beats the current champion on the same test set by more
than `eval.margin` in `eval.metric` (or there is no champion), never on a test set either model
trained on, and only if the champion is still the one it compared against. Aliases only:
stages are deprecated in MLflow.

Modules, one concern each:

    versions   reaching MLflow (bounded wait, redacted errors), looking versions up, show, load
    register   checks, then log the pyfunc + ONNX model and register a version
    lineage    the training keys of a version (lineage/train_keys.txt) and test-set overlap
    gate       the promotion decision
    aliases    compare-and-set alias moves under a per-model lock, history, rollback

Tags on each version (keys are stable: flows and deployment teams read them):

    lineage.data_version      DVC data version the model was trained on (retrain_flow compares it)
    lineage.git_commit        code version (lineage.git_dirty: uncommitted changes present)
    lineage.params_hash       ExperimentConfig.model_hash() of the training config (the keys
                              that define the model: p2p.config.model_params)
    lineage.ray_run           Ray Train run (storage path / name)
    lineage.ray_checkpoint    Ray checkpoint URI the weights came from
    lineage.train_keys_*      sha256 / count / shards of the training keys (artifact
                              lineage/train_keys.txt of the version's run)
    metric.<name>             test metrics (l1, psnr, ssim, ...), eval.* how they were measured
    baseline.<name>[.<metric>] the trivial baselines on the same test images (input, untrained,
                              classical: what each is, and its scores); margin.<name>.psnr the
                              model's PSNR minus the baseline's (dB); eval.beats_baselines
    onnx.*                    how the ONNX export was verified (onnx.mode: its inference mode)
    serving.inference_mode    the mode the pyfunc and ONNX serve (eval.inference_mode: scored)
    gate.*                    the promotion decision, both scores, the metric and margin, and
                              any training-data overlap that made the gate refuse

The registered model keeps `p2p.champion_history` (a JSON stack of champions),
`p2p.rollbacks` (a JSON log) and `p2p.alias_log` (every alias move p2p made).
"""

from p2p.registry.aliases import (
    ALIAS_LOG_TAG,
    HISTORY_TAG,
    ROLLBACK_TAG,
    ChampionChanged,
    promote,
    rollback,
)
from p2p.registry.gate import GateDecision, promotion_gate
from p2p.registry.register import (
    HIGHER_IS_BETTER,
    LINEAGE_KEYS,
    REQUIRED_METRICS,
    check_metrics,
    lineage_from_training,
    log_and_register,
)
from p2p.registry.versions import (
    CHALLENGER,
    CHAMPION,
    ModelVersionInfo,
    RegistryError,
    find_version,
    get_version,
    load_registered_generator,
    mlflow_timeout_s,
    parse_model_uri,
    quote,
    show,
)

__all__ = [
    "ALIAS_LOG_TAG",
    "CHALLENGER",
    "CHAMPION",
    "HIGHER_IS_BETTER",
    "HISTORY_TAG",
    "LINEAGE_KEYS",
    "REQUIRED_METRICS",
    "ROLLBACK_TAG",
    "ChampionChanged",
    "GateDecision",
    "ModelVersionInfo",
    "RegistryError",
    "check_metrics",
    "find_version",
    "get_version",
    "lineage_from_training",
    "load_registered_generator",
    "log_and_register",
    "mlflow_timeout_s",
    "parse_model_uri",
    "promote",
    "promotion_gate",
    "quote",
    "rollback",
    "show",
]
