"""Generator checkpoints: p2p's self-describing file, and reference `latest_net_G.pth` files.

A p2p generator file is one `torch.save`d dict of plain values and tensors (it loads with
`weights_only=True`):

    {"format": "p2p.generator", "schema_version": 1, "p2p_version": "0.1.0",
     "config": cfg.to_dict(), "step": int, "epoch": int, "generator": state_dict, "extra": {...}}

A reference (junyanz/pytorch-CycleGAN-and-pix2pix) generator file is a bare state_dict. p2p's
`UnetGenerator` and `ResnetGenerator` use the reference's module names, so the keys map onto
p2p's one to one (the key mapping is the identity, after dropping a `module.` / `_orig_mod.`
prefix). The architecture is not stored in such a file, so it is read off the key names and the
tensor shapes (`infer_reference_generator`), a p2p network is built and the weights are loaded
strictly: every tensor must find its place and every place must be filled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from p2p import __version__
from p2p.atomic import write_atomic
from p2p.config import ConfigError, ExperimentConfig
from p2p.errors import P2PError

FORMAT = "p2p.generator"
SCHEMA_VERSION = 1

# Key prefixes that wrappers add to a state_dict (DataParallel/DDP, torch.compile).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


# ----------------------------------------------------------------------------- save


_PARALLEL = (nn.DataParallel, nn.parallel.DistributedDataParallel)


def unwrap(module: nn.Module, *, keep_compiled: bool = False) -> nn.Module:
    """The bare network under DDP/DataParallel (`.module`) and torch.compile (`._orig_mod`).

    keep_compiled: strip only the data-parallel wrappers and keep a compiled network compiled
    (the training step runs its frozen D so, outside DDP); a compile wrapper around DDP goes
    with the DDP under it: torch.compile(DDP(net)) -> net.
    """
    while True:
        if isinstance(module, _PARALLEL):
            module = module.module
        elif hasattr(module, "_orig_mod") and (
            not keep_compiled or isinstance(module._orig_mod, _PARALLEL)
        ):
            module = module._orig_mod
        else:
            return module


def save_generator(
    path: str | Path,
    g: nn.Module,
    cfg: ExperimentConfig,
    *,
    step: int = 0,
    epoch: int = 0,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a self-describing generator checkpoint atomically (temp file + os.replace).

    Args:
        path: destination file (parent folders are created).
        g: the generator; DDP/compile wrappers are removed, tensors are saved on CPU.
        cfg: the run's config; stored as cfg.to_dict() so the file rebuilds its own network.
        step: optimizer steps done.
        epoch: epochs done.
        extra: more plain values (str/int/float/bool/None, lists, dicts, tensors), e.g. metrics.

    Returns:
        The path written.
    """
    path = Path(path)
    extra = dict(extra or {})
    _check_plain(extra, "extra")
    state = {k: v.detach().cpu() for k, v in unwrap(g).state_dict().items()}
    payload = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "p2p_version": __version__,
        "config": cfg.to_dict(),
        "step": int(step),
        "epoch": int(epoch),
        "generator": state,
        "extra": extra,
    }

    # readers see the old file or the new one, never half of one
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(payload, f)

    write_atomic(path, write)
    return path


# ----------------------------------------------------------------------------- load


def load_generator(
    path: str | Path, device: str | torch.device = "cpu", eval_mode: bool = True
) -> nn.Module:
    """Load a generator from a p2p checkpoint or a reference `latest_net_G.pth`.

    Args:
        path: the file.
        device: where the returned module lives.
        eval_mode: return it in eval mode (running BN statistics, no dropout); False keeps
            train mode (the paper's test-time noise).

    Raises:
        P2PError: naming the file, if it is missing, not a torch file, or not a generator
            checkpoint p2p recognises.
    """
    path = Path(path)
    obj = _torch_load(path)
    if _is_p2p(obj):
        cfg = _config_of(obj, path)
        g = _bare_generator(cfg)
        _load_strict(g, obj["generator"], path)
    else:
        state = reference_state_dict(obj, path)
        spec = infer_reference_generator(state, path)
        g = _build_reference(spec)
        _load_strict(g, state, path)
    g.to(device)
    return g.eval() if eval_mode else g.train()


def read_generator_config(path: str | Path) -> ExperimentConfig | None:
    """The config stored in a p2p checkpoint; None for a reference file (it stores none).

    Raises:
        P2PError: naming the file, if it is not a generator checkpoint at all.
    """
    path = Path(path)
    obj = _torch_load(path, mmap=True)  # mmap: the weights are not read
    if _is_p2p(obj):
        return _config_of(obj, path)
    infer_reference_generator(reference_state_dict(obj, path), path)  # validate
    return None


def read_checkpoint_info(path: str | Path) -> dict[str, Any]:
    """Metadata of a checkpoint without the weights: format, schema/p2p version, step, epoch,
    extra, and for reference files the inferred architecture."""
    path = Path(path)
    obj = _torch_load(path, mmap=True)
    if _is_p2p(obj):
        _config_of(obj, path)
        return {
            k: obj.get(k)
            for k in ("format", "schema_version", "p2p_version", "step", "epoch", "extra")
        }
    spec = infer_reference_generator(reference_state_dict(obj, path), path)
    return {"format": "reference", **spec}


# ----------------------------------------------------------------------------- reference files


def reference_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """A bare state_dict with wrapper prefixes (`module.`, `_orig_mod.`) removed."""
    if not isinstance(obj, dict) or not obj:
        raise P2PError(
            f"{path}: not a generator checkpoint (expected a p2p checkpoint or a state_dict)"
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise P2PError(
            f"{path}: not a generator checkpoint: entry {bad[0]!r} is not a named tensor "
            f"(keys: {', '.join(map(str, list(obj)[:5]))}...)"
        )
    state = dict(obj)
    stripped = True
    while stripped:  # e.g. "module._orig_mod.model..." from DDP(compile(net))
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped = True
    return state


def _unet_prefix(depth: int) -> str:
    """Key prefix of the U-Net block at `depth` (0 = outermost): the child sits at index 1 of the
    outermost block's Sequential and at index 3 of every middle block's."""
    return "model.model." if depth == 0 else "model.model.1.model." + "3.model." * (depth - 1)


def infer_reference_generator(state: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """Architecture of a reference-layout generator from its keys and shapes.

    U-Net: depth = number of nested down convs; ngf and input_nc from the first conv
    (ngf, in, 4, 4); output_nc from the last transposed conv (2*ngf, out, 4, 4); norm = batch if
    BN buffers exist, instance if the convs have biases (the reference's bias rule), else none.
    ResNet: first conv (ngf, in, 7, 7), residual blocks counted, dropout from the block indices.

    Returns:
        {"generator": "unet"|"resnet", "input_nc", "output_nc", "base_channels", "norm",
         "num_downs" (unet) | "resnet_blocks", "use_dropout" (resnet)}.
    """
    w0 = state.get("model.model.0.weight")
    if w0 is not None and w0.ndim == 4 and tuple(w0.shape[2:]) == (4, 4):
        num_downs = 1
        while _unet_prefix(num_downs) + "1.weight" in state:
            num_downs += 1
        last = "model.model.3.weight" if num_downs > 1 else "model.model.2.weight"
        if last not in state or state[last].ndim != 4:
            raise P2PError(f"{path}: U-Net-like keys but no outermost up conv {last!r}")
        return {
            "generator": "unet",
            "input_nc": int(w0.shape[1]),
            "output_nc": int(state[last].shape[1]),  # ConvTranspose2d weight: (in, out, k, k)
            "base_channels": int(w0.shape[0]),
            "num_downs": num_downs,
            "norm": _norm_of(state, first_conv_bias="model.model.0.bias"),
        }
    w0 = state.get("model.1.weight")
    if w0 is not None and w0.ndim == 4 and tuple(w0.shape[2:]) == (7, 7):
        blocks = sorted({k.split(".")[1] for k in state if ".conv_block." in k}, key=int)
        top = [k for k in state if len(k.split(".")) == 3 and k.endswith(".weight")]
        last = max(top, key=lambda k: int(k.split(".")[1]))  # the 7x7 output conv
        return {
            "generator": "resnet",
            "input_nc": int(w0.shape[1]),
            "output_nc": int(state[last].shape[0]),
            "base_channels": int(w0.shape[0]),
            "resnet_blocks": len(blocks),
            # With dropout the second conv of a block moves from index 5 to 6.
            "use_dropout": any(k.endswith(".conv_block.6.weight") for k in state),
            "norm": _norm_of(state, first_conv_bias="model.1.bias"),
        }
    sample = ", ".join(list(state)[:3])
    raise P2PError(
        f"{path}: unrecognised generator state_dict (expected reference unet_*/resnet_* keys "
        f"such as 'model.model.0.weight'; found {sample}...)"
    )


def _norm_of(state: dict[str, torch.Tensor], first_conv_bias: str) -> str:
    if any(k.endswith(".running_mean") for k in state):
        return "batch"
    # The reference gives convs a bias only with instance norm (affine=False: no norm params).
    return "instance" if first_conv_bias in state else "none"


def _build_reference(spec: dict[str, Any]) -> nn.Module:
    from p2p.models import ResnetGenerator, UnetGenerator

    if spec["generator"] == "unet":
        # Dropout has no weights; on by default as in pix2pix training (it acts in train mode only).
        return UnetGenerator(
            spec["input_nc"],
            spec["output_nc"],
            spec["num_downs"],
            spec["base_channels"],
            spec["norm"],
            use_dropout=True,
        )
    return ResnetGenerator(
        spec["input_nc"],
        spec["output_nc"],
        spec["base_channels"],
        spec["resnet_blocks"],
        spec["norm"],
        spec["use_dropout"],
    )


# ----------------------------------------------------------------------------- internals


def _torch_load(path: Path, mmap: bool = False) -> Any:
    if not path.exists():
        raise P2PError(f"{path}: checkpoint file not found")
    if not path.is_file():
        raise P2PError(f"{path}: is not a file")
    attempts = (True, False) if mmap else (False,)  # legacy (non-zip) files cannot be mmapped
    error: Exception | None = None
    for use_mmap in attempts:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
        except Exception as e:  # unpickling, zip, weights_only refusals: all mean "not ours"
            error = e
    text = str(error).strip()
    reason = text.splitlines()[0][:200] if text else type(error).__name__
    raise P2PError(f"{path}: not a readable torch checkpoint ({reason})")


def _is_p2p(obj: Any) -> bool:
    if not isinstance(obj, dict):
        return False
    return obj.get("format") == FORMAT or {"schema_version", "generator"} <= obj.keys()


def _config_of(obj: dict[str, Any], path: Path) -> ExperimentConfig:
    version = obj.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise P2PError(
            f"{path}: checkpoint schema_version {version!r} is newer than this p2p "
            f"({__version__}) reads (<= {SCHEMA_VERSION}); upgrade p2p"
        )
    if not isinstance(obj.get("generator"), dict) or not isinstance(obj.get("config"), dict):
        raise P2PError(f"{path}: p2p checkpoint without 'generator' weights or 'config'")
    try:
        return ExperimentConfig.from_dict(obj["config"])
    except ConfigError as e:
        raise P2PError(f"{path}: stored config is not valid for this p2p: {e}") from None


def _bare_generator(cfg: ExperimentConfig) -> nn.Module:
    """The network of `cfg` without the (random) init: its weights are loaded right after."""
    from p2p.architectures import generator_spec

    return generator_spec(cfg.model).build(cfg.model, cfg.data.input_nc, cfg.data.output_nc)


def _load_strict(g: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = g.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        (f"{len(missing)} missing, e.g. {missing[0]}" if missing else ""),
        (f"{len(unexpected)} unexpected, e.g. {unexpected[0]}" if unexpected else ""),
        (f"{len(wrong)} wrong shape, e.g. {wrong[0]}" if wrong else ""),
    ]
    problems = [p for p in problems if p]
    if problems:
        raise P2PError(f"{path}: weights do not fit the inferred network: {'; '.join(problems)}")
    g.load_state_dict(state, strict=True)


def _check_plain(obj: Any, where: str) -> None:
    """Only values that `torch.load(weights_only=True)` reads back are allowed in a checkpoint."""
    if obj is None or isinstance(obj, (str, int, float, bool, torch.Tensor)):
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} must be a str or int")
            _check_plain(v, f"{where}[{k!r}]")
    else:
        raise TypeError(f"{where}: {type(obj).__name__} cannot be stored in a checkpoint")
