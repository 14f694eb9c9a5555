"""`translate` and `p2p predict` on real photos (skimage.data), with tiny saved checkpoints."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from p2p.checkpoints import save_generator
from p2p.cli import main
from p2p.config import load_config
from p2p.inference import image_to_tensor, network_size, translate
from p2p.models import build_generator


def _cfg(input_nc=3, output_nc=3):
    return load_config(
        None,
        {
            "data.crop_size": 64,
            "data.load_size": 72,
            "data.input_nc": input_nc,
            "data.output_nc": output_nc,
            "model.num_downs": 6,
            "model.base_channels": 4,
        },
    )


def _generator(cfg, seed=0):
    torch.manual_seed(seed)
    g = build_generator(cfg.model, cfg.data.input_nc, cfg.data.output_nc)
    g.train()
    with torch.no_grad():
        g(torch.rand(2, cfg.data.input_nc, 64, 64) * 2 - 1)  # non-default BN running stats
    return g.eval()


# Real photos, scaled down (CPU time): astronaut 128x128 (a multiple of 64), chelsea 150x100 and
# coffee 120x80 (not multiples: resized for the network and back).
SIZES = {"astronaut": (128, 128), "chelsea": (150, 100), "coffee": (120, 80)}


# torch on one thread for every test here (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from skimage import data

    d = tmp_path_factory.mktemp("photos")
    for name, size in SIZES.items():
        img = Image.fromarray(getattr(data, name)()).resize(size, Image.LANCZOS)
        img.save(d / f"{name}.png")
    return d


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = _cfg()
    path = tmp_path_factory.mktemp("ckpt") / "generator.pt"
    save_generator(path, _generator(cfg), cfg, step=10, epoch=1)
    return path


# ----------------------------------------------------------------------------- translate


def test_network_size_is_nearest_multiple():
    assert network_size((451, 300), 64) == (448, 320)
    assert network_size((512, 512), 64) == (512, 512)
    assert network_size((20, 100), 64) == (64, 128)  # never below one multiple


def test_translate_matches_direct_forward_and_restores_sizes(photos, caplog):
    cfg = _cfg()
    g = _generator(cfg)
    astro = Image.open(photos / "astronaut.png")
    chelsea = Image.open(photos / "chelsea.png")
    with caplog.at_level(logging.INFO, logger="p2p.inference"):
        out = translate(g, [astro, chelsea, astro], cfg, mode="eval", names=["a", "c", "a2"])
    assert [o.size for o in out] == [astro.size, chelsea.size, astro.size]
    assert all(o.mode == "RGB" for o in out)
    assert "c: 150x100 is not a multiple of 64; resized to 128x128" in caplog.text
    # A valid size goes through unchanged: the output is exactly G's output, quantised.
    with torch.no_grad():
        y = g(image_to_tensor(astro, 3)[None])[0]
    want = ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(out[0]), want)
    assert np.array_equal(np.asarray(out[0]), np.asarray(out[2]))  # batching does not matter


def test_translate_paper_mode_is_the_papers_noise_and_keeps_bn_stats():
    cfg = _cfg()
    g = _generator(cfg)  # num_downs 6: one dropout block
    before = {k: v.clone() for k, v in g.state_dict().items()}
    img = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    a = np.asarray(translate(g, [img], cfg, mode="paper", seed=0)[0])
    b = np.asarray(translate(g, [img], cfg, mode="paper", seed=1)[0])
    e = np.asarray(translate(g, [img], cfg, mode="eval")[0])
    assert not np.array_equal(a, b) and not np.array_equal(a, e)
    assert not g.training
    for k, v in g.state_dict().items():
        assert torch.equal(v, before[k]), k  # running stats restored after paper-mode use


def test_translate_gray_model_outputs_L(photos):
    cfg = _cfg(input_nc=1, output_nc=1)
    gray = Image.open(photos / "coffee.png").convert("L")
    (out,) = translate(_generator(cfg), [gray], cfg)
    assert out.mode == "L" and out.size == gray.size


# ----------------------------------------------------------------------------- CLI


def test_predict_folder_of_real_photos(photos, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["predict", "--checkpoint", str(checkpoint), "--input", str(photos),
               "--output", str(out), "--device", "cpu"])  # fmt: skip
    assert rc == 0
    for name in ("astronaut", "chelsea", "coffee"):
        src, dst = Image.open(photos / f"{name}.png"), Image.open(out / f"{name}.png")
        assert dst.size == src.size and dst.mode == "RGB"
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("[1/3]") and "astronaut.png" in lines[0]


def test_predict_single_file_and_reference_checkpoint(photos, tmp_path):
    from p2p.models import UnetGenerator

    torch.manual_seed(0)
    ref = tmp_path / "latest_net_G.pth"  # a bare reference-layout state_dict
    torch.save(UnetGenerator(3, 3, 6, 4, "batch").state_dict(), ref)
    dst = tmp_path / "chelsea_out.jpg"
    rc = main(["predict", "--checkpoint", str(ref), "--input", str(photos / "chelsea.png"),
               "--output", str(dst)])  # fmt: skip
    assert rc == 0 and Image.open(dst).size == (150, 100) and Image.open(dst).format == "JPEG"
    rc = main(["predict", "--checkpoint", str(ref), "--input", str(photos / "chelsea.png"),
               "--output", str(tmp_path), "--train-mode", "--seed", "3"])  # fmt: skip
    assert rc == 0 and (tmp_path / "chelsea.png").exists()


def _err(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line
    return err[0]


def test_predict_errors_name_the_file(photos, checkpoint, tmp_path, capsys):
    base = ["predict", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "o")]

    missing = tmp_path / "nope.png"
    assert main([*base, "--input", str(missing)]) == 2
    assert str(missing) in _err(capsys)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*base, "--input", str(empty)]) == 2
    assert str(empty) in _err(capsys)

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a_good.png").write_bytes((photos / "chelsea.png").read_bytes())
    (mixed / "b_bad.png").write_text("this is not an image")
    assert main([*base, "--input", str(mixed)]) == 2
    line = _err(capsys)
    assert str(mixed / "b_bad.png") in line and "not an image" in line

    # --skip-bad: the good image is translated, the bad one reported, exit code 1.
    out = tmp_path / "skipped"
    rc = main([*base[:3], "--output", str(out), "--input", str(mixed), "--skip-bad"])
    assert rc == 1 and (out / "a_good.png").exists() and not (out / "b_bad.png").exists()
    assert "b_bad.png" in capsys.readouterr().err

    transparent = tmp_path / "t.png"
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(transparent)
    assert main([*base, "--input", str(transparent)]) == 2
    assert str(transparent) in _err(capsys)

    missing_ckpt = tmp_path / "missing.pt"
    assert main(["predict", "--checkpoint", str(missing_ckpt), "--input", str(photos),
                 "--output", str(tmp_path / "o")]) == 2  # fmt: skip
    assert str(missing_ckpt) in _err(capsys)


def test_predict_wrong_channels_for_gray_model(photos, tmp_path, capsys):
    cfg = _cfg(input_nc=1, output_nc=1)
    ckpt = save_generator(tmp_path / "gray.pt", _generator(cfg), cfg)
    src = photos / "astronaut.png"
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(src),
                 "--output", str(tmp_path / "o.png")]) == 2  # fmt: skip
    line = _err(capsys)
    assert str(src) in line and "expected 1" in line
