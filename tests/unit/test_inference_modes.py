"""The two inference modes (paper | eval) across config, translate, predict, evaluate, the
pyfunc and the ONNX export, and the ONNX input contract."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from p2p.checkpoints import load_generator, save_generator
from p2p.cli import main
from p2p.config import ConfigError, ExperimentConfig, load_config, to_yaml
from p2p.errors import P2PError
from p2p.inference import dropout_seed, inference_mode, seeded_dropout, translate
from p2p.models import build_generator

SMALL = {
    "data.crop_size": 64,
    "data.load_size": 72,
    "data.loader_workers": 0,
    "model.num_downs": 6,
    "model.base_channels": 4,
    "model.disc_channels": 4,
    "resources.num_workers": 1,
}


# torch on one thread for every test here (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(**extra):
    return load_config(None, {**SMALL, **extra})


def _generator(cfg, seed=0):
    """An untrained generator with non-default BN running statistics."""
    torch.manual_seed(seed)
    g = build_generator(cfg.model, cfg.data.input_nc, cfg.data.output_nc).train()
    with torch.no_grad():
        g(torch.rand(4, 3, 64, 64) * 2 - 1)
    return g.eval()


def _img(seed: int, size=(64, 64)) -> Image.Image:
    arr = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    return Image.fromarray(arr)


# ----------------------------------------------------------------------------- config


def test_auto_mode_is_paper_for_the_papers_setting_only():
    assert _cfg().eval.inference_mode == "paper"  # batch norm, batch 1: the paper
    assert _cfg(**{"train.batch_size": 4}).eval.inference_mode == "eval"
    per_worker_1 = _cfg(**{"train.batch_size": 2, "resources.num_workers": 2})
    assert per_worker_1.eval.inference_mode == "paper"
    assert _cfg(**{"model.norm": "instance"}).eval.inference_mode == "eval"
    explicit = _cfg(**{"train.batch_size": 4, "eval.inference_mode": "paper"})
    assert explicit.eval.inference_mode == "paper" and not explicit.eval.eval_mode
    # the resolved mode survives the round trips configs make (workers, checkpoints, registry)
    assert ExperimentConfig.from_dict(explicit.to_dict()).eval.inference_mode == "paper"
    assert explicit.replace(**{"optim.lr": 1e-3}).eval.inference_mode == "paper"


def test_legacy_eval_mode_key_is_read_as_inference_mode(tmp_path):
    p = tmp_path / "old.yaml"
    p.write_text("eval:\n  eval_mode: false\ntrain:\n  batch_size: 4\n")
    assert load_config(p).eval.inference_mode == "paper"
    p.write_text("eval:\n  eval_mode: true\n")
    assert load_config(p).eval.inference_mode == "eval"
    assert _cfg(**{"eval.eval_mode": False}).eval.inference_mode == "paper"  # an override
    p.write_text("eval:\n  eval_mode: true\n  inference_mode: paper\n")
    with pytest.raises(ConfigError, match="eval.eval_mode .true. contradicts"):
        load_config(p)
    with pytest.raises(ConfigError, match="eval.inference_mode: 'train' is not one of"):
        _cfg(**{"eval.inference_mode": "train"})


# ----------------------------------------------------------------------------- translate


def test_modes_differ_on_an_untrained_net_and_each_is_reproducible():
    cfg = _cfg()
    g = _generator(cfg)
    img = _img(0)
    paper = np.asarray(translate(g, [img], cfg, mode="paper", seed=0)[0])
    ev = np.asarray(translate(g, [img], cfg, mode="eval")[0])
    assert not np.array_equal(paper, ev)
    np.testing.assert_array_equal(paper, translate(g, [img], cfg, mode="paper", seed=0)[0])
    np.testing.assert_array_equal(ev, translate(g, [img], cfg, mode="eval")[0])
    other = np.asarray(translate(g, [img], cfg, mode="paper", seed=5)[0])
    assert not np.array_equal(paper, other)  # the seed drives the dropout
    # the same image and seed give the same output whatever else is in the request
    batch = translate(g, [_img(1), img, _img(2, (80, 48))], cfg, mode="paper", seed=0)
    np.testing.assert_array_equal(np.asarray(batch[1]), paper)
    assert translate(g, [img], cfg)[0].tobytes() == Image.fromarray(paper).tobytes()  # cfg: paper


def test_paper_mode_without_dropout_is_per_image_normalisation():
    """Batch statistics of a batch of 1 are that image's instance statistics."""
    cfg = _cfg(**{"model.use_dropout": False})
    g = _generator(cfg)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        train_bn = g.train()(x)
        g.eval()
    (out,) = translate(g, [Image.fromarray(_u8(x[0]))], cfg, mode="paper")
    want = _u8(train_bn[0])
    assert np.abs(np.asarray(out, np.int16) - want.astype(np.int16)).max() <= 1


def _u8(t: torch.Tensor) -> np.ndarray:
    return ((t.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def test_seeded_dropout_is_a_fair_mask_and_leaves_the_global_rng_alone():
    x = torch.ones(2, 512, 16, 16)
    a = seeded_dropout(x, torch.tensor(0), 0, 0.5)
    assert torch.equal(a[0], a[1])  # one mask per seed, whatever the batch position
    keep = (a[0] > 0).float().flatten()
    assert set(a.unique().tolist()) == {0.0, 2.0}  # kept units scaled by 1 / (1 - p)
    assert abs(keep.mean().item() - 0.5) < 0.01
    assert abs(torch.corrcoef(torch.stack([keep[:-1], keep[1:]]))[0, 1].item()) < 0.02
    other_seed = (seeded_dropout(x, torch.tensor(1), 0, 0.5)[0] > 0).float().flatten()
    other_layer = (seeded_dropout(x, torch.tensor(0), 1, 0.5)[0] > 0).float().flatten()
    assert 0.45 < (keep == other_seed).float().mean().item() < 0.55
    assert 0.45 < (keep == other_layer).float().mean().item() < 0.55

    g = _generator(_cfg())
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    with inference_mode(g, "paper"), dropout_seed(g, 7), torch.no_grad():
        g(torch.zeros(1, 3, 64, 64))
    assert torch.equal(torch.rand(3), want)  # a seeded forward draws nothing from torch's RNG


# ----------------------------------------------------------------------------- predict


@pytest.mark.parametrize("recorded", ["paper", "eval"])
def test_predict_honours_the_recorded_mode(tmp_path, recorded):
    cfg = _cfg(**{"eval.inference_mode": recorded})
    g = _generator(cfg)
    ckpt = save_generator(tmp_path / "g.pt", g, cfg)
    src = tmp_path / "in.png"
    _img(3, (80, 64)).save(src)
    out = tmp_path / "out.png"
    base = ["predict", "--checkpoint", str(ckpt), "--input", str(src), "--device", "cpu"]
    assert main([*base, "--output", str(out)]) == 0
    want = translate(load_generator(ckpt), [Image.open(src)], cfg, mode=recorded, seed=0)[0]
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(want))
    other = "eval" if recorded == "paper" else "paper"
    assert main([*base, "--output", str(tmp_path / "o2.png"), "--mode", other]) == 0
    want2 = translate(load_generator(ckpt), [Image.open(src)], cfg, mode=other, seed=0)[0]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o2.png")), np.asarray(want2))
    assert not np.array_equal(np.asarray(want), np.asarray(want2))


def test_predict_seed_flag(tmp_path):
    cfg = _cfg()
    ckpt = save_generator(tmp_path / "g.pt", _generator(cfg), cfg)
    src = tmp_path / "in.png"
    _img(4).save(src)
    outs = []
    for i, seed in enumerate(["3", "3", "4"]):
        dst = tmp_path / f"o{i}.png"
        args = ["predict", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(dst)]
        assert main([*args, "--seed", seed]) == 0
        outs.append(np.asarray(Image.open(dst)))
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])


# ----------------------------------------------------------------------------- pyfunc


def _pyfunc(tmp_path, cfg, g):
    from p2p.serving.pyfunc import Pix2PixPyfunc

    ckpt = save_generator(tmp_path / "generator.pt", g, cfg)
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    model = Pix2PixPyfunc()
    model.load_context(
        SimpleNamespace(artifacts={"generator": str(ckpt), "config": str(tmp_path / "config.yaml")})
    )
    return model


def test_pyfunc_honours_recorded_mode_seed_and_any_size(tmp_path):
    from mlflow.exceptions import MlflowException

    from p2p.serving.pyfunc import decode_b64_image, encode_b64_png

    cfg = _cfg()  # paper
    g = _generator(cfg)
    model = _pyfunc(tmp_path, cfg, g)
    img = _img(6, (100, 70))  # any size: resized for the net and back
    df = pd.DataFrame({"image": [encode_b64_png(img)]})

    def run(params=None):
        out = model.predict(None, df, params)["image"][0]
        return np.asarray(decode_b64_image(out, name="out", channels=3))

    assert run().shape == (70, 100, 3)
    np.testing.assert_array_equal(run(), translate(g, [img], cfg, mode="paper", seed=0)[0])
    np.testing.assert_array_equal(run({"seed": 9}), run({"seed": 9}))
    assert not np.array_equal(run({"seed": 9}), run({"seed": 0}))
    ev = translate(g, [img], cfg, mode="eval")[0]
    np.testing.assert_array_equal(run({"inference_mode": "eval"}), ev)
    with pytest.raises(MlflowException, match="params.inference_mode: 'noisy' is not one of"):
        run({"inference_mode": "noisy"})
    with pytest.raises(MlflowException, match="params.seed: expected an integer"):
        run({"seed": "abc"})


# ----------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("mode", ["paper", "eval"])
def test_onnx_contract_metadata_and_mode(tmp_path, mode):
    pytest.importorskip("onnxruntime")
    from p2p.serving.onnx_export import export_onnx, read_contract, run_onnx, verify_onnx

    cfg = _cfg()
    g = _generator(cfg)
    path = export_onnx(g, tmp_path / "g.onnx", torch.rand(2, 3, 64, 64) * 2 - 1, mode=mode)
    c = read_contract(path)
    assert c["input_name"] == "input" and c["output_name"] == "output"
    assert c["layout"] == "NCHW float32" and c["range"].startswith("[-1, 1]")
    assert c["size_multiple"] == str(2**6) and c["input_channels"] == "3"
    assert c["inference_mode"] == mode and "resize" in c["resize"]
    assert verify_onnx(path, g, torch.rand(3, 3, 128, 64) * 2 - 1, mode=mode)["mode"] == mode
    x = torch.rand(2, 3, 64, 128) * 2 - 1
    got = run_onnx(path, x)
    h = load_generator(save_generator(tmp_path / "g.pt", g, cfg))
    with torch.no_grad(), inference_mode(h, mode):
        if mode == "eval":
            want = h(x)
        else:  # each image alone in train mode, the seeded dropout of translate / evaluate
            outs = []
            for i in range(2):
                with dropout_seed(h, 0):
                    outs.append(h(x[i : i + 1]))
            want = torch.cat(outs)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4)
    if mode == "paper":  # the seed input: reproducible, and it changes the noise
        np.testing.assert_array_equal(run_onnx(path, x, seed=5), run_onnx(path, x, seed=5))
        assert np.abs(run_onnx(path, x, seed=5) - got).max() > 1e-3
        assert c["seed_name"] == "seed"
    else:
        with pytest.raises(P2PError, match="eval-mode export has no seed input"):
            run_onnx(path, x, seed=5)
    # a 300x200 image: a clear error instead of onnxruntime's Concat failure
    with pytest.raises(P2PError, match=r"200x300 must be positive multiples of 64.*192x320"):
        run_onnx(path, np.zeros((1, 3, 200, 300), np.float32))
    with pytest.raises(P2PError, match="takes 3 channel"):
        run_onnx(path, np.zeros((1, 1, 64, 64), np.float32))


def test_onnx_paper_mode_of_a_resnet_generator(tmp_path):
    pytest.importorskip("onnxruntime")
    from p2p.serving.onnx_export import export_onnx, read_contract, verify_onnx

    cfg = _cfg(**{"model.generator": "resnet", "model.resnet_blocks": 2})
    torch.manual_seed(0)
    g = build_generator(cfg.model, 3, 3)  # batch norm + dropout in the residual blocks
    path = export_onnx(g, tmp_path / "r.onnx", torch.rand(1, 3, 64, 64) * 2 - 1, mode="paper")
    assert read_contract(path)["size_multiple"] == "4"
    res = verify_onnx(path, g, torch.rand(2, 3, 96, 80) * 2 - 1, mode="paper")
    assert res["max_abs_diff"] < 1e-4


def test_read_contract_of_a_foreign_file(tmp_path):
    import onnx

    from p2p.serving.onnx_export import read_contract

    graph = onnx.helper.make_graph([], "empty", [], [])
    onnx.save(onnx.helper.make_model(graph), tmp_path / "x.onnx")
    with pytest.raises(P2PError, match="no p2p input contract"):
        read_contract(tmp_path / "x.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(P2PError, match="junk.onnx: not a readable ONNX model"):
        read_contract(tmp_path / "junk.onnx")


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_scores_both_modes_on_val_and_names_the_model(tmp_path):
    from p2p.data.build import build_demo
    from p2p.data.shards import write_shards
    from p2p.evaluation.evaluate import evaluate_checkpoint

    cfg = _cfg(**{"build.size": 72, "build.num_pairs": 20, "eval.num_samples": 2})
    build_demo(tmp_path / "raw", cfg.build, cfg.data)
    write_shards(tmp_path / "raw", tmp_path / "shards", cfg.data)
    g = _generator(cfg)
    ckpt = save_generator(tmp_path / "g.pt", g, cfg)
    m = evaluate_checkpoint(ckpt, str(tmp_path / "shards"), cfg, tmp_path / "r", version="v7")
    assert m["inference_mode"] == "paper" and m["seed"] == 0 and m["eval_mode"] is False
    assert set(m["modes_val"]) == {"paper", "eval"}
    assert m["modes_val"]["paper"]["l1"] != pytest.approx(m["modes_val"]["eval"]["l1"], abs=1e-7)
    again = evaluate_checkpoint(ckpt, str(tmp_path / "shards"), cfg, tmp_path / "r2")
    assert again["l1"] == m["l1"] and again["modes_val"] == m["modes_val"]  # reproducible
    ev = evaluate_checkpoint(
        ckpt, str(tmp_path / "shards"), cfg.replace(**{"eval.inference_mode": "eval"}),
        tmp_path / "r3",
    )  # fmt: skip
    assert ev["inference_mode"] == "eval" and ev["seed"] is None
    assert ev["modes_val"] == m["modes_val"]
    assert ev["l1"] != pytest.approx(m["l1"], abs=1e-7)
    page = (tmp_path / "r" / "index.html").read_text()
    assert "<h1>pix2pix: test split</h1>" in page and "<code>v7</code>" in page
    assert "<td>dB</td>" in page and "Inference modes on val" in page
    grid = Image.open(tmp_path / "r" / "samples.png")
    assert grid.size == (3 * 256 + 16, 22 + 2 * 260)  # labelled, 64 px crops upscaled x4
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["modes_val"]


def test_grid_rows_spread_over_the_split():
    from p2p.evaluation.grid import pick_rows, render_grid

    assert pick_rows(100, 4) == [0, 25, 50, 75]
    assert pick_rows(3, 8) == [0, 1, 2] and pick_rows(0, 8) == []
    t = torch.zeros(1, 8, 8)  # gray rows are drawn in RGB
    img = render_grid([[t, t, t]], min_cell=32)
    assert img.size == (3 * 32 + 16, 22 + 36) and img.mode == "RGB"
    with pytest.raises(ValueError, match="every row needs 3 images"):
        render_grid([[t, t]])
