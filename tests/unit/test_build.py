"""Pairs from photos (edges | colorize | superres), the demo dataset, and the data CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import make_aligned, noise, save, tree_hashes
from PIL import Image

from p2p.cli import main
from p2p.config import BuildConfig, DataConfig
from p2p.data.build import build_demo, build_pairs, demo_photos, edge_map, low_res
from p2p.data.manifest import load_manifest
from p2p.data.reports import InvalidDataset
from p2p.errors import DataError

DATA = DataConfig(load_size=32, crop_size=32)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    """Three real photos (from installed packages), shrunk so the tests stay fast."""
    d = tmp_path_factory.mktemp("photos")
    labels = {v: k for k, v in demo_photos().items()}
    for i, name in enumerate(["chelsea.png", "coffee.png", "astronaut.png"]):
        path = labels[f"skimage/data/{name}"]
        img = Image.open(path).convert("RGB")
        img.thumbnail((96, 96))
        img.save(d / f"photo{i}.jpg" if i == 1 else d / f"photo{i}.png", quality=95)
    return d


def _pairs(out, split=None):
    m = load_manifest(out)
    return [
        (np.asarray(Image.open(p.a)), np.asarray(Image.open(p.b)), Image.open(p.a).mode, p)
        for p in m.pairs(split)
    ]


# ----------------------------------------------------------------------------- edge maps


def test_edge_map_finds_the_square_outline():
    img = np.zeros((64, 64, 3), np.uint8)
    img[16:48, 16:48] = 220  # bright square on black
    e = np.asarray(edge_map(Image.fromarray(img)))
    assert e.shape == (64, 64) and set(np.unique(e)) <= {0, 255}
    edge = e == 0
    ring = np.zeros_like(edge)
    ring[13:51, 13:51] = True
    ring[19:45, 19:45] = False  # within 3 px of the square's border
    assert edge.sum() > 4 * 25  # the outline is found on all four sides...
    assert not (edge & ~ring).any()  # ...and nothing away from it
    for side in (edge[13:19, 20:44], edge[45:51, 20:44], edge[20:44, 13:19], edge[20:44, 45:51]):
        assert side.any(axis=0 if side.shape[0] < side.shape[1] else 1).all()
    # a flat image has no edges
    assert (np.asarray(edge_map(Image.new("RGB", (32, 32), (90, 20, 40)))) == 255).all()


# ----------------------------------------------------------------------------- tasks


def test_edges_pairs_channels_sizes_and_splits(photo_dir, tmp_path):
    build = BuildConfig(task="edges", num_pairs=9, size=32, val_fraction=0.2, test_fraction=0.2)
    rep = build_pairs(photo_dir, tmp_path / "ds", build=build, data=DATA)
    assert rep.counts == {"train": 5, "val": 2, "test": 2}
    for a, b, mode, _ in _pairs(tmp_path / "ds"):
        assert a.shape == b.shape == (32, 32, 3) and mode == "RGB"
        assert set(np.unique(a)) <= {0, 255} and (a[..., 0] == a[..., 2]).all()
    report = json.loads((tmp_path / "ds" / "report.json").read_text())
    # whole photos per split: no tile of a val/test photo is in train
    assert sorted(p["split"] for p in report["photos"]) == ["test", "train", "val"]
    # one-channel input side: the edge map is stored as L
    gray_in = DataConfig(input_nc=1, load_size=32, crop_size=32)
    build_pairs(photo_dir, tmp_path / "ds1", build=build, data=gray_in)
    assert {mode for *_, mode, _ in _pairs(tmp_path / "ds1")} == {"L"}


def test_colorize_input_is_the_luma_of_the_target(photo_dir, tmp_path):
    build = BuildConfig(task="colorize", num_pairs=4, size=32, val_fraction=0, test_fraction=0)
    data = DataConfig(input_nc=1, load_size=32, crop_size=32)
    build_pairs(photo_dir, tmp_path / "ds", build=build, data=data)
    for a, b, mode, _ in _pairs(tmp_path / "ds"):
        assert mode == "L" and b.shape == (32, 32, 3)
        assert np.array_equal(a, np.asarray(Image.fromarray(b).convert("L")))
    with pytest.raises(DataError, match="colorize makes colour B images"):
        build_pairs(photo_dir, tmp_path / "x", build=build, data=DataConfig(output_nc=1))


def test_superres_input_is_the_blurred_target(photo_dir, tmp_path):
    build = BuildConfig(task="superres", num_pairs=4, size=32, val_fraction=0, test_fraction=0)
    build_pairs(photo_dir, tmp_path / "ds", build=build, data=DATA)
    for a, b, mode, _ in _pairs(tmp_path / "ds"):
        assert mode == "RGB" and a.shape == b.shape == (32, 32, 3)
        assert np.array_equal(a, np.asarray(low_res(Image.fromarray(b))))
        assert np.abs(a.astype(int) - b).mean() > 1  # visibly lower resolution


def test_small_photos_are_upscaled_and_one_photo_mixes_splits(tmp_path):
    save(tmp_path / "p" / "tiny.png", noise(12, 20, seed=0))
    build = BuildConfig(num_pairs=5, size=32, val_fraction=0.2, test_fraction=0.2)
    rep = build_pairs(tmp_path / "p", tmp_path / "ds", build=build, data=DATA)
    assert rep.counts == {"train": 3, "val": 1, "test": 1}
    assert any("same photos as train" in w for w in rep.warnings)
    assert all(a.shape == (32, 32, 3) for a, *_ in _pairs(tmp_path / "ds"))


def test_build_is_seeded(photo_dir, tmp_path):
    build = BuildConfig(num_pairs=6, size=32, seed=1)
    other = BuildConfig(num_pairs=6, size=32, seed=2)
    build_pairs(photo_dir, tmp_path / "a" / "ds", build=build, data=DATA)
    build_pairs(photo_dir, tmp_path / "b" / "ds", build=build, data=DATA)
    build_pairs(photo_dir, tmp_path / "c" / "ds", build=other, data=DATA)
    ha, hb, hc = (tree_hashes(tmp_path / d / "ds") for d in "abc")
    assert ha == hb
    pngs = [{k: v for k, v in h.items() if k.endswith(".png")} for h in (ha, hc)]
    assert pngs[0] != pngs[1]  # another seed cuts other tiles


def test_bad_photos_fail_or_skip(photo_dir, tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    for f in photo_dir.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    blob = (src / "photo1.jpg").read_bytes()
    (src / "broken.jpg").write_bytes(blob[: len(blob) // 3])
    (src / "list.csv").write_text("a,b\n")
    save(src / "gray.png", noise(40, 40, seed=1, channels=1))
    build = BuildConfig(task="colorize", num_pairs=4, size=32, val_fraction=0, test_fraction=0)
    bad = {str(src / "broken.jpg"), str(src / "list.csv"), str(src / "gray.png")}
    with pytest.raises(InvalidDataset) as ei:
        build_pairs(src, tmp_path / "ds", build=build, data=DATA)
    assert {p.file for p in ei.value.problems} == bad
    assert "grayscale photo" in str(ei.value) and not (tmp_path / "ds").exists()
    rep = build_pairs(src, tmp_path / "ds", build=build, data=DATA, on_error="skip")
    assert {p.file for p in rep.skipped} == bad and rep.counts["train"] == 4
    report = json.loads((tmp_path / "ds" / "report.json").read_text())
    assert {s["file"] for s in report["skipped"]} == bad


# ----------------------------------------------------------------------------- demo


def test_demo_photos_are_real_installed_files():
    photos = demo_photos()
    labels = set(photos.values())
    assert "skimage/data/astronaut.png" in labels and len(photos) >= 8
    assert not any(n in label for label in labels for n in ("camera", "color.png", "phantom"))


def test_build_demo_is_byte_deterministic(tmp_path):
    build = BuildConfig(num_pairs=12, size=64)
    rep = build_demo(tmp_path / "a" / "demo", build, DATA, workers=3)
    build_demo(tmp_path / "b" / "demo", build, DATA, workers=1)  # thread count changes nothing
    ha, hb = tree_hashes(tmp_path / "a" / "demo"), tree_hashes(tmp_path / "b" / "demo")
    assert ha == hb and len(ha) == 2 + 2 * 12
    assert rep.counts == {"train": 10, "val": 1, "test": 1}
    text = (tmp_path / "a" / "demo" / "report.json").read_text()
    text += (tmp_path / "a" / "demo" / "manifest.jsonl").read_text()
    assert str(tmp_path) not in text and "site-packages" not in text  # machine-independent
    assert '"skimage/data/astronaut.png"' in text


# ----------------------------------------------------------------------------- CLI


def test_cli_build_demo_prepare(photo_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: defaults
    rc = main(
        ["data", "build", "--task", "superres", "--src", str(photo_dir), "--out", "b"]
        + ["--num-pairs", "4", "--size", "32", "--val-fraction", "0", "--test-fraction", "0"]
    )
    assert rc == 0 and "wrote 4 pairs (train 4, val 0, test 0)" in capsys.readouterr().out
    rc = main(
        ["data", "demo", "--out", "d", "--set", "build.num_pairs=3", "--set", "build.size=32"]
    )
    assert rc == 0 and len(load_manifest(tmp_path / "d")) == 3
    # prepare: driven by params only (demo, then an aligned folder)
    sets = [
        "--set",
        "data.raw_dir=data/raw/x",
        "--set",
        "build.num_pairs=3",
        "--set",
        "build.size=32",
    ]
    assert main(["data", "prepare", *sets]) == 0
    assert load_manifest(tmp_path / "data/raw/x").counts == {"train": 1, "val": 1, "test": 1}
    make_aligned(tmp_path / "src", {"train": 2, "val": 1})
    aligned = ["--set", "data.source=src", "--set", "data.source_format=aligned"]
    assert main(["data", "prepare", *sets, *aligned]) == 0
    assert load_manifest(tmp_path / "data/raw/x").counts == {"train": 2, "val": 1, "test": 0}
    capsys.readouterr()
    assert main(["data", "prepare", "--set", "data.source=nowhere"]) == 2
    assert (
        "nowhere: data.source is neither 'demo' nor an existing folder" in capsys.readouterr().err
    )
    rc = main(["data", "build", "--src", "nowhere", "--out", "z"])
    assert rc == 2 and "nowhere: photo folder not found" in capsys.readouterr().err


def test_adding_and_removing_photos_never_moves_a_photo(tmp_path):
    """Photos (and so their tiles) keep their split when other photos come and go."""
    photos = tmp_path / "photos"
    for i in range(12):
        save(photos / f"p{i:02d}.png", noise(40, 40, seed=i))
    build = BuildConfig(
        task="superres", num_pairs=24, size=16, seed=1, val_fraction=0.2, test_fraction=0.2
    )

    def splits(out) -> dict[str, str]:
        report = json.loads((out / "report.json").read_text())
        assert not any("moved there" in w for w in report["warnings"])
        return {Path(p["file"]).name: p["split"] for p in report["photos"]}

    rep = build_pairs(photos, tmp_path / "v1", build=build, data=DATA)
    assert rep.counts == {"train": 14, "val": 5, "test": 5}  # tile counts follow the fractions
    before = splits(tmp_path / "v1")
    for i in range(12, 15):
        save(photos / f"p{i:02d}.png", noise(40, 40, seed=i))
    (photos / "p00.png").unlink()
    (photos / "p05.png").unlink()
    build_pairs(photos, tmp_path / "v2", build=build, data=DATA)
    after = splits(tmp_path / "v2")
    kept = set(before) & set(after)
    assert len(kept) == 10 and all(before[p] == after[p] for p in kept)
    assert set(before.values()) == {"train", "val", "test"}
