"""Import rules from the hardening and split-stability work: stable hash splits, fraction
defaults, layout detection, case-colliding keys, one decode per image, EXIF orientation."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from data_fixtures import aligned_image, make_aligned, make_folders, noise, save
from PIL import Image

from p2p.cli import main
from p2p.config import DataConfig
from p2p.data import images
from p2p.data.importer import import_pairs
from p2p.data.manifest import SPLITS, load_manifest, split_of
from p2p.data.reports import InvalidDataset
from p2p.errors import DataError

DATA = DataConfig(load_size=16, crop_size=16)


def _split_of_keys(root) -> dict[str, str]:
    return {p.key: p.split for p in load_manifest(root).entries}


def test_adding_and_removing_pairs_never_moves_a_pair(tmp_path):
    src = tmp_path / "src"
    make_folders(src, {"img": 40}, split_dirs=False)
    kw = dict(fmt="folders", data=DATA, val_fraction=0.2, test_fraction=0.2, seed=7)
    import_pairs(src, tmp_path / "v1", **kw)
    before = _split_of_keys(tmp_path / "v1")
    # add 10 pairs, remove 5
    more = tmp_path / "more"
    make_folders(more, {"new": 10}, split_dirs=False)
    for side in "AB":
        for f in (more / side).iterdir():
            shutil.move(f, src / side / f.name)
        for i in range(5):
            next((src / side).glob(f"img{i}.*")).unlink()
    import_pairs(src, tmp_path / "v2", **kw)
    after = _split_of_keys(tmp_path / "v2")
    assert len(after) == 45
    kept = set(before) & set(after)
    assert len(kept) == 35 and all(before[k] == after[k] for k in kept)


def test_hash_split_honours_fractions():
    keys = [f"photo_{i:05d}" for i in range(20000)]
    got = {s: 0 for s in SPLITS}
    for k in keys:
        got[split_of(k, 0.1, 0.2, seed=0)] += 1
    assert abs(got["val"] / len(keys) - 0.1) < 0.01
    assert abs(got["test"] / len(keys) - 0.2) < 0.01
    # a bigger val fraction only moves pairs out of train
    for k in keys[:2000]:
        if split_of(k, 0.1, 0.2, 0) != "train":
            assert split_of(k, 0.3, 0.2, 0) == split_of(k, 0.1, 0.2, 0)


def test_cli_import_folders_without_splits_uses_build_fractions(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no params.yaml: build.val_fraction = test_fraction = 0.1
    make_folders(tmp_path / "src", {"img": 60}, split_dirs=False)
    sets = ["--set", "data.load_size=16", "--set", "data.crop_size=16"]
    sets += ["--set", "model.num_downs=4"]
    rc = main(["data", "import", "--format", "folders", "--src", "src", "--out", "ds", *sets])
    assert rc == 0, capsys.readouterr().err
    counts = load_manifest(tmp_path / "ds").counts
    assert sum(counts.values()) == 60 and counts["val"] > 0 and counts["test"] > 0
    assert counts == {
        s: sum(split_of(f"img{i}", 0.1, 0.1, 0) == s for i in range(60)) for s in SPLITS
    }


def test_aligned_format_on_folders_layout_fails_with_a_hint(tmp_path):
    make_folders(tmp_path / "src", {"img": 4}, split_dirs=False)
    with pytest.raises(DataError, match=r"has A/ and B/ folders.*use --format folders"):
        import_pairs(tmp_path / "src", tmp_path / "ds", fmt="aligned", data=DATA)
    assert not (tmp_path / "ds").exists()


def test_folders_format_on_aligned_layout_fails_with_a_hint(tmp_path):
    make_aligned(tmp_path / "src", {"train": 2})
    with pytest.raises(DataError, match=r"has train/ folders.*use --format aligned"):
        import_pairs(tmp_path / "src", tmp_path / "ds", fmt="folders", data=DATA)


def test_keys_differing_only_by_case_are_rejected(tmp_path):
    src = tmp_path / "src"
    make_aligned(src, {"train": 2})
    save(src / "train" / "Dup.png", aligned_image(16, seed=5))
    save(src / "train" / "dup.png", aligned_image(16, seed=6))
    with pytest.raises(InvalidDataset) as ei:
        import_pairs(src, tmp_path / "ds", fmt="aligned", data=DATA)
    problems = {p.file: p.reason for p in ei.value.problems}
    assert set(problems) == {str(src / "train" / "Dup.png"), str(src / "train" / "dup.png")}
    assert "differs only by case from dup.png" in problems[str(src / "train" / "Dup.png")]
    assert "case-insensitive" in problems[str(src / "train" / "dup.png")]


def test_import_decodes_each_image_once(tmp_path, monkeypatch):
    src = tmp_path / "src"
    make_folders(src, {"img": 6}, split_dirs=False)
    make_aligned(tmp_path / "al", {"train": 3, "val": 2})
    calls = []
    real = images._decode

    def counting(data, name):
        calls.append(name)
        return real(data, name)

    monkeypatch.setattr(images, "_decode", counting)
    file_opens = []  # PIL opening a file by path (a header pass) instead of decoded bytes
    real_open = Image.open

    def open_(fp, *a, **kw):
        if not isinstance(fp, io.BytesIO):
            file_opens.append(fp)
        return real_open(fp, *a, **kw)

    monkeypatch.setattr(Image, "open", open_)
    import_pairs(src, tmp_path / "ds", fmt="folders", data=DATA)
    assert len(calls) == 12  # 6 A + 6 B source files, nothing decoded again
    calls.clear()
    import_pairs(tmp_path / "al", tmp_path / "ds2", fmt="aligned", data=DATA)
    assert len(calls) == 5 and file_opens == []


def test_import_applies_exif_orientation(tmp_path):
    src = tmp_path / "src"
    a, b = noise(16, 24, seed=1), noise(16, 24, seed=2)  # 24 wide, 16 high
    for side, arr in (("A", a), ("B", b)):
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to display
        (src / side).mkdir(parents=True)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
        (src / side / "cam.jpg").write_bytes(buf.getvalue())
    import_pairs(src, tmp_path / "ds", fmt="folders", data=DATA)
    (pair,) = load_manifest(tmp_path / "ds").entries
    assert pair.a_size == (16, 24)  # upright: 16 wide, 24 high
    assert np.asarray(Image.open(pair.a)).shape == (24, 16, 3)
