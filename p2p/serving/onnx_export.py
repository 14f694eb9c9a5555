"""ONNX export of a generator, checked against torch.

torch 2.13's default exporter (`dynamo=True`) needs onnxscript; the TorchScript exporter
(`dynamo=False`) needs only the `onnx` package and handles the U-Net and ResNet generators,
with batch, height and width left dynamic. The graph is exported in eval mode (dropout off,
BN running statistics): the deterministic generator a deployment serves.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn

from p2p.atomic import write_atomic
from p2p.errors import P2PError

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "output"


def export_onnx(g: nn.Module, path: str | Path, example: torch.Tensor) -> Path:
    """Write `g` as ONNX (input/output (N, C, H, W) float32 in [-1, 1]) atomically to `path`.

    Args:
        g: the generator; exported in eval mode, its training flag is restored afterwards.
        path: destination .onnx file.
        example: an input batch (N, C, H, W) to trace with; H, W multiples of the net's stride.
    """
    try:
        import onnx  # noqa: F401  (the TorchScript exporter serialises through it)
    except ImportError:
        raise P2PError("ONNX export needs the 'onnx' package (see requirements.lock)") from None
    path = Path(path)
    was_training = g.training
    g.eval()

    def export(tmp: str) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript exporter deprecation notices
            torch.onnx.export(
                g,
                (example,),
                tmp,
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=OPSET,
                dynamic_axes={
                    INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                    OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                },
            )

    try:
        write_atomic(path, export)
    finally:
        g.train(was_training)
    return path


def verify_onnx(path: str | Path, g: nn.Module, x: torch.Tensor) -> dict[str, float | str]:
    """Check an exported model: run it with onnxruntime and compare with torch (eval mode).

    Falls back to `onnx.checker` (structure only) when onnxruntime is not installed.

    Returns:
        {"checked_with": "onnxruntime" | "onnx.checker", "max_abs_diff": float (ort only)}.

    Raises:
        P2PError: the file is invalid or its outputs differ from torch by more than 1e-4.
    """
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        raise P2PError(f"{path}: invalid ONNX model: {e}") from None
    try:
        import onnxruntime as ort
    except ImportError:
        return {"checked_with": "onnx.checker"}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run([OUTPUT_NAME], {INPUT_NAME: x.float().numpy()})[0])
    was_training = g.training
    g.eval()
    with torch.no_grad():
        want = g(x.float())
    g.train(was_training)
    diff = float((got - want).abs().max())
    if got.shape != want.shape or not diff <= 1e-4:
        raise P2PError(
            f"{path}: ONNX output differs from torch (shape {tuple(got.shape)} vs "
            f"{tuple(want.shape)}, max |diff| {diff:.2e})"
        )
    return {"checked_with": "onnxruntime", "max_abs_diff": diff}
