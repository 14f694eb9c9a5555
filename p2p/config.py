"""Experiment configuration: params.yaml -> frozen, typed dataclasses.

params.yaml is the one file users edit. It is read once, dotted overrides
(`--set train.lr=1e-4`, the same spelling as `dvc exp run -S` and MLflow params)
are applied, and the result is validated into `ExperimentConfig`. Unknown keys and
wrongly typed values are errors that name the key. Across process boundaries (Ray
workers, checkpoints) the config travels as `to_dict()` and comes back through
`ExperimentConfig.from_dict()`.

The defaults are the paper's / reference implementation's pix2pix defaults.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A params file or override is invalid; the message names the key."""


# ----------------------------------------------------------------------------- groups


@dataclass(frozen=True)
class DataConfig:
    name: str = "demo"  # dataset name: raw pairs live in data/raw/<name>
    source: str = "demo"  # `p2p data prepare` input: "demo" or a folder to import/build from
    source_format: Literal["aligned", "folders", "photos"] = "aligned"  # layout of data.source
    on_error: Literal["fail", "skip"] = "fail"  # bad input pairs: stop, or skip and report
    raw_dir: str = "data/raw/demo"  # canonical raw layout written by `p2p data import|build|demo`
    shards: str = "data/shards/demo"  # WebDataset shard dir or s3://bucket/prefix
    direction: Literal["AtoB", "BtoA"] = "AtoB"  # which side is the input (facades needs BtoA)
    input_nc: int = 3  # input channels: 3 RGB, 1 grayscale
    output_nc: int = 3  # output channels
    load_size: int = 286  # resize to this before the random crop (paper: 286)
    crop_size: int = 256  # random crop, the training resolution (paper: 256)
    preprocess: Literal["resize_and_crop", "crop", "resize", "none"] = "resize_and_crop"
    flip: bool = True  # random horizontal flip, the same for A and B
    shard_max_count: int = 64  # samples per shard at most
    shard_max_size: int = 256_000_000  # bytes per shard at most
    shard_max_member: int = 64 * 2**20  # bytes per image in a shard at most (readers reject more)
    image_format: Literal["png", "jpg"] = "png"  # encoding of images inside shards
    loader_workers: int = 2  # DataLoader worker processes per training worker
    shuffle_buffer: int = 64  # samples in the streaming shuffle buffer

    def __post_init__(self) -> None:
        if self.input_nc not in (1, 3) or self.output_nc not in (1, 3):
            raise ConfigError("data.input_nc and data.output_nc must be 1 or 3")
        if self.preprocess == "resize_and_crop" and self.crop_size > self.load_size:
            raise ConfigError(
                f"data.crop_size ({self.crop_size}) must be <= data.load_size ({self.load_size})"
            )
        _positive(
            self, "load_size", "crop_size", "shard_max_count", "shard_max_size", "shard_max_member"
        )


@dataclass(frozen=True)
class BuildConfig:
    """How pairs are made from plain photos (`p2p data build`, `p2p data demo`)."""

    task: Literal["edges", "colorize", "superres"] = "edges"  # edges->photo, gray->color, low->high
    num_pairs: int = 240  # pairs in all splits together (crops spread over the photos)
    size: int = 256  # side of each square pair image
    seed: int = 0  # builds are deterministic for a given seed
    val_fraction: float = 0.1
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        _positive(self, "num_pairs", "size")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1) or (
            self.val_fraction + self.test_fraction >= 1
        ):
            raise ConfigError("build.val_fraction + build.test_fraction must be in [0, 1)")


@dataclass(frozen=True)
class ModelConfig:
    generator: Literal["unet", "resnet"] = "unet"  # U-Net (pix2pix) or ResNet (CycleGAN-style)
    num_downs: int = 8  # U-Net depth: 8 for 256 px (unet_256), 7 for 128 px
    resnet_blocks: int = 9  # ResNet generator: 6 or 9 blocks
    base_channels: int = 64  # ngf in the paper: filters in the first G layer
    discriminator: Literal["basic", "n_layers", "pixel"] = "basic"  # basic = 70x70 PatchGAN
    disc_layers: int = 3  # n_layers_D; basic is 3
    disc_channels: int = 64  # ndf in the paper
    norm: Literal["batch", "instance", "none"] = "batch"  # pix2pix uses batch norm at batch 1
    use_dropout: bool = True  # dropout 0.5 in the 3 decoder blocks next to the bottleneck
    init_type: Literal["normal", "xavier", "kaiming", "orthogonal"] = "normal"
    init_gain: float = 0.02

    def __post_init__(self) -> None:
        if not 1 <= self.num_downs <= 10:
            raise ConfigError("model.num_downs must be between 1 and 10")
        _positive(self, "base_channels", "disc_channels", "disc_layers", "resnet_blocks")


@dataclass(frozen=True)
class LossConfig:
    gan_mode: Literal["vanilla", "lsgan", "wgangp"] = "vanilla"  # vanilla = BCE on logits
    lambda_l1: float = 100.0  # weight of the L1 term (paper: 100)
    lambda_gp: float = 10.0  # gradient penalty weight, wgangp only


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 2e-4  # Adam learning rate for G and D
    beta1: float = 0.5
    beta2: float = 0.999
    lr_policy: Literal["linear", "step", "plateau", "cosine"] = "linear"
    n_epochs: int = 100  # epochs at the initial lr
    n_epochs_decay: int = 100  # epochs of linear decay to zero
    lr_decay_iters: int = 50  # step policy: multiply by 0.1 every this many epochs

    def __post_init__(self) -> None:
        _positive(self, "lr")
        if self.n_epochs < 0 or self.n_epochs_decay < 0:
            raise ConfigError("optim.n_epochs and optim.n_epochs_decay must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 1  # GLOBAL batch; each of N workers gets batch_size // N
    epochs: int = 0  # 0 = optim.n_epochs + optim.n_epochs_decay
    steps_per_epoch: int = 0  # 0 = train samples // batch_size
    seed: int = 0
    run_name: str = ""  # Ray/MLflow run name; "" = derived from data + params (resumable)
    storage_path: str = "runs"  # checkpoint root: a local dir or s3://bucket/prefix
    checkpoint_every: int = 1  # epochs between checkpoints
    keep_checkpoints: int = 3
    log_every: int = 10  # steps between console/MLflow metric logs
    val_batches: int = 4  # validation batches per epoch (per rank)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast on GPU
    channels_last: bool = False
    compile: bool = False  # torch.compile the generator and discriminator
    experiment: str = "p2p"  # MLflow experiment name

    def __post_init__(self) -> None:
        _positive(self, "batch_size", "checkpoint_every", "keep_checkpoints", "log_every")


@dataclass(frozen=True)
class ResourcesConfig:
    num_workers: int = 1  # Ray Train workers (one process per GPU, or CPU workers)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # used only with use_gpu
    max_failures: int = 3  # worker failures Ray Train recovers from per run
    address: str = ""  # "" = local Ray; "auto", "ray://host:10001" or "http://head:8265"

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise ConfigError("resources.num_workers must be >= 0")


@dataclass(frozen=True)
class EvalConfig:
    metric: Literal["psnr", "ssim", "l1"] = "psnr"  # the metric of the promotion gate
    margin: float = 0.0  # a challenger must beat the champion by more than this
    num_samples: int = 8  # images in the sample grid
    batch_size: int = 4
    model_name: str = "pix2pix"  # MLflow registered model name
    eval_mode: bool = True  # False keeps dropout and batch statistics on (the paper's noise)


@dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.model.generator == "unet" and self.data.crop_size % (2**self.model.num_downs):
            raise ConfigError(
                f"data.crop_size ({self.data.crop_size}) must be a multiple of "
                f"2**model.num_downs ({2**self.model.num_downs})"
            )
        n = max(self.resources.num_workers, 1)
        if self.train.batch_size % n:
            raise ConfigError(
                f"train.batch_size ({self.train.batch_size}) is the global batch and must be "
                f"divisible by resources.num_workers ({n})"
            )

    # -- conversions ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        return _build(cls, d, prefix="")

    def flat(self) -> dict[str, Any]:
        """Dotted keys, e.g. {"train.lr": ...}: the spelling of DVC params and MLflow params."""
        return {f"{g}.{k}": v for g, sub in self.to_dict().items() for k, v in sub.items()}

    def params_hash(self) -> str:
        """Short stable hash of the whole config (idempotency keys, run names)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def replace(self, **overrides: Any) -> ExperimentConfig:
        """Copy with dotted overrides applied: cfg.replace(**{"train.lr": 1e-4})."""
        return apply_overrides(self.to_dict(), overrides)

    @property
    def epochs(self) -> int:
        return self.train.epochs or (self.optim.n_epochs + self.optim.n_epochs_decay)


# ----------------------------------------------------------------------------- loading


def load_config(
    path: str | Path | None = "params.yaml", overrides: list[str] | dict[str, Any] | None = None
) -> ExperimentConfig:
    """Read params.yaml (if it exists or is given), apply dotted overrides, validate.

    Args:
        path: YAML file; None or a missing default "params.yaml" gives the built-in defaults.
        overrides: ["train.lr=1e-4", ...] (values parsed as YAML) or {"train.lr": 1e-4}.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if p.exists():
            try:
                raw = yaml.safe_load(p.read_text()) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"{p}: not valid YAML: {e}") from None
            if not isinstance(raw, dict):
                raise ConfigError(f"{p}: top level must be a mapping of groups")
        elif str(path) != "params.yaml":
            raise ConfigError(f"{p}: params file not found")
    return apply_overrides(raw, parse_overrides(overrides))


def parse_overrides(overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"override {item!r}: expected group.key=value, e.g. train.lr=1e-4")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> ExperimentConfig:
    merged = {g: dict(v) if isinstance(v, dict) else v for g, v in raw.items()}
    for key, value in overrides.items():
        group, _, name = key.partition(".")
        if not name or "." in name:
            raise ConfigError(f"override {key!r}: expected group.key")
        merged.setdefault(group, {})
        if not isinstance(merged[group], dict):
            raise ConfigError(f"{group}: must be a mapping")
        merged[group][name] = value
    return ExperimentConfig.from_dict(merged)


def to_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


# ----------------------------------------------------------------------------- internals


def _positive(obj: Any, *names: str) -> None:
    group = _GROUP_OF.get(type(obj), type(obj).__name__)
    for n in names:
        if getattr(obj, n) <= 0:
            raise ConfigError(f"{group}.{n} must be > 0, got {getattr(obj, n)!r}")


def _build(cls: type, d: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "params"
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(
            f"unknown key '{prefix}{unknown[0]}'"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + f"; valid keys in {where}: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in d.items():
        tp = hints[name]
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value if value is not None else {}, f"{key}.")
        else:
            kwargs[name] = _coerce(tp, value, key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:  # pragma: no cover - defensive
        raise ConfigError(f"{where}: {e}") from None


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "2e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value  # pragma: no cover


_GROUP_OF = {
    DataConfig: "data",
    BuildConfig: "build",
    ModelConfig: "model",
    LossConfig: "loss",
    OptimConfig: "optim",
    TrainConfig: "train",
    ResourcesConfig: "resources",
    EvalConfig: "eval",
}
