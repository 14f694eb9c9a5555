"""The pix2pix generator as an MLflow pyfunc: base64 images in, base64 PNGs out.

Contract (the same in-process, through `mlflow models serve`, and for deployment teams):

    input:  DataFrame, column "image": base64 PNG or JPEG (optionally a `data:image/...;base64,`
            URL), one row per image; ANY size (sizes the network cannot take are resized to
            the nearest multiple of its stride and the output resized back, unlike the bare
            ONNX graph), RGB or grayscale (converted to data.input_nc)
    params: optional; "seed" (int, default 0): the dropout seed of paper mode, applied per
            image, so the same image and seed always give the same output (the image
            `p2p evaluate` scored for seed 0); "inference_mode" ("paper" | "eval", default ""
            = the mode the version records in eval.inference_mode, its `serving.inference_mode`
            tag)
    output: DataFrame, column "image": base64 PNG of the translated image, same size as its input

Over HTTP: `POST /invocations {"dataframe_split": {"columns": ["image"], "data": [["<b64>"]]},
"params": {"seed": 7}}` (or `{"inputs": {"image": ["<b64>", ...]}}`) answers
`{"predictions": [{"image": "<b64 png>"}]}`.

The logged model carries the p2p checkpoint (`artifacts/generator.pt`), the resolved config
(`artifacts/config.yaml`) and an ONNX export (`artifacts/generator.onnx`, see
p2p.serving.onnx_export for its input contract).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import mlflow.pyfunc
import pandas as pd

COLUMN = "image"
PARAMS = {"seed": 0, "inference_mode": ""}  # request params and their defaults (signature)


def encode_b64_png(img) -> str:
    """PIL image -> base64 (ASCII) of its deterministic PNG encoding."""
    from p2p.data.images import encode_png

    return base64.b64encode(encode_png(img)).decode("ascii")


def decode_b64_image(value: Any, *, name: str, channels: int):
    """A base64 PNG/JPEG string (or data URL) -> validated PIL image in RGB or L.

    Raises:
        DataError: "<name>: <reason>" for non-strings, bad base64 and undecodable images.
    """
    from p2p.data.images import open_image
    from p2p.errors import DataError

    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{name}: expected a base64-encoded PNG or JPEG string")
    value = value.strip()
    if value.startswith("data:"):  # data:image/png;base64,....
        value = value.partition(",")[2]
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise DataError(f"{name}: not valid base64") from None
    return open_image(raw, name=name, channels=channels, gray_from_color=True, exif_transpose=True)


class Pix2PixPyfunc(mlflow.pyfunc.PythonModel):
    """Translates a batch of encoded images with the generator logged beside it."""

    def load_context(self, context) -> None:
        from p2p.checkpoints import load_generator
        from p2p.config import load_config

        self.cfg = load_config(context.artifacts["config"])
        self.generator = load_generator(context.artifacts["generator"], device="cpu")

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from p2p.errors import P2PError
        from p2p.inference import DEFAULT_SEED, check_mode, mode_of, translate

        if COLUMN not in model_input.columns:
            raise MlflowException(
                f"input needs a column {COLUMN!r} of base64 PNG/JPEG strings, got columns "
                f"{list(model_input.columns)}",
                error_code=INVALID_PARAMETER_VALUE,
            )
        try:
            params = params or {}
            mode = check_mode(
                params.get("inference_mode") or mode_of(self.cfg), "params.inference_mode"
            )
            seed = params.get("seed")
            seed = DEFAULT_SEED if seed is None else _int_param(seed, "params.seed")
            names = [f"{COLUMN}[{i}]" for i in range(len(model_input))]
            images = [
                decode_b64_image(v, name=n, channels=self.cfg.data.input_nc)
                for n, v in zip(names, model_input[COLUMN].tolist(), strict=True)
            ]
            outputs = (
                translate(
                    self.generator,
                    images,
                    self.cfg,
                    mode=mode,
                    seed=seed,
                    batch_size=self.cfg.eval.batch_size,
                    names=names,
                )
                if images
                else []
            )
        except P2PError as e:  # bad input is the caller's error: HTTP 400 with the reason
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
        return pd.DataFrame({COLUMN: [encode_b64_png(o) for o in outputs]}, dtype=object)


def _int_param(v: Any, name: str) -> int:
    from p2p.errors import P2PError

    try:
        if isinstance(v, bool) or int(v) != float(v):
            raise ValueError
        return int(v)
    except (TypeError, ValueError):
        raise P2PError(f"{name}: expected an integer, got {v!r}") from None
