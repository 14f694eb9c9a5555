"""The promotion gate: move `champion` to a challenger only if it beats the champion fairly.

Fair means: both scores on the same test set (same shards, split, transform and eval mode:
the `eval.testset` key; a champion scored on another test set is scored again now), and that
test set shares no sample with either model's training data (p2p.registry.lineage). The
decision, both scores and what the champion was are gate.* tags on the challenger; the move
itself is compare-and-set against that champion (p2p.registry.aliases.promote).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from p2p.registry import lineage
from p2p.registry.aliases import ChampionChanged, promote
from p2p.registry.register import HIGHER_IS_BETTER
from p2p.registry.versions import (
    CHAMPION,
    ModelVersionInfo,
    RegistryError,
    alias_version,
    client,
    download,
    get_version,
    mlflow_errors,
    now,
    version_config,
)


@dataclass(frozen=True)
class GateDecision:
    """The outcome of `promotion_gate`; also recorded as gate.* tags on the version.

    outcome: promoted | rejected (not better by the margin) | refused (the test set overlaps
    a model's training data: no comparison) | aborted (the champion changed between the
    decision and the move: nothing moved).
    """

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
    outcome: str = ""
    train_overlap: tuple[str, ...] = ()  # why a comparison was refused, one line per model


@mlflow_errors
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
    metric's better direction); with no champion the challenger is promoted. No comparison is
    made on a test set either model trained on (outcome "refused"), and the champion is moved
    only if it is still the one compared against (else outcome "aborted").

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
    c = client()
    chal = get_version(name, version)
    if cfg is None:
        cfg = version_config(chal)
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
    champ_v = alias_version(c, name, CHAMPION)  # what this decision is made against
    champ = get_version(name, champ_v) if champ_v not in (None, chal.version) else None
    overlaps, unknown = _training_overlap(chal, champ)
    champ_score, rescored = None, False
    if champ_v == chal.version:
        outcome, reason = "rejected", "already the champion"
        champ_score = c_score
    elif overlaps:
        outcome = "refused"
        reason = "refusing to judge on training data: " + "; ".join(o.text() for o in overlaps)
    elif champ is None:
        outcome, reason = "promoted", "no champion yet"
    else:
        same = champ.tags.get("eval.testset") and champ.tags.get("eval.testset") == chal.tags.get(
            "eval.testset"
        )
        champ_score = _score(champ, metric) if same else None
        if champ_score is None:
            champ_score = _rescore(champ, chal, cfg, metric)
            rescored = True
        gain = (c_score - champ_score) if higher else (champ_score - c_score)
        direction = "higher" if higher else "lower"
        outcome = "promoted" if gain > margin else "rejected"
        reason = (
            f"{metric} {c_score:.6g} vs champion v{champ_v} {champ_score:.6g} "
            f"({direction} is better): improvement {gain:.6g} "
            f"{'>' if outcome == 'promoted' else '<='} margin {margin:g}"
        )
    if outcome == "promoted":
        try:  # compare-and-set: only if the champion is still champ_v
            promote(name, chal.version, reason=f"gate: {reason}", expect=champ_v)
        except ChampionChanged as e:
            outcome, reason = "aborted", f"{reason}; ABORTED: {e}"
    decision = GateDecision(
        name=name,
        version=chal.version,
        metric=metric,
        margin=margin,
        higher_is_better=higher,
        challenger_score=c_score,
        champion_version=champ_v,
        champion_score=champ_score,
        promoted=outcome == "promoted",
        reason=reason,
        rescored_champion=rescored,
        outcome=outcome,
        train_overlap=tuple(o.text() for o in overlaps),
    )
    tags = {
        "gate.decision": outcome,
        "gate.reason": reason[:4000],
        "gate.metric": metric,
        "gate.margin": repr(margin),
        "gate.higher_is_better": str(higher).lower(),
        "gate.challenger_score": repr(c_score),
        "gate.champion_version": "" if champ_v is None else str(champ_v),
        "gate.champion_score": "" if champ_score is None else repr(champ_score),
        "gate.champion_rescored": str(rescored).lower(),
        "gate.testset": chal.tags.get("eval.testset", ""),
        "gate.train_overlap": " | ".join(decision.train_overlap)[:4000],
        "gate.train_overlap_count": str(sum(o.count for o in overlaps)),
        "gate.train_keys_unknown": ",".join(f"v{v}" for v in unknown),
        "gate.at": now(),
    }
    for k, v in tags.items():
        c.set_model_version_tag(name, str(chal.version), k, v)
    return decision


def _training_overlap(
    chal: ModelVersionInfo, champ: ModelVersionInfo | None
) -> tuple[list[lineage.Overlap], list[int]]:
    """(overlaps of the test set with each model's training keys, versions with no recorded
    training keys). The test set is the challenger's: eval.shards, eval.split."""
    models = [(chal, "challenger")] + ([(champ, "champion")] if champ is not None else [])
    if not any(lineage.TAG_SHA in v.tags for v, _ in models):
        return [], [v.version for v, _ in models]
    shards, split = chal.tags.get("eval.shards"), chal.tags.get("eval.split", "test")
    if not shards:
        raise RegistryError(f"{chal.uri}: no eval.shards tag: cannot read the test set's keys")
    try:
        test_keys = set(lineage.split_keys(shards, split))
    except Exception as e:  # noqa: BLE001 - unreadable test set: no fair check possible
        raise RegistryError(
            f"{chal.uri}: cannot read the keys of its test set {shards} ({split}) to check "
            f"them against the training data: {e}"
        ) from None
    overlaps, unknown = [], []
    for v, role in models:
        found = lineage.overlap(v, role, test_keys)
        if found == "unknown":
            unknown.append(v.version)
        elif found is not None:
            overlaps.append(found)
    return overlaps, unknown


def _score(v: ModelVersionInfo, metric: str) -> float | None:
    raw = v.tags.get(f"metric.{metric}")
    try:
        x = float(raw) if raw is not None else None
    except ValueError:  # "unavailable: ..."
        return None
    return x if x is not None and math.isfinite(x) else None


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
        ckpt = download(champ, ARTIFACT_GENERATOR, Path(tmp))
        result = evaluate_checkpoint(ckpt, shards, cfg, Path(tmp) / "eval", split=split)
    if result.get("testset") != chal.tags.get("eval.testset"):
        raise RegistryError(
            f"scoring {champ.uri} on {shards} did not reproduce the test set {chal.uri} was "
            f"scored on (data version {result.get('data_version')} vs "
            f"{chal.tags.get('eval.data_version')}; the shards or the eval settings differ): "
            "evaluate the challenger again, or pass the config it was evaluated with"
        )
    return float(result[metric])
