"""Serving a registered generator: the pyfunc in-process, over HTTP with `mlflow models serve`,
and the ONNX export, each compared with the torch generator on real photos."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pandas as pd
import pytest
import torch
from data_fixtures import TINY
from PIL import Image
from skimage import data as skdata

from p2p.checkpoints import load_generator, save_generator
from p2p.config import load_config
from p2p.evaluation.evaluate import evaluate_checkpoint
from p2p.inference import translate
from p2p.models import build_generator

NAME = "serve-test"
OVERRIDES = {
    **TINY,
    "build.size": 72,
    "build.num_pairs": 20,
    "eval.model_name": NAME,
    "eval.inference_mode": "paper",  # serve the paper's mode (TINY trains at batch 2)
}


def _photo(name: str, size: tuple[int, int]) -> Image.Image:
    """A real photo shipped with scikit-image, resized to (w, h)."""
    return Image.fromarray(getattr(skdata, name)()).convert("RGB").resize(size, Image.BICUBIC)


def _b64(img: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=90)
    return base64.b64encode(buf.getvalue()).decode()


def _unb64(s: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(s)))
    assert img.format == "PNG"
    return img


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """A trained-shape generator, evaluated on real shards, registered and promoted in a
    module-local MLflow store. Returns (checkpoint path, cfg, store dir)."""
    from p2p import registry
    from p2p.data.build import build_demo
    from p2p.data.shards import write_shards

    root = tmp_path_factory.mktemp("serving")
    cfg = load_config(None, OVERRIDES)
    build_demo(root / "raw", cfg.build, cfg.data)
    write_shards(root / "raw", root / "shards", cfg.data)
    torch.manual_seed(0)
    g = build_generator(cfg.model, 3, 3)
    with torch.no_grad():  # give the untrained net some contrast, so outputs are not flat gray
        for m in g.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                m.weight.mul_(4.0)
    ckpt = save_generator(root / "generator.pt", g, cfg)
    metrics = evaluate_checkpoint(ckpt, str(root / "shards"), cfg, root / "reports")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)
        v = registry.log_and_register(ckpt, cfg, metrics, lineage={"data_version": "t.dir"})
        assert registry.promotion_gate(NAME, v.version).promoted
        yield ckpt, cfg, root


@pytest.fixture(scope="module")
def pyfunc_model(champion):
    import mlflow

    return mlflow.pyfunc.load_model(f"models:/{NAME}@champion")


def test_pyfunc_round_trip(champion, pyfunc_model):
    ckpt, cfg, _ = champion
    astronaut = _photo("astronaut", (100, 76))  # not a multiple of 64: resized and back
    chelsea = _photo("chelsea", (64, 64))
    gray = chelsea.convert("L")  # grayscale input: converted to RGB like every p2p input
    df = pd.DataFrame(
        {
            "image": [
                _b64(astronaut, "JPEG"),
                "data:image/png;base64," + _b64(chelsea),
                _b64(gray),
            ]
        }
    )
    out = pyfunc_model.predict(df)
    assert list(out.columns) == ["image"] and len(out) == 3

    g = load_generator(ckpt)
    # what the pyfunc decoded: the same JPEG bytes, decoded by PIL
    decoded = [
        Image.open(io.BytesIO(base64.b64decode(df["image"][0]))).convert("RGB"),
        chelsea,
        gray.convert("RGB"),
    ]
    want = translate(g, decoded, cfg)
    for got_b64, w, src in zip(out["image"], want, decoded, strict=True):
        got = _unb64(got_b64)
        assert got.size == src.size and got.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(got), np.asarray(w))
    assert np.asarray(_unb64(out["image"][1])).std() > 5  # a real image, not a flat field


def test_registered_version_records_modes_and_pyfunc_seed(champion, pyfunc_model):
    """Tags: the mode scored and the mode served; the pyfunc's seed param is reproducible and
    its inference_mode param switches to eval mode."""
    from p2p import registry

    ckpt, cfg, root = champion
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        v = registry.get_version(NAME, "champion")
    assert v.tags["eval.inference_mode"] == "paper"
    assert v.tags["serving.inference_mode"] == "paper"
    assert v.tags["onnx.mode"] == "paper"
    img = _photo("chelsea", (64, 64))
    df = pd.DataFrame({"image": [_b64(img)]})

    def run(**params) -> np.ndarray:
        out = pyfunc_model.predict(df, params=params or None)
        return np.asarray(_unb64(out["image"][0]))

    default, seed0, seed7 = run(), run(seed=0), run(seed=7)
    np.testing.assert_array_equal(default, seed0)  # default seed 0: what evaluate scored
    np.testing.assert_array_equal(seed7, run(seed=7))  # same seed, same image
    assert not np.array_equal(seed0, seed7)
    g = load_generator(ckpt)
    np.testing.assert_array_equal(seed7, np.asarray(translate(g, [img], cfg, seed=7)[0]))
    want_eval = np.asarray(translate(g, [img], cfg, mode="eval")[0])
    np.testing.assert_array_equal(run(inference_mode="eval"), want_eval)


def test_pyfunc_rejects_bad_input_by_row(pyfunc_model):
    from mlflow.exceptions import MlflowException

    ok = _b64(_photo("coffee", (64, 64)))
    with pytest.raises(MlflowException, match=r"image\[1\]: not valid base64"):
        pyfunc_model.predict(pd.DataFrame({"image": [ok, "%%%not-base64%%%"]}))
    junk = base64.b64encode(b"this is not an image").decode()
    with pytest.raises(MlflowException, match=r"image\[0\]"):
        pyfunc_model.predict(pd.DataFrame({"image": [junk]}))


def test_registered_onnx_matches_torch(champion, tmp_path):
    """The ONNX export serves the recorded mode (paper: each image's own statistics and the
    seeded dropout, the pyfunc's images for the same seed), carries its input contract, and
    refuses bad sizes clearly."""
    import mlflow
    import onnxruntime as ort

    from p2p.errors import P2PError
    from p2p.inference import dropout_seed, inference_mode
    from p2p.serving.onnx_export import read_contract, run_onnx

    ckpt, cfg, _ = champion
    assert cfg.eval.inference_mode == "paper"
    local = mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion", dst_path=str(tmp_path))
    onnx_file = os.path.join(local, "artifacts", "generator.onnx")
    sess = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    c = read_contract(onnx_file)
    assert c["inference_mode"] == "paper" and c["size_multiple"] == "64"
    assert (c["input_name"], c["layout"], c["input_channels"]) == ("input", "NCHW float32", "3")
    assert c["seed_name"] == "seed"
    # a real batch at another size and batch than the export traced (2 x 64 x 64)
    imgs = [
        _photo("astronaut", (128, 192)),
        _photo("rocket", (128, 192)),
        _photo("coffee", (128, 192)),
    ]
    x = torch.stack(
        [torch.from_numpy(np.asarray(i, np.float32)).permute(2, 0, 1) / 127.5 - 1 for i in imgs]
    )
    got = sess.run(["output"], {"input": x.numpy(), "seed": np.asarray(4, np.int64)})[0]
    g = load_generator(ckpt)
    with torch.no_grad(), inference_mode(g, "paper"):
        outs = []
        for xi in x.split(1):
            with dropout_seed(g, 4):
                outs.append(g(xi))
        want = torch.cat(outs).numpy()
        running = g.eval()(x).numpy()
    assert got.shape == (3, 3, 192, 128)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.abs(got - running).max() > 0.01  # not the eval-mode graph
    assert want.std() > 0.05
    # the same image and seed through the pyfunc's path (translate) and ONNX: the same pixels
    (via_translate,) = translate(g, [imgs[0]], cfg, seed=4)
    onnx_pixels = ((np.clip(got[0], -1, 1) + 1) * 127.5).round().astype(np.uint8)
    diff = np.abs(onnx_pixels.transpose(1, 2, 0).astype(int) - np.asarray(via_translate, int))
    assert diff.max() <= 1
    with pytest.raises(P2PError, match=r"200x300 must be positive multiples of 64"):
        run_onnx(onnx_file, np.zeros((1, 3, 200, 300), np.float32), session=sess)


def test_onnx_export_resnet_generator(tmp_path):
    from p2p.serving.onnx_export import export_onnx, verify_onnx

    cfg = load_config(None, {**OVERRIDES, "model.generator": "resnet", "model.resnet_blocks": 2})
    torch.manual_seed(1)
    g = build_generator(cfg.model, 3, 3).train()
    path = export_onnx(g, tmp_path / "resnet.onnx", torch.rand(2, 3, 64, 64) * 2 - 1)
    assert g.training  # restored
    x = torch.from_numpy(np.asarray(_photo("chelsea", (96, 80)), np.float32)).permute(2, 0, 1)
    res = verify_onnx(path, g, (x / 127.5 - 1)[None])
    assert res["checked_with"] == "onnxruntime" and res["max_abs_diff"] < 1e-4


def test_predict_cli_with_registered_model(champion, tmp_path):
    """`p2p predict --model models:/NAME@champion` (the registry's load_registered_generator)."""
    from p2p.cli import main

    ckpt, cfg, _ = champion
    src = tmp_path / "in.png"
    _photo("coffee", (80, 64)).save(src)
    out = tmp_path / "out.png"
    assert (
        main(
            [
                "predict",
                "--model",
                f"models:/{NAME}@champion",
                "--input",
                str(src),
                "--output",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    want = translate(load_generator(ckpt), [Image.open(src).convert("RGB")], cfg)[0]
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(want))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, payload: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.mark.slow
def test_served_model_answers_http(champion, pyfunc_model, tmp_path):
    _, _, root = champion
    port = _free_port()
    # the server execs `uvicorn` from PATH: the one installed beside this Python
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            f"models:/{NAME}@champion",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server did not come up:\n{(tmp_path / 'serve.log').read_text()}")
            time.sleep(0.5)

        img = _photo("astronaut", (96, 72))
        b64 = _b64(img)
        status, body = _post(
            f"{base}/invocations",
            {"dataframe_split": {"columns": ["image"], "data": [[b64]]}},
        )
        assert status == 200, body
        served = body["predictions"][0]["image"]
        assert _unb64(served).size == (96, 72)
        # the same answer as the model in this process
        assert served == pyfunc_model.predict(pd.DataFrame({"image": [b64]}))["image"][0]
        # request params over HTTP: the seed of paper mode, reproducible
        status, body = _post(
            f"{base}/invocations",
            {"dataframe_split": {"columns": ["image"], "data": [[b64]]}, "params": {"seed": 7}},
        )
        assert status == 200, body
        seeded = body["predictions"][0]["image"]
        want = pyfunc_model.predict(pd.DataFrame({"image": [b64]}), params={"seed": 7})["image"][0]
        assert seeded == want and seeded != served

        status, body = _post(f"{base}/invocations", {"inputs": {"image": ["@@not-base64"]}})
        assert status == 400 and "image[0]: not valid base64" in json.dumps(body)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers (our session)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
