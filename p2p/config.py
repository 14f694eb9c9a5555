"""Experiment configuration: params.yaml -> frozen, typed dataclasses.

params.yaml is the one file users edit. It is read once, dotted overrides
(`--set optim.lr=1e-4`, the same spelling as `dvc exp run -S` and MLflow params)
are applied, and the result is validated into `ExperimentConfig`. The params file is
trusted as configuration but validated: an unreadable file, bad YAML, an unknown key
(with "did you mean ..."), a wrongly typed value or a number outside its key's declared
range (`num(...)` beside each field; floats must be finite) is a one-line ConfigError
naming the file or key. Across process boundaries (Ray workers, checkpoints) the config
travels as `to_dict()` and comes back through `ExperimentConfig.from_dict()`.

The defaults are the paper's / reference implementation's pix2pix defaults.

Modules: `p2p.config_rules` holds the field rules (`num`/`Range`, `choice`/`Names`, type
coercion, `ConfigError`), re-exported here. What stays is one file on purpose (~530 lines):
the groups are the schema of params.yaml (one dataclass per section, each field with its
default, range and comment, most of the file), and loading, overrides, the "did you mean"
hints and the run-only keys all walk that one schema.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from p2p import architectures
from p2p.config_rules import ConfigError, Names, Range, choice, coerce, num

__all__ = [  # the field rules live in p2p.config_rules; importable from here as before
    "BUILD_TASK_NAMES",
    "DISCRIMINATOR_NAMES",
    "GENERATOR_NAMES",
    "RUN_ONLY_GROUPS",
    "RUN_ONLY_KEYS",
    "SEED_MAX",
    "BuildConfig",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ExperimentConfig",
    "LossConfig",
    "ModelConfig",
    "Names",
    "OptimConfig",
    "Range",
    "ResourcesConfig",
    "TrainConfig",
    "apply_overrides",
    "choice",
    "known_keys",
    "load_config",
    "model_params",
    "num",
    "parse_overrides",
    "to_yaml",
]


# ----------------------------------------------------------------------------- registries


def _build_tasks() -> Iterable[str]:
    from p2p.data.build_tasks import TASKS  # numpy + PIL: imported only when checked

    return TASKS


GENERATOR_NAMES = Names(lambda: architectures.GENERATORS)
DISCRIMINATOR_NAMES = Names(lambda: architectures.DISCRIMINATORS)
BUILD_TASK_NAMES = Names(_build_tasks)


SEED_MAX = 2**32 - 1  # numpy's seed range; torch and random take it too


class _Group:
    """Base of the param groups: checks every declared range and registry choice, then the
    group's own rules."""

    def __post_init__(self) -> None:
        group = _GROUP_OF.get(type(self), type(self).__name__)
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            rng, names = f.metadata.get("range"), f.metadata.get("choices")
            value = getattr(self, f.name)
            if rng is not None and value not in rng:
                raise ConfigError(f"{group}.{f.name}: {value!r} is out of range; allowed: {rng}")
            if names is not None and value not in names:
                raise ConfigError(f"{group}.{f.name}: {value!r} is not one of {', '.join(names)}")
        self._check()

    def _check(self) -> None:
        """Rules across the keys of one group (after each key's own range passed)."""


# ----------------------------------------------------------------------------- groups


@dataclass(frozen=True)
class DataConfig(_Group):
    name: str = "demo"  # dataset name: raw pairs live in data/raw/<name>
    source: str = "demo"  # `p2p data prepare` input: "demo" or a folder to import/build from
    source_format: Literal["aligned", "folders", "photos"] = "aligned"  # layout of data.source
    on_error: Literal["fail", "skip"] = "fail"  # bad input pairs: stop, or skip and report
    raw_dir: str = "data/raw/demo"  # canonical raw layout written by `p2p data import|build|demo`
    shards: str = "data/shards/demo"  # WebDataset shard dir or s3://bucket/prefix
    direction: Literal["AtoB", "BtoA"] = "AtoB"  # which side is the input (facades needs BtoA)
    input_nc: int = num(3, one_of=(1, 3))  # input channels: 3 RGB, 1 grayscale
    output_nc: int = num(3, one_of=(1, 3))  # output channels
    load_size: int = num(286, ge=1)  # resize to this before the random crop (paper: 286)
    crop_size: int = num(256, ge=1)  # random crop, the training resolution (paper: 256)
    preprocess: Literal["resize_and_crop", "crop", "resize", "none"] = "resize_and_crop"
    flip: bool = True  # random horizontal flip, the same for A and B
    shard_max_count: int = num(64, ge=1)  # samples per shard at most
    shard_max_size: int = num(256_000_000, ge=1)  # bytes per shard at most
    shard_max_member: int = num(64 * 2**20, ge=1)  # bytes per image in a shard, at most
    image_format: Literal["png", "jpg"] = "png"  # encoding of images inside shards
    loader_workers: int = num(2, ge=0)  # DataLoader worker processes per training worker
    shuffle_buffer: int = num(64, ge=0)  # samples in the streaming shuffle buffer (0, 1 = off)

    def _check(self) -> None:
        if self.preprocess == "resize_and_crop" and self.crop_size > self.load_size:
            raise ConfigError(
                f"data.crop_size ({self.crop_size}) must be <= data.load_size ({self.load_size})"
            )


@dataclass(frozen=True)
class BuildConfig(_Group):
    """How pairs are made from plain photos (`p2p data build`, `p2p data demo`)."""

    task: str = choice("edges", BUILD_TASK_NAMES)  # build_tasks.TASKS: edges, colorize, ...
    num_pairs: int = num(240, ge=1)  # pairs in all splits together (crops spread over the photos)
    size: int = num(256, ge=1)  # side of each square pair image
    seed: int = num(0, ge=0, le=SEED_MAX)  # builds are deterministic for a given seed
    val_fraction: float = num(0.1, ge=0, lt=1)
    test_fraction: float = num(0.1, ge=0, lt=1)

    def _check(self) -> None:
        if self.val_fraction + self.test_fraction >= 1:
            raise ConfigError("build.val_fraction + build.test_fraction must be in [0, 1)")


@dataclass(frozen=True)
class ModelConfig(_Group):
    generator: str = choice("unet", GENERATOR_NAMES)  # p2p.architectures: unet (pix2pix), resnet
    num_downs: int = num(8, ge=1, le=10)  # U-Net depth: 8 for 256 px (unet_256), 7 for 128 px
    resnet_blocks: int = num(9, ge=1)  # ResNet generator: 6 or 9 blocks
    base_channels: int = num(64, ge=1)  # ngf in the paper: filters in the first G layer
    discriminator: str = choice("basic", DISCRIMINATOR_NAMES)  # basic = 70x70 PatchGAN
    disc_layers: int = num(3, ge=1)  # n_layers_D; basic is 3
    disc_channels: int = num(64, ge=1)  # ndf in the paper
    norm: Literal["batch", "instance", "none"] = "batch"  # pix2pix uses batch norm at batch 1
    use_dropout: bool = True  # dropout 0.5 in the 3 decoder blocks next to the bottleneck
    init_type: Literal["normal", "xavier", "kaiming", "orthogonal"] = "normal"
    init_gain: float = num(0.02, gt=0)


@dataclass(frozen=True)
class LossConfig(_Group):
    gan_mode: Literal["vanilla", "lsgan", "wgangp"] = "vanilla"  # vanilla = BCE on logits
    lambda_l1: float = num(100.0, ge=0)  # weight of the L1 term (paper: 100; 0 = GAN only)
    lambda_gp: float = num(10.0, ge=0)  # gradient penalty weight, wgangp only


@dataclass(frozen=True)
class OptimConfig(_Group):
    lr: float = num(2e-4, gt=0)  # Adam learning rate for G and D
    beta1: float = num(0.5, ge=0, lt=1)  # Adam's betas are in [0, 1)
    beta2: float = num(0.999, ge=0, lt=1)
    lr_policy: Literal["linear", "step", "plateau", "cosine"] = "linear"
    n_epochs: int = num(100, ge=0)  # epochs at the initial lr
    n_epochs_decay: int = num(100, ge=0)  # epochs of linear decay to zero
    lr_decay_iters: int = num(50, ge=1)  # step policy: multiply by 0.1 every this many epochs


@dataclass(frozen=True)
class TrainConfig(_Group):
    batch_size: int = num(1, ge=1)  # GLOBAL batch; each of N workers gets batch_size // N
    epochs: int = num(0, ge=0)  # 0 = optim.n_epochs + optim.n_epochs_decay
    steps_per_epoch: int = num(0, ge=0)  # 0 = train samples // batch_size
    seed: int = num(0, ge=0, le=SEED_MAX)
    run_name: str = ""  # Ray/MLflow run name; "" = derived from data + params (resumable)
    storage_path: str = "runs"  # checkpoint root: a local dir or s3://bucket/prefix
    checkpoint_every: int = num(1, ge=1)  # epochs between checkpoints
    keep_checkpoints: int = num(3, ge=1)
    log_every: int = num(10, ge=1)  # steps between console/MLflow metric logs
    val_batches: int = num(4, ge=0)  # validation batches per epoch (per rank); 0 = none
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast on GPUs and bf16 CPUs (else fp32)
    channels_last: bool = False
    compile: bool = False  # torch.compile the generator and discriminator
    experiment: str = "p2p"  # MLflow experiment name


@dataclass(frozen=True)
class ResourcesConfig(_Group):
    num_workers: int = num(1, ge=0)  # Ray Train workers (one per GPU, or CPU); 0 = local mode
    use_gpu: bool = False
    cpus_per_worker: float = num(1.0, gt=0)
    gpus_per_worker: float = num(1.0, gt=0)  # used only with use_gpu; fractions share a GPU
    max_failures: int = num(3, ge=0)  # worker failures Ray Train recovers from per run
    address: str = ""  # "" = local Ray; "auto", "ray://host:10001" or "http://head:8265"


@dataclass(frozen=True)
class EvalConfig(_Group):
    metric: Literal["psnr", "ssim", "l1"] = "psnr"  # the metric of the promotion gate
    margin: float = num(0.0, ge=0)  # a challenger must beat the champion by more than this
    num_samples: int = num(8, ge=1)  # images in the sample grid
    batch_size: int = num(4, ge=1)
    model_name: str = "pix2pix"  # MLflow registered model name
    # How the generator runs at test time, in evaluate, predict and serving (p2p.inference):
    # paper = dropout on + each image's own batch statistics (the paper, the reference's test.py
    # without --eval); eval = running statistics, no dropout (deterministic); auto = paper for
    # the paper's setting (batch norm at 1 image per worker), else eval. ExperimentConfig
    # resolves auto, so a loaded config always holds paper or eval.
    inference_mode: Literal["auto", "paper", "eval"] = "auto"

    @property
    def eval_mode(self) -> bool:
        """True for inference_mode "eval" (the boolean key this replaced; still readable)."""
        return self.inference_mode == "eval"


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
        spec = architectures.GENERATORS[self.model.generator]
        m = spec.size_multiple(self.model)
        # preprocess "resize" trains at load_size (as the reference); every other mode at crop
        sizes = ["crop_size"] + (["load_size"] if self.data.preprocess == "resize" else [])
        for k in sizes:
            if getattr(self.data, k) % m:
                raise ConfigError(
                    f"data.{k} ({getattr(self.data, k)}) must be a multiple of "
                    f"{m} ({spec.size_rule}, model.generator {self.model.generator})"
                )
        n = max(self.resources.num_workers, 1)
        if self.train.batch_size % n:
            raise ConfigError(
                f"train.batch_size ({self.train.batch_size}) is the global batch and must be "
                f"divisible by resources.num_workers ({n})"
            )
        if self.eval.inference_mode == "auto":  # the paper's setting -> the paper's mode
            paper = self.model.norm == "batch" and self.train.batch_size // n == 1
            ev = dataclasses.replace(self.eval, inference_mode="paper" if paper else "eval")
            object.__setattr__(self, "eval", ev)
        if self.epochs < 1:
            raise ConfigError(
                "train.epochs is 0 (= optim.n_epochs + optim.n_epochs_decay) and both are 0: "
                "set train.epochs or optim.n_epochs to at least 1"
            )

    # -- conversions ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        return _build(cls, _legacy_eval_mode(d), prefix="")

    def flat(self) -> dict[str, Any]:
        """Dotted keys, e.g. {"optim.lr": ...}: the spelling of DVC params and MLflow params."""
        return {f"{g}.{k}": v for g, sub in self.to_dict().items() for k, v in sub.items()}

    def params_hash(self) -> str:
        """Short stable hash of the whole config (idempotency keys, run names)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def model_hash(self) -> str:
        """Short stable hash of the keys that define the trained model (`model_params`): equal
        for the same training wherever it ran and whichever paths it used. The lineage hash of
        MLflow runs (`p2p.params_hash`), metrics.json and registered versions."""
        blob = json.dumps(model_params(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def replace(self, **overrides: Any) -> ExperimentConfig:
        """Copy with dotted overrides applied: cfg.replace(**{"optim.lr": 1e-4})."""
        return apply_overrides(self.to_dict(), overrides)

    @property
    def epochs(self) -> int:
        return self.train.epochs or (self.optim.n_epochs + self.optim.n_epochs_decay)


# Keys that do not change the trained model: where and how a run executes (Ray resources,
# storage, run and experiment names, logging and checkpoint cadence, compile/memory layout),
# where the data is read from (its identity is the data version, recorded next to the hash),
# and the groups only data preparation and evaluation read.
RUN_ONLY_KEYS = frozenset(
    {
        "train.run_name",
        "train.storage_path",
        "train.experiment",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.log_every",
        "train.val_batches",
        "train.compile",
        "train.channels_last",
        "data.name",
        "data.source",
        "data.source_format",
        "data.on_error",
        "data.raw_dir",
        "data.shards",
        "data.shard_max_count",
        "data.shard_max_size",
        "data.shard_max_member",
        "data.loader_workers",
    }
)
RUN_ONLY_GROUPS = ("resources.", "eval.", "build.")


def model_params(cfg: ExperimentConfig) -> dict[str, Any]:
    """The dotted keys that define the trained model: `cfg.flat()` without RUN_ONLY_KEYS and
    RUN_ONLY_GROUPS (what `ExperimentConfig.model_hash` covers)."""
    return {
        k: v
        for k, v in cfg.flat().items()
        if k not in RUN_ONLY_KEYS and not k.startswith(RUN_ONLY_GROUPS)
    }


# ----------------------------------------------------------------------------- loading


def load_config(
    path: str | Path | None = "params.yaml", overrides: list[str] | dict[str, Any] | None = None
) -> ExperimentConfig:
    """Read params.yaml (if it exists or is given), apply dotted overrides, validate.

    Args:
        path: YAML file; None or a missing default "params.yaml" gives the built-in defaults.
        overrides: ["optim.lr=1e-4", ...] (values parsed as YAML) or {"optim.lr": 1e-4}.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if p.exists():
            raw = _read_params(p)
        elif str(path) != "params.yaml":
            raise ConfigError(f"{p}: params file not found")
    return apply_overrides(raw, parse_overrides(overrides))


def parse_overrides(overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """["group.key=value", ...] -> {"group.key": value}; values are parsed as YAML."""
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or "." not in key:
            hint = _did_you_mean(key) or "e.g. optim.lr=1e-4"
            raise ConfigError(f"override {item!r}: expected group.key=value ({hint})")
        try:
            out[key] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(
                f"override {key}: {value!r} is not a YAML value ({_why(e)})"
            ) from None
    return out


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> ExperimentConfig:
    merged = {g: dict(v) if isinstance(v, dict) else v for g, v in raw.items()}
    for key, value in overrides.items():
        if key == "eval.eval_mode" and isinstance(value, bool):  # the older boolean override
            key, value = "eval.inference_mode", "eval" if value else "paper"
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


def known_keys() -> list[str]:
    """Every dotted key of the config, e.g. "optim.lr", in declaration order."""
    return [
        f"{g.name}.{f.name}"
        for g in dataclasses.fields(ExperimentConfig)
        for f in dataclasses.fields(g.default_factory())  # type: ignore[misc]
    ]


# ----------------------------------------------------------------------------- internals


def _legacy_eval_mode(d: Any) -> Any:
    """Read the old boolean `eval.eval_mode` (params files, registered configs) as
    `eval.inference_mode`: true -> eval, false -> paper. Both given and disagreeing is an error."""
    ev = d.get("eval") if isinstance(d, dict) else None
    if not isinstance(ev, dict) or "eval_mode" not in ev:
        return d
    ev = dict(ev)
    old = ev.pop("eval_mode")
    if not isinstance(old, bool):
        raise ConfigError(f"eval.eval_mode: expected true/false, got {old!r}")
    mode = "eval" if old else "paper"
    if ev.get("inference_mode", "auto") not in ("auto", mode):
        raise ConfigError(
            f"eval.eval_mode ({str(old).lower()}) contradicts eval.inference_mode "
            f"({ev['inference_mode']}); eval.eval_mode is replaced by eval.inference_mode"
        )
    ev["inference_mode"] = mode
    return {**d, "eval": ev}


def _read_params(p: Path) -> dict[str, Any]:
    """The mapping in params file `p`; every way it can be unreadable is one ConfigError line."""
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory, expected a params YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror or e}") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {_why(e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: top level must be a mapping of groups")
    return raw


def _why(e: yaml.YAMLError) -> str:
    """A YAML error as one line: the problem and where (PyYAML's own text spans lines)."""
    problem = getattr(e, "problem", None) or type(e).__name__
    mark = getattr(e, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def _did_you_mean(key: str) -> str:
    """'did you mean optim.lr?' for a mistyped dotted key (or group), '' when nothing is close.

    The same field name in another group wins (train.lr -> optim.lr); otherwise the keys whose
    field name, or whole dotted name, is closest in spelling (difflib).
    """
    keys = known_keys()
    group, dot, leaf = key.rpartition(".")
    if not dot:  # a bare name: a key without its group, or a mistyped group
        leaf = key
    exact = [k for k in keys if k.rpartition(".")[2] == leaf and k != key]
    if exact:
        candidates = exact
    elif not dot:
        groups = [f.name for f in dataclasses.fields(ExperimentConfig)]
        candidates = difflib.get_close_matches(key, groups, n=2, cutoff=0.6)
    else:
        by_leaf = {}
        for k in keys:
            by_leaf.setdefault(k.rpartition(".")[2], []).append(k)
        close = difflib.get_close_matches(leaf, list(by_leaf), n=3, cutoff=0.7)
        candidates = [k for name in close for k in by_leaf[name]]
        candidates += difflib.get_close_matches(key, keys, n=3, cutoff=0.8)
    unique = list(dict.fromkeys(candidates))[:3]
    return f"did you mean {' or '.join(unique)}?" if unique else ""


def _build(cls: type, d: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "params"
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names, key=str)
    if unknown:
        key = f"{prefix}{unknown[0]}"
        hint = _did_you_mean(key)
        raise ConfigError(
            f"unknown key '{key}'"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + (f"; {hint}" if hint else "")
            + f"; valid keys in {where}: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in d.items():
        tp = hints[name]
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value if value is not None else {}, f"{key}.")
        else:
            kwargs[name] = coerce(tp, value, key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:  # pragma: no cover - defensive
        raise ConfigError(f"{where}: {e}") from None


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
