"""Serving: the generator as an MLflow pyfunc (images in, images out) plus an ONNX export.

`log_pyfunc_model` logs, into the active MLflow run, a models-from-code pyfunc
(`p2p/serving/model_code.py` -> `p2p.serving.pyfunc.Pix2PixPyfunc`) that carries the p2p
checkpoint, the resolved config and the ONNX export as artifacts, the p2p package itself as
code (the served model runs the code it was logged with), explicit pip requirements, a
signature and a real input example. Serve a registered version with

    mlflow models serve -m models:/NAME@champion --env-manager local -p 5001

Imports stay cheap here: mlflow and torch are imported inside the functions.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import p2p

MODEL_CODE = Path(__file__).with_name("model_code.py")
PACKAGE_DIR = Path(p2p.__file__).parent
ARTIFACT_GENERATOR = "generator.pt"  # names inside the logged model's artifacts/ folder
ARTIFACT_CONFIG = "config.yaml"
ARTIFACT_ONNX = "generator.onnx"

# What the served model imports (p2p itself travels as code). Pinned to this environment.
_REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas", "pillow", "pyyaml")


def pip_requirements() -> list[str]:
    """Exact pins of the serving dependencies as installed here (no slow inference). Local
    version labels are dropped (torch "2.13.0+cpu" -> "torch==2.13.0": installable from PyPI)."""
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in _REQUIREMENTS]


def example_image(size: int, channels: int = 3):
    """A real photo (skimage's chelsea, center-cropped square) at `size` x `size` as PIL."""
    from PIL import Image
    from skimage import data

    arr = data.chelsea()  # (300, 451, 3) uint8
    h, w = arr.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    img = Image.fromarray(arr[top : top + s, left : left + s]).resize(
        (size, size), Image.Resampling.BICUBIC
    )
    return img.convert("L") if channels == 1 else img


def input_example(cfg) -> Any:
    """A one-row input DataFrame: a real photo at the training resolution, base64 PNG."""
    import pandas as pd

    from p2p.serving.pyfunc import COLUMN, encode_b64_png

    img = example_image(cfg.data.crop_size, cfg.data.input_nc)
    return pd.DataFrame({COLUMN: [encode_b64_png(img)]})


def signature():
    """Input and output: a DataFrame with one string column "image" (base64); params "seed"
    (long, default 0) and "inference_mode" (string, default "" = the version's own mode)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from p2p.serving.pyfunc import COLUMN, PARAMS

    return ModelSignature(
        inputs=Schema([ColSpec("string", COLUMN)]),
        outputs=Schema([ColSpec("string", COLUMN)]),
        params=ParamSchema(
            [
                ParamSpec("seed", "long", PARAMS["seed"]),
                ParamSpec("inference_mode", "string", PARAMS["inference_mode"]),
            ]
        ),
    )


def log_pyfunc_model(
    checkpoint: str | Path,
    config_yaml: str | Path,
    onnx_path: str | Path | None,
    cfg,
    *,
    name: str = "model",
    registered_model_name: str | None = None,
    tags: dict[str, str] | None = None,
):
    """Log the pyfunc into the active run (`mlflow.start_run` first).

    Args:
        checkpoint: a p2p generator checkpoint (carried as artifacts/generator.pt).
        config_yaml: the resolved config as YAML (artifacts/config.yaml), what load_context reads.
        onnx_path: the ONNX export (artifacts/generator.onnx), or None to carry none.
        cfg: the config (for the input example's size and channels).
        name: the model's name inside the run.
        registered_model_name: register the logged model as a new version of this name.
        tags: tags of the logged model.

    Returns:
        mlflow's ModelInfo (model_uri, model_id, registered_model_version, ...).
    """
    import mlflow

    artifacts = {"generator": str(checkpoint), "config": str(config_yaml)}
    if onnx_path is not None:
        artifacts["onnx"] = str(onnx_path)
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(MODEL_CODE),
        artifacts=artifacts,
        code_paths=[str(PACKAGE_DIR)],
        signature=signature(),
        input_example=input_example(cfg),
        pip_requirements=pip_requirements(),
        registered_model_name=registered_model_name,
        tags=tags,
    )
