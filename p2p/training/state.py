"""Resumable training state: one checkpoint directory, three files.

    <checkpoint>/state.pt        everything needed to resume (loaded with weights_only=True)
    <checkpoint>/generator.pt    weights-only generator for evaluate/serve (p2p.checkpoints format)
    <checkpoint>/config.json     cfg.to_dict(): a checkpoint rebuilds its models without params.yaml
    <checkpoint>/train_log.csv   the metric rows logged so far (the DVC plot; survives resumes)
    <checkpoint>/metrics.json    the metrics reported with this checkpoint

state.pt holds plain containers and tensors only (no pickled objects), so it loads with
`torch.load(..., weights_only=True)`: RNG states are stored as tensors and lists. State dicts come
from the modules unwrapped from DDP (`.module`) and torch.compile (`._orig_mod`), so the keys never
start with `module.` or `_orig_mod.` and a checkpoint loads into a bare model.

RNG states are kept per rank (`rng[rank]`): rank 0 gathers them before saving. A resumed run with
the same world size continues every rank's random stream exactly; with another world size each
rank is reseeded from (seed, rank, step) instead (the data order is a function of (seed, epoch,
rank) anyway, see p2p.data.dataset.make_loader).
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from p2p import __version__
from p2p.atomic import write_atomic, write_text_atomic
from p2p.checkpoints import save_generator, unwrap  # unwrap: strips DDP .module / ._orig_mod
from p2p.config import RUN_ONLY_GROUPS, RUN_ONLY_KEYS
from p2p.errors import P2PError
from p2p.training.tracking import param_value

SCHEMA_VERSION = 1
STATE_FILE = "state.pt"
GENERATOR_FILE = "generator.pt"
CONFIG_FILE = "config.json"
LOG_FILE = "train_log.csv"
METRICS_FILE = "metrics.json"

# Columns of train_log.csv (one row per log step; val/* filled on the last row of an epoch).
LOG_COLUMNS = (
    "step",
    "epoch",
    "loss_d",
    "loss_g_gan",
    "loss_g_l1",
    "lr",
    "images_per_s",
    "val_l1",
    "val_psnr",
    "val_ssim",
)


@dataclass
class TrainState:
    """Everything that changes while training. Modules may be DDP- or compile-wrapped.

    `step` counts optimizer steps of G over the whole run (global, not per epoch); `epoch` is the
    number of finished epochs (the next epoch to run). `log` holds the train_log.csv rows so far.
    """

    g: nn.Module
    d: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    sched_g: Any = None  # torch.optim.lr_scheduler.LRScheduler | ReduceLROnPlateau
    sched_d: Any = None
    scaler_g: Any = None  # torch.amp.GradScaler (fp16 only; bf16 needs none)
    scaler_d: Any = None
    step: int = 0
    epoch: int = 0
    log: list[dict[str, float]] = field(default_factory=list)


# ----------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """This process's python/numpy/torch(/cuda) RNG states as weights_only-safe values."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": [
            np_name,
            torch.from_numpy(np_keys.astype(np.int64)),
            np_pos,
            np_has_gauss,
            np_gauss,
        ],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of rng_state()."""
    py_version, py_internal, py_gauss = state["python"]
    random.setstate((py_version, tuple(int(x) for x in py_internal), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    keys = np.asarray(np_keys.numpy() if torch.is_tensor(np_keys) else np_keys, dtype=np.uint32)
    np.random.set_state((np_name, keys, int(np_pos), int(np_has_gauss), float(np_gauss)))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- save / load


def save_state(
    directory: str | Path,
    state: TrainState,
    cfg: Any,
    *,
    rng: list[dict[str, Any]] | None = None,
    metrics: dict[str, float] | None = None,
) -> Path:
    """Write state.pt, generator.pt, config.json, train_log.csv and metrics.json into `directory`.

    Args:
        directory: the checkpoint directory (created; files are written atomically).
        state: the live training state.
        cfg: the ExperimentConfig of the run.
        rng: one rng_state() per rank (rank order); default: this process's only.
        metrics: the metrics reported with this checkpoint (stored for reference).

    Returns:
        The directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    g, d = unwrap(state.g), unwrap(state.d)
    blob = {
        "schema_version": SCHEMA_VERSION,
        "p2p_version": __version__,
        "step": int(state.step),
        "epoch": int(state.epoch),
        "G": g.state_dict(),
        "D": d.state_dict(),
        "opt_G": state.opt_g.state_dict(),
        "opt_D": state.opt_d.state_dict(),
        "sched_G": _state_dict_or_none(state.sched_g),
        "sched_D": _state_dict_or_none(state.sched_d),
        "scaler_G": _state_dict_or_none(state.scaler_g),
        "scaler_D": _state_dict_or_none(state.scaler_d),
        "rng": rng if rng is not None else [rng_state()],
        "config": cfg.to_dict(),
        "metrics": dict(metrics or {}),
        "log": [dict(r) for r in state.log],
    }
    write_atomic(directory / STATE_FILE, lambda tmp: torch.save(blob, tmp))
    save_generator(directory / GENERATOR_FILE, g, cfg, step=state.step, epoch=state.epoch)
    write_text_atomic(directory / CONFIG_FILE, json.dumps(cfg.to_dict(), indent=2) + "\n")
    write_text_atomic(directory / LOG_FILE, log_to_csv(state.log))
    summary = {"step": int(state.step), "epoch": int(state.epoch), **dict(metrics or {})}
    write_text_atomic(directory / METRICS_FILE, json.dumps(summary, indent=2) + "\n")
    return directory


def read_state(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate state.pt (weights_only=True). Raises P2PError naming the file."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise P2PError(f"{path}: checkpoint has no {STATE_FILE}")
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt file, or an object weights_only refuses
        raise P2PError(f"{path}: cannot load training state: {e}") from None
    if not isinstance(blob, dict) or "schema_version" not in blob:
        raise P2PError(f"{path}: not a p2p training state (no schema_version)")
    if blob["schema_version"] > SCHEMA_VERSION:
        raise P2PError(
            f"{path}: schema_version {blob['schema_version']} is newer than this p2p "
            f"({__version__}) understands ({SCHEMA_VERSION}); upgrade p2p"
        )
    return blob


def load_state(
    directory: str | Path,
    state: TrainState,
    *,
    rank: int = 0,
    world_size: int = 1,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Restore `state` in place from a checkpoint directory written by save_state().

    Models get their weights (strict), optimizers/schedulers/scalers their states, step/epoch/log
    their values, and this rank its RNG state when the checkpoint was written by the same number
    of ranks (else the caller reseeds).

    Returns:
        The raw blob (config dict, metrics, ...), with "rng_restored": bool added.
    """
    blob = read_state(directory, map_location=map_location)
    unwrap(state.g).load_state_dict(blob["G"])
    unwrap(state.d).load_state_dict(blob["D"])
    state.opt_g.load_state_dict(blob["opt_G"])
    state.opt_d.load_state_dict(blob["opt_D"])
    for obj, key in (
        (state.sched_g, "sched_G"),
        (state.sched_d, "sched_D"),
        (state.scaler_g, "scaler_G"),
        (state.scaler_d, "scaler_D"),
    ):
        if obj is not None and blob.get(key) is not None:
            obj.load_state_dict(blob[key])
    state.step = int(blob["step"])
    state.epoch = int(blob["epoch"])
    state.log = [dict(r) for r in blob.get("log", [])]
    rngs = blob.get("rng") or []
    blob["rng_restored"] = len(rngs) == world_size
    if blob["rng_restored"]:
        set_rng_state(rngs[rank])
    return blob


# ----------------------------------------------------------------------------- train log


def log_to_csv(rows: list[dict[str, float]]) -> str:
    """train_log.csv text: LOG_COLUMNS header, one row per log step, empty cells where unset."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in LOG_COLUMNS})
    return buf.getvalue()


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


# ----------------------------------------------------------------------------- internals


def _state_dict_or_none(obj: Any) -> dict[str, Any] | None:
    return None if obj is None else obj.state_dict()


# ----------------------------------------------------------------------------- changed params

# Keys that may differ between a checkpoint and the command that resumes it without changing
# what the model learns: where things run and are stored, how often to log, validate and
# checkpoint, how many epochs in all (continuing a run is how training is extended), and the
# groups only data preparation and evaluation read: the keys outside the model hash
# (p2p.config.RUN_ONLY_KEYS), less the shards (other data) and plus the epoch count. Any other
# change (lr, batch, loss weights, data, architecture) makes a different model: refused unless
# the user says so.
RESUMABLE_CHANGES = (RUN_ONLY_KEYS - {"data.shards"}) | {"train.epochs"}
RESUMABLE_GROUPS = RUN_ONLY_GROUPS


def changed_params(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Keys whose values differ between two `cfg.to_dict()`s: {dotted key: (old, new)}, the
    values as MLflow params spell them. Keys missing on one side count as changed."""
    flat_old, flat_new = _flat(old), _flat(new)
    return {
        k: (param_value(flat_old.get(k)), param_value(flat_new.get(k)))
        for k in sorted(set(flat_old) | set(flat_new))
        if param_value(flat_old.get(k)) != param_value(flat_new.get(k))
    }


def needs_permission(changed: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """The changes that alter what is trained (see RESUMABLE_CHANGES)."""
    return {
        k: v
        for k, v in changed.items()
        if k not in RESUMABLE_CHANGES and not k.startswith(RESUMABLE_GROUPS)
    }


def apply_optim_config(state: TrainState, old: dict[str, Any], optim: Any) -> bool:
    """Make a resumed run train with the current `optim` settings.

    The optimizer and scheduler states restored from a checkpoint carry the learning rate and
    betas the run started with; when `optim` changed since (`p2p train --allow-changed-params`),
    they are set to the new values: betas as given, the base lr as given, and the current lr at
    the same point of the (possibly changed) schedule. No-op when `optim` is unchanged.

    Args:
        state: the state just restored by load_state().
        old: the checkpoint's `optim` group (a dict).
        optim: the run's OptimConfig.

    Returns:
        True when something was changed.
    """
    keys = ("lr", "beta1", "beta2", "lr_policy", "n_epochs", "n_epochs_decay", "lr_decay_iters")
    if all(old.get(k) == getattr(optim, k) for k in keys):
        return False
    old_lr = float(old.get("lr") or optim.lr)
    for opt, sched in ((state.opt_g, state.sched_g), (state.opt_d, state.sched_d)):
        for i, group in enumerate(opt.param_groups):
            group["betas"] = (optim.beta1, optim.beta2)
            group["initial_lr"] = optim.lr
            lambdas = getattr(sched, "lr_lambdas", None)
            if lambdas:  # linear policy: base lr times the (new) schedule at this epoch
                group["lr"] = optim.lr * lambdas[i](sched.last_epoch)
            else:  # step/cosine/plateau: the schedule so far scales with the base lr
                group["lr"] = group["lr"] * optim.lr / old_lr
        if hasattr(sched, "base_lrs"):
            sched.base_lrs = [optim.lr] * len(opt.param_groups)
        if hasattr(sched, "_last_lr"):
            sched._last_lr = [g["lr"] for g in opt.param_groups]
    return True


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    return {f"{g}.{k}": v for g, sub in d.items() if isinstance(sub, dict) for k, v in sub.items()}
