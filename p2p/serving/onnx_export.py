"""ONNX export of a generator, with its input contract stored in the file, checked against torch.

torch 2.13's default exporter (`dynamo=True`) needs onnxscript; the TorchScript exporter
(`dynamo=False`) needs only the `onnx` package and handles the U-Net and ResNet generators,
with batch, height and width left dynamic.

**Input contract** (stored as ONNX `metadata_props`, read back with `read_contract`):

    p2p.input_name / p2p.output_name   "input" / "output"
    p2p.layout                         NCHW float32 (batch, channels, height, width)
    p2p.input_channels, p2p.output_channels
    p2p.range                          [-1, 1]: x = pixel / 127.5 - 1; pixel = (y + 1) * 127.5
    p2p.size_multiple                  H and W must be positive multiples of it
                                       (`p2p.architectures.size_multiple`: 2**num_downs for the
                                       U-Net, 256 for unet_256; 4 for the ResNet)
    p2p.resize                         how to feed other sizes: resize (bicubic) to the nearest
                                       multiple and resize the output back (what the pyfunc and
                                       `p2p predict` do), or pad (reflect) and crop the output
    p2p.inference_mode                 paper | eval (below); p2p.dropout says what dropout does
    p2p.seed_name                      paper mode: "seed", a second input (int64 scalar)

The bare graph cannot take other sizes: a 300x200 input to a unet_256 fails inside onnxruntime
with a Concat shape error. `run_onnx` checks the size first and says what is wrong; the MLflow
pyfunc takes any size.

**Modes.** `eval`: running BN statistics, no dropout, exactly torch's `g.eval()`. `paper`: the
paper's test mode, the same images as the pyfunc and `p2p predict`: every batch-norm layer
normalises each image with its own statistics (batch norm in train mode at batch 1, so an image
never depends on the others in the ONNX batch), and dropout is `p2p.inference.seeded_dropout`,
whose mask is integer arithmetic on a second, required input `seed` (int64 scalar; 0 is the seed
`p2p evaluate` scores with). The same image and seed give the same output as torch (to float
rounding), i.e. as the pyfunc and `p2p predict` with that seed.
ONNX's own Dropout cannot do this: its seed is a fixed attribute and onnxruntime advances its
generator between runs (checked: two runs of one session differ, a new session repeats the
first), so a request could not choose or reproduce its noise.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn

from p2p.atomic import write_atomic
from p2p.errors import P2PError

if TYPE_CHECKING:
    from p2p.config import ExperimentConfig

OPSET = 17
INPUT_NAME, OUTPUT_NAME, SEED_NAME = "input", "output", "seed"
PREFIX = "p2p."


class ImageStatsNorm(nn.Module):
    """A BatchNorm2d in the paper's test mode: each image normalised with its own mean and
    (biased) variance, then the BN's affine weight and bias (batch norm at batch 1)."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.eps = bn.eps
        self.weight = None if bn.weight is None else nn.Parameter(bn.weight.detach().clone())
        self.bias = None if bn.bias is None else nn.Parameter(bn.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        var = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True)
        y = (x - mean) / torch.sqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


class SeededDropout(nn.Module):
    """nn.Dropout as `seeded_dropout` with the seed set by PaperGraph for each forward."""

    def __init__(self, p: float, layer: int) -> None:
        super().__init__()
        self.p, self.layer = p, layer
        self.seed: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from p2p.inference import seeded_dropout

        return seeded_dropout(x, self.seed, self.layer, self.p)


class PaperGraph(nn.Module):
    """`forward(x, seed)`: the generator in paper mode (module docstring), for export."""

    def __init__(self, g: nn.Module) -> None:
        super().__init__()
        from p2p.inference import dropout_layers

        self.net = copy.deepcopy(g).cpu().eval()
        drops = {id(m): i for i, m in enumerate(dropout_layers(self.net))}
        self.drops: list[SeededDropout] = []

        def swap(parent: nn.Module) -> None:
            for name, child in parent.named_children():
                if isinstance(child, nn.BatchNorm2d):
                    setattr(parent, name, ImageStatsNorm(child))
                elif isinstance(child, nn.Dropout):
                    d = SeededDropout(child.p, drops[id(child)])
                    self.drops.append(d)
                    setattr(parent, name, d)
                else:
                    swap(child)

        swap(self.net)
        for attr in ("input_nc", "output_nc", "size_multiple"):
            if hasattr(self.net, attr):
                setattr(self, attr, getattr(self.net, attr))

    def forward(self, x: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
        from p2p.inference import HASH_PRIME

        s = seed.reshape(()).to(torch.int64) % HASH_PRIME
        for d in self.drops:
            d.seed = s
        return self.net(x)


def exportable(g: nn.Module, mode: str) -> nn.Module:
    """The module the ONNX graph of `mode` computes: `g` (eval mode) for "eval"; for "paper"
    a PaperGraph, `forward(x, seed)`."""
    from p2p.checkpoints import unwrap
    from p2p.inference import check_mode

    check_mode(mode)
    return unwrap(g) if mode == "eval" else PaperGraph(unwrap(g)).eval()


def contract(g: nn.Module, mode: str, cfg: ExperimentConfig | None = None) -> dict[str, str]:
    """The input contract of `g`'s export in `mode`, as metadata_props (module docstring);
    channels and size multiple from `g`'s attributes or `cfg` (`p2p.inference.geometry`)."""
    from p2p.inference import geometry

    in_nc, out_nc, multiple = geometry(g, cfg)
    return {
        f"{PREFIX}input_name": INPUT_NAME,
        f"{PREFIX}output_name": OUTPUT_NAME,
        f"{PREFIX}layout": "NCHW float32",
        f"{PREFIX}input_channels": str(in_nc),
        f"{PREFIX}output_channels": str(out_nc),
        f"{PREFIX}range": "[-1, 1]: x = pixel / 127.5 - 1; pixel = (y + 1) * 127.5",
        f"{PREFIX}size_multiple": str(multiple),
        f"{PREFIX}resize": (
            f"H and W must be positive multiples of {multiple}: resize (bicubic) to the nearest "
            "multiple and resize the output back (as the pyfunc does), or pad (reflect) to the "
            "next multiple and crop the output"
        ),
        f"{PREFIX}inference_mode": mode,
        f"{PREFIX}seed_name": SEED_NAME if mode == "paper" else "",
        f"{PREFIX}dropout": (
            "off (eval mode)"
            if mode == "eval"
            else f"p = 0.5, mask = p2p.inference.seeded_dropout of the required input "
            f"{SEED_NAME!r} (int64 scalar; 0 = the seed the scores used): the same image and "
            "seed give the same output"
        ),
        f"{PREFIX}normalization": (
            "batch norm running statistics"
            if mode == "eval"
            else "batch norm on each image's own statistics (batch of 1)"
        ),
    }


def export_onnx(
    g: nn.Module,
    path: str | Path,
    example: torch.Tensor,
    *,
    mode: str = "eval",
    cfg: ExperimentConfig | None = None,
) -> Path:
    """Write `g` in inference `mode` as ONNX, with its contract as metadata, atomically.

    Args:
        g: the generator; its training flag is kept.
        path: destination .onnx file.
        example: an input batch (N, C, H, W) to trace with; H, W multiples of the net's stride.
        mode: "eval" or "paper" (module docstring).
        cfg: its config; needed when `g` lacks input_nc/output_nc/size_multiple attributes.
    """
    try:
        import onnx
    except ImportError:
        raise P2PError("ONNX export needs the 'onnx' package (see requirements.lock)") from None
    path = Path(path)
    props = contract(g, mode, cfg)
    net = exportable(g, mode)
    paper = mode == "paper"
    was_training = g.training
    x = example.to(next(net.parameters()).device)
    args = (x, torch.tensor(0, dtype=torch.int64)) if paper else (x,)

    def export(tmp: str) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript exporter deprecation notices
            torch.onnx.export(
                net,
                args,
                tmp,
                dynamo=False,
                input_names=[INPUT_NAME, SEED_NAME] if paper else [INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=OPSET,
                dynamic_axes={
                    INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                    OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                },
            )
        model = onnx.load(tmp)
        onnx.helper.set_model_props(model, props)
        model.doc_string = f"p2p pix2pix generator ({mode} mode); contract in metadata_props p2p.*"
        onnx.save(model, tmp)

    g.eval()
    try:
        write_atomic(path, export)
    finally:
        g.train(was_training)
    return path


def read_contract(path: str | Path) -> dict[str, str]:
    """The p2p.* metadata of an exported file, keys without the prefix (P2PError if none)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError, OSError, ...
        raise P2PError(f"{path}: not a readable ONNX model ({e})") from None
    props = {
        p.key[len(PREFIX) :]: p.value for p in model.metadata_props if p.key.startswith(PREFIX)
    }
    if "size_multiple" not in props:
        raise P2PError(f"{path}: no p2p input contract in its metadata (not exported by p2p)")
    return props


def check_input(c: dict[str, str], shape: tuple[int, ...], where: str = "ONNX input") -> None:
    """A clear P2PError when `shape` breaks contract `c` (rank, channels, size multiple)."""
    m, nc = int(c["size_multiple"]), int(c["input_channels"])
    if len(shape) != 4:
        raise P2PError(f"{where}: expected NCHW (4 dims), got shape {tuple(shape)}")
    _, ch, h, w = shape
    if ch != nc:
        raise P2PError(f"{where}: the model takes {nc} channel(s), got {ch} (shape {tuple(shape)})")
    if h <= 0 or w <= 0 or h % m or w % m:
        fit = (max(m, round(h / m) * m), max(m, round(w / m) * m))
        raise P2PError(
            f"{where}: height x width {h}x{w} must be positive multiples of {m} "
            f"(p2p.size_multiple); resize to {fit[0]}x{fit[1]} (or pad) and resize the output "
            "back, or send the image to the MLflow pyfunc, which takes any size"
        )


def run_onnx(path: str | Path, x: Any, session: Any = None, *, seed: int | None = None) -> Any:
    """Run an exported generator on `x` (N, C, H, W float32 in [-1, 1], numpy or torch) after
    checking it against the file's contract; returns the numpy output. `seed`: paper-mode
    exports only (default: DEFAULT_SEED, the seed the scores used)."""
    import onnxruntime as ort

    c = read_contract(path)
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    check_input(c, arr.shape, where=f"{path}: input")
    feed = {c["input_name"]: arr.astype(np.float32)}
    if c.get("seed_name"):
        from p2p.inference import DEFAULT_SEED

        feed[c["seed_name"]] = np.asarray(DEFAULT_SEED if seed is None else seed, np.int64)
    elif seed is not None:
        raise P2PError(f"{path}: an eval-mode export has no seed input (it has no dropout)")
    sess = session or ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run([c["output_name"]], feed)[0]


def verify_onnx(
    path: str | Path, g: nn.Module, x: torch.Tensor, *, mode: str = "eval"
) -> dict[str, float | str]:
    """Check an exported model: run it with onnxruntime and compare with torch in `mode`.

    Falls back to `onnx.checker` (structure only) when onnxruntime is not installed.

    Returns:
        {"checked_with": "onnxruntime" | "onnx.checker", "mode": mode,
         "max_abs_diff": float (ort only)}.

    Raises:
        P2PError: the file is invalid or its outputs differ from torch by more than 1e-4.
    """
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        raise P2PError(f"{path}: invalid ONNX model: {e}") from None
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return {"checked_with": "onnx.checker", "mode": mode}
    from p2p.inference import dropout_seed, inference_mode

    seed = 3 if mode == "paper" else None  # not the default 0: the seed input must work
    got = torch.from_numpy(run_onnx(path, x.float(), seed=seed))
    device = next(g.parameters()).device
    # torch's own inference path (what translate / evaluate / the pyfunc run), image by image
    with inference_mode(g, mode), torch.no_grad():
        if mode == "paper":
            outs = []
            for xi in x.float().to(device).split(1):
                with dropout_seed(g, seed):
                    outs.append(g(xi))
            want = torch.cat(outs).cpu()
        else:
            want = g(x.float().to(device)).cpu()
    diff = float((got - want).abs().max())
    if got.shape != want.shape or not diff <= 1e-4:
        raise P2PError(
            f"{path}: ONNX output differs from torch (shape {tuple(got.shape)} vs "
            f"{tuple(want.shape)}, max |diff| {diff:.2e})"
        )
    return {"checked_with": "onnxruntime", "mode": mode, "max_abs_diff": diff}
