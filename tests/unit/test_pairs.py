"""Import (aligned | folders), validation of planted bad files, atomic writes, the reader."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess

import numpy as np
import pytest
import torch
from data_fixtures import aligned_image, make_aligned, make_folders, noise, save, tree_hashes
from PIL import Image

from p2p.bench.raw_dataset import PairedImageDataset
from p2p.cli import main
from p2p.config import DataConfig
from p2p.data import writer as writer_mod
from p2p.data.importer import import_pairs
from p2p.data.manifest import assign_splits, load_manifest, sanitize_key, split_counts
from p2p.data.reports import InvalidDataset
from p2p.data.validate import validate_dataset
from p2p.errors import DataError

DATA = DataConfig(load_size=16, crop_size=16)


def _keys(root) -> dict[str, list[str]]:
    m = load_manifest(root)
    return {s: [p.key for p in m.pairs(s)] for s in ("train", "val", "test")}


def _plant_aligned_bad(src) -> set[str]:
    """Plant one file per validation case into an aligned source; return their paths."""
    d = src / "train"
    good = aligned_image(16, seed=1)
    (d / "corrupt.jpg").write_bytes(bytes(random.Random(0).randbytes(500)))  # not decodable
    full = (d / "train0.png").read_bytes()
    (d / "trunc.png").write_bytes(full[: len(full) // 2])  # truncated
    (d / "notes.txt").write_text("not an image")  # non-image file
    save(d / "odd.png", np.zeros((16, 33, 3), np.uint8))  # odd width
    save(d / "shape.png", aligned_image(16, seed=2)[:, 8:])  # 16x24: halves 12x16, not A|B
    save(d / "dup.png", good)  # duplicate key: same stem, two extensions
    save(d / "dup.jpg", good)
    save(d / "x y.png", good)  # keys collide after sanitising
    save(d / "x_y.png", good)
    rgba = np.concatenate([good, np.full((16, 32, 1), 255, np.uint8)], axis=2)
    rgba[3, 3, 3] = 0
    save(d / "alpha.png", rgba)  # real transparency: wrong channel count for input_nc=3
    names = ["corrupt.jpg", "trunc.png", "notes.txt", "odd.png", "shape.png", "dup.png"]
    names += ["dup.jpg", "x y.png", "x_y.png", "alpha.png"]
    return {str(d / n) for n in names}


# ----------------------------------------------------------------------------- aligned


def test_import_aligned_writes_canonical_layout(tmp_path):
    src, out = tmp_path / "src", tmp_path / "raw" / "ds"
    keys = make_aligned(src)
    save(src / "train" / "sub" / "a b.v2.png", aligned_image(16, seed=9))  # nested, odd name
    (src / "README.txt").write_text("top-level files are ignored")
    rep = import_pairs(src, out, fmt="aligned", data=DATA)
    assert rep.counts == {"train": 5, "val": 2, "test": 2} and not rep.skipped
    assert any("README.txt" in w for w in rep.warnings)
    assert _keys(out) == {
        "train": sorted(keys["train"] + ["sub_a_b_v2"]),
        "val": keys["val"],
        "test": keys["test"],
    }
    header, *lines = (json.loads(line) for line in (out / "manifest.jsonl").open())
    assert header == {"format": "p2p-pairs", "format_version": 2, "name": "ds"}
    assert len(lines) == 9
    assert [(e["split"], e["key"]) for e in lines] == [
        (s, k) for s, ks in _keys(out).items() for k in ks
    ]
    for e in lines:
        assert e["size"] == [16, 16]
        for side in "AB":
            blob = (out / side / e["split"] / f"{e['key']}.png").read_bytes()
            assert hashlib.sha256(blob).hexdigest() == e[f"{side.lower()}_sha256"]
    # A is the left half, B the right half, pixel-exact (PNG source)
    src_img = np.asarray(Image.open(src / "val" / "val1.png"))
    m = load_manifest(out)
    p = next(p for p in m.pairs("val") if p.key == "val1")
    assert np.array_equal(np.asarray(Image.open(p.a)), src_img[:, :16])
    assert np.array_equal(np.asarray(Image.open(p.b)), src_img[:, 16:])
    assert validate_dataset(out, data=DATA).ok
    assert json.loads((out / "report.json").read_text())["skipped"] == []


def test_fail_names_every_bad_file_and_writes_nothing(tmp_path):
    src, out = tmp_path / "src", tmp_path / "raw" / "ds"
    make_aligned(src)
    bad = _plant_aligned_bad(src)
    with pytest.raises(InvalidDataset) as ei:
        import_pairs(src, out, fmt="aligned", data=DATA, on_error="fail")
    assert {p.file for p in ei.value.problems} == bad
    msg = str(ei.value)
    assert msg.startswith(f"{len(bad)} problems in {src} (nothing written):")
    for f in bad:
        assert f"\n  {f}: " in msg
    reasons = {p.file.rsplit("/", 1)[1]: p.reason for p in ei.value.problems}
    assert "corrupt or truncated" in reasons["trunc.png"]
    assert "not an image" in reasons["corrupt.jpg"] and "not an image file" in reasons["notes.txt"]
    assert "odd width 33" in reasons["odd.png"]
    assert "aspect ratio 0.75" in reasons["shape.png"]
    assert "duplicate key 'dup'" in reasons["dup.png"] and "dup.jpg" in reasons["dup.png"]
    assert "duplicate key 'x_y'" in reasons["x y.png"]
    assert "transparency" in reasons["alpha.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # not even raw/ or a temp dir


def test_fail_leaves_existing_dataset_untouched(tmp_path):
    src, out = tmp_path / "src", tmp_path / "ds"
    make_aligned(src)
    import_pairs(src, out, fmt="aligned", data=DATA)
    before = tree_hashes(out)
    _plant_aligned_bad(src)
    with pytest.raises(InvalidDataset):
        import_pairs(src, out, fmt="aligned", data=DATA, on_error="fail")
    assert tree_hashes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "src"]


def test_skip_keeps_exactly_the_good_pairs_plus_report(tmp_path):
    src, out = tmp_path / "src", tmp_path / "ds"
    keys = make_aligned(src)
    bad = _plant_aligned_bad(src)
    rep = import_pairs(src, out, fmt="aligned", data=DATA, on_error="skip")
    assert _keys(out) == keys
    assert {p.file for p in rep.skipped} == bad
    report = json.loads((out / "report.json").read_text())
    assert {s["file"] for s in report["skipped"]} == bad
    assert all(s["reason"] for s in report["skipped"])
    assert validate_dataset(out, data=DATA).ok
    # the canonical dir holds only manifest, report and the good pairs
    files = set(tree_hashes(out))
    assert files == {"manifest.jsonl", "report.json"} | {
        f"{side}/{s}/{k}.png" for side in "AB" for s, ks in keys.items() for k in ks
    }


def test_skip_replaces_existing_dataset(tmp_path):
    src, out = tmp_path / "src", tmp_path / "ds"
    make_aligned(src, {"train": 2})
    import_pairs(src, out, fmt="aligned", data=DATA)
    make_aligned(src, {"train": 3})
    import_pairs(src, out, fmt="aligned", data=DATA)
    assert _keys(out)["train"] == ["train0", "train1", "train2"]


def test_wrong_channel_count_for_grayscale_input(tmp_path):
    src = tmp_path / "src"
    make_aligned(src, {"train": 2})
    gray_input = DataConfig(input_nc=1, load_size=16, crop_size=16)
    with pytest.raises(InvalidDataset) as ei:
        import_pairs(src, tmp_path / "ds", fmt="aligned", data=gray_input)
    assert len(ei.value.problems) == 3  # both files + "train split is empty"
    files = [p for p in ei.value.problems if p.file.endswith(".png")]
    assert len(files) == 2
    assert all("(left half, A): has 3 colour channels, expected 1" in p.reason for p in files)
    # BtoA makes the B side the input; A|B with gray left halves imports fine then
    d = src / "train"
    for f in d.iterdir():
        arr = np.asarray(Image.open(f)).copy()
        arr[:, 16:] = arr[:, 16:].mean(axis=2, keepdims=True).astype(np.uint8)
        save(f, arr)
    flipped = DataConfig(input_nc=1, direction="BtoA", load_size=16, crop_size=16)
    import_pairs(src, tmp_path / "ds", fmt="aligned", data=flipped)
    p = load_manifest(tmp_path / "ds").pairs("train")[0]
    assert Image.open(p.a).mode == "RGB" and Image.open(p.b).mode == "L"


def test_empty_train_split_is_an_error_and_empty_test_a_warning(tmp_path):
    src = tmp_path / "src"
    make_aligned(src, {"val": 2})
    with pytest.raises(InvalidDataset, match=r"src/train: train split is empty"):
        import_pairs(src, tmp_path / "ds", fmt="aligned", data=DATA)
    make_aligned(src, {"train": 2})
    rep = import_pairs(src, tmp_path / "ds", fmt="aligned", data=DATA)
    assert "test split is empty (no such folder)" in rep.warnings
    # skip mode with every train file bad still fails: there is nothing to train on
    for f in (src / "train").iterdir():
        f.write_bytes(b"junk")
    with pytest.raises(InvalidDataset, match="train split is empty"):
        import_pairs(src, tmp_path / "ds2", fmt="aligned", data=DATA, on_error="skip")
    assert not (tmp_path / "ds2").exists()


def test_unsplit_aligned_uses_seeded_fractions(tmp_path):
    src = tmp_path / "src"
    for i in range(10):
        save(src / f"img{i}.jpg", aligned_image(16, seed=i), quality=95)
    rep = import_pairs(
        src, tmp_path / "ds", fmt="aligned", data=DATA, val_fraction=0.2, test_fraction=0.1
    )
    assert sum(rep.counts.values()) == 10 and rep.counts["train"] >= 5
    rep2 = import_pairs(
        src, tmp_path / "ds2", fmt="aligned", data=DATA, val_fraction=0.2, test_fraction=0.1
    )
    assert _keys(tmp_path / "ds") == _keys(tmp_path / "ds2") and rep2.counts == rep.counts


def test_mixed_shapes_allowed_when_asked(tmp_path):
    src = tmp_path / "src"
    make_aligned(src, {"train": 4})
    save(src / "train" / "wide.png", np.zeros((16, 48, 3), np.uint8))
    with pytest.raises(InvalidDataset, match="wide.png: halves have aspect ratio 1.50"):
        import_pairs(src, tmp_path / "ds", fmt="aligned", data=DATA)
    rep = import_pairs(src, tmp_path / "ds", fmt="aligned", data=DATA, check_aspect=False)
    assert rep.counts["train"] == 5


# ----------------------------------------------------------------------------- folders


def test_import_folders_with_splits(tmp_path):
    src, out = tmp_path / "src", tmp_path / "ds"
    keys = make_folders(src)
    rep = import_pairs(src, out, fmt="folders", data=DATA)
    assert _keys(out) == {"train": keys["train"], "val": keys["val"], "test": []}
    assert "test split is empty (no such folder)" in rep.warnings
    p = load_manifest(out).pairs("val")[1]
    b_src = np.asarray(Image.open(src / "B" / "val" / "val1.png"))
    assert np.array_equal(np.asarray(Image.open(p.b)), b_src)  # PNG source: exact


def test_folders_bad_files(tmp_path):
    src, out = tmp_path / "src", tmp_path / "ds"
    keys = make_folders(src)
    save(src / "A" / "train" / "lonely.jpg", noise(16, 16, seed=1))  # no B partner
    save(src / "B" / "val" / "orphan.png", noise(16, 16, seed=2))  # no A partner
    save(src / "A" / "train" / "big.png", noise(16, 16, seed=3))
    save(src / "B" / "train" / "big.png", noise(16, 20, seed=3))  # size mismatch
    save(src / "A" / "stray.png", noise(16, 16, seed=4))  # outside the split folders
    rgba = np.concatenate([noise(16, 16, seed=5), np.zeros((16, 16, 1), np.uint8)], axis=2)
    save(src / "A" / "val" / "clear.png", rgba)
    save(src / "B" / "val" / "clear.png", noise(16, 16, seed=5))
    bad = {
        str(src / "A/train/lonely.jpg"),
        str(src / "B/val/orphan.png"),
        str(src / "B/train/big.png"),
        str(src / "A/stray.png"),
        str(src / "A/val/clear.png"),
    }
    with pytest.raises(InvalidDataset) as ei:
        import_pairs(src, out, fmt="folders", data=DATA)
    assert {p.file for p in ei.value.problems} == bad
    reasons = {p.file: p.reason for p in ei.value.problems}
    assert reasons[str(src / "A/train/lonely.jpg")] == "missing partner: no B/train/lonely.* image"
    assert reasons[str(src / "B/val/orphan.png")] == "missing partner: no A/val/orphan.* image"
    assert "does not match its partner" in reasons[str(src / "B/train/big.png")]
    assert "not under A/train, A/val or A/test" in reasons[str(src / "A/stray.png")]
    assert not out.exists()
    rep = import_pairs(src, out, fmt="folders", data=DATA, on_error="skip")
    assert _keys(out) == {"train": keys["train"], "val": keys["val"], "test": []}
    assert {p.file for p in rep.skipped} == bad


def test_flat_folders_split_by_fraction(tmp_path):
    src = tmp_path / "src"
    make_folders(src, {"img": 12}, split_dirs=False)
    import_pairs(
        src, tmp_path / "ds", fmt="folders", data=DATA, val_fraction=0.25, test_fraction=0.25
    )
    split = {k: assign_splits([k], 0.25, 0.25, 0)[k] for k in (f"img{i}" for i in range(12))}
    assert _keys(tmp_path / "ds") == {
        s: sorted(k for k, v in split.items() if v == s) for s in ("train", "val", "test")
    }
    all_keys = sum(_keys(tmp_path / "ds").values(), [])
    assert sorted(all_keys) == sorted(f"img{i}" for i in range(12))


def test_folders_missing_side(tmp_path):
    (tmp_path / "src" / "A").mkdir(parents=True)
    with pytest.raises(DataError, match=r"src/B: missing"):
        import_pairs(tmp_path / "src", tmp_path / "ds", fmt="folders", data=DATA)


# ----------------------------------------------------------------------------- validation


def test_validate_source_dir_reports_without_writing(tmp_path):
    src = tmp_path / "src"
    make_aligned(src)
    bad = _plant_aligned_bad(src)
    before = tree_hashes(tmp_path)
    rep = validate_dataset(src, data=DATA)
    assert rep.kind == "aligned" and not rep.ok
    assert {p.file for p in rep.problems} == bad
    assert rep.counts == {"train": 4, "val": 2, "test": 2}
    assert tree_hashes(tmp_path) == before


def test_validate_canonical_catches_tampering(tmp_path):
    src, out = tmp_path / "src", tmp_path / "ds"
    make_aligned(src)
    import_pairs(src, out, fmt="aligned", data=DATA)
    m = load_manifest(out)
    changed, missing = m.pairs("train")[0].b, m.pairs("train")[1].a
    save(changed, noise(16, 16, seed=99))  # content changed: sha256 differs
    missing.unlink()
    save(out / "A" / "val" / "extra.png", noise(16, 16, seed=1))  # not in the manifest
    (out / "B" / "test" / m.pairs("test")[0].b.name).write_bytes(b"garbage")
    rep = validate_dataset(out, data=DATA)
    assert rep.kind == "canonical"
    got = {p.file: p.reason for p in rep.problems}
    assert set(got) == {
        str(out / "B/train/train0.png"),
        str(out / "A/train/train1.png"),
        str(out / "A/val/extra.png"),
        str(out / "B/test/test0.png"),
    }
    assert "sha256 differs" in got[str(out / "B/train/train0.png")]
    assert "missing" in got[str(out / "A/train/train1.png")]
    assert "not listed in manifest.json" in got[str(out / "A/val/extra.png")]
    assert "not an image" in got[str(out / "B/test/test0.png")]
    assert rep.counts == {"train": 2, "val": 2, "test": 1}


def test_load_manifest_errors(tmp_path):
    with pytest.raises(DataError, match="not a p2p dataset"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{bad json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format_version": 7}')
    with pytest.raises(DataError, match="format_version 7 is not 1; re-import"):
        load_manifest(tmp_path)
    doc = {"format_version": 1, "pairs": [{"key": "a", "split": "train", "a": "../x.png"}]}
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="pair #0 is malformed"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").unlink()
    header = '{"format": "p2p-pairs", "format_version": 2, "name": "x"}\n'
    (tmp_path / "manifest.jsonl").write_text('{"format_version": 9}\n')
    with pytest.raises(DataError, match="line 1 is not a p2p-pairs header"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.jsonl").write_text(header + '{"split": "train", "key": "../a"}\n')
    with pytest.raises(DataError, match=r"manifest.jsonl: line 2 is malformed .*'\.\./a'"):
        load_manifest(tmp_path)


# ----------------------------------------------------------------------------- writer safety


def test_refuses_to_replace_a_non_dataset_folder(tmp_path):
    src = tmp_path / "src"
    make_aligned(src, {"train": 2})
    photos = tmp_path / "photos"
    save(photos / "precious.jpg", noise(8, 8, seed=0))
    with pytest.raises(DataError, match="is not a p2p dataset.*refusing to replace it"):
        import_pairs(src, photos, fmt="aligned", data=DATA)
    assert (photos / "precious.jpg").exists()
    with pytest.raises(DataError, match="must be outside --src"):
        import_pairs(src, src / "out", fmt="aligned", data=DATA)


def test_swap_failure_restores_previous_dataset(tmp_path, monkeypatch):
    src, out = tmp_path / "src", tmp_path / "ds"
    make_aligned(src, {"train": 2})
    import_pairs(src, out, fmt="aligned", data=DATA)
    before = tree_hashes(out)
    real_replace = writer_mod.os.replace

    def flaky_replace(a, b):
        if ".tmp-" in str(a):
            raise OSError("disk full")
        return real_replace(a, b)

    monkeypatch.setattr(writer_mod.os, "replace", flaky_replace)
    make_aligned(src, {"train": 3})
    with pytest.raises(OSError, match="disk full"):
        import_pairs(src, out, fmt="aligned", data=DATA)
    assert tree_hashes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "src"]


def test_interrupted_write_is_recovered(tmp_path):
    src, out = tmp_path / "src", tmp_path / "ds"
    make_aligned(src, {"train": 2})
    import_pairs(src, out, fmt="aligned", data=DATA)
    before = tree_hashes(out)
    proc = subprocess.Popen(["true"])
    proc.wait()  # a pid that is no longer running: the "killed writer"
    # killed between the two renames: the old dataset moved aside, the new one not yet in place
    out.rename(tmp_path / f".ds.old-{proc.pid}-deadbeef")
    (tmp_path / f".ds.tmp-{proc.pid}-deadbeef" / "A").mkdir(parents=True)
    writer_mod._recover_leftovers(out)
    assert tree_hashes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "src"]


# ----------------------------------------------------------------------------- keys & splits


def test_keys_and_split_helpers():
    assert sanitize_key("a b.v2") == "a_b_v2" and sanitize_key("sub/x-1") == "sub_x-1"
    assert split_counts(240, 0.1, 0.1) == (192, 24, 24)
    assert split_counts(5, 0.1, 0.1) == (3, 1, 1)  # non-zero fractions keep a non-empty split
    assert split_counts(2, 0.1, 0.1) == (2, 0, 0)
    assert split_counts(3, 0.5, 0.4) == (1, 1, 1)
    s1 = assign_splits([f"k{i}" for i in range(20)], 0.2, 0.2, seed=3)
    s2 = assign_splits([f"k{i}" for i in reversed(range(20))], 0.2, 0.2, seed=3)
    assert s1 == s2 and set(s1.values()) == {"train", "val", "test"}


# ----------------------------------------------------------------------------- reader


def test_paired_image_dataset_direction_and_seed(tmp_path):
    src, out = tmp_path / "src", tmp_path / "ds"
    make_folders(src)
    import_pairs(src, out, fmt="folders", data=DATA)
    p = load_manifest(out).pairs("train")[0]
    a = torch.from_numpy(np.asarray(Image.open(p.a), dtype=np.float32) / 127.5 - 1)
    b = torch.from_numpy(np.asarray(Image.open(p.b), dtype=np.float32) / 127.5 - 1)
    ab = PairedImageDataset(out, "train", DATA, train=False)
    x, y = ab[0]
    assert (
        len(ab) == 4 and torch.equal(x, a.permute(2, 0, 1)) and torch.equal(y, b.permute(2, 0, 1))
    )
    ba = PairedImageDataset(out, "train", DataConfig(direction="BtoA", crop_size=16), train=False)
    x, y = ba[0]
    assert torch.equal(x, b.permute(2, 0, 1)) and torch.equal(y, a.permute(2, 0, 1))
    train = PairedImageDataset(out, "train", DataConfig(load_size=20, crop_size=16), True, seed=1)
    first = train[0][0]
    assert torch.equal(first, train[0][0])
    seen = set()
    for e in range(8):
        train.set_epoch(e)
        seen.add(train[0][0].numpy().tobytes())
    assert len(seen) > 1
    with pytest.raises(DataError, match="split 'test' has no pairs"):
        PairedImageDataset(out, "test", DATA, train=False)


# ----------------------------------------------------------------------------- CLI


def test_cli_import_and_validate(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "ds"
    make_aligned(src)
    args = ["--params", str(tmp_path / "none.yaml")]
    (tmp_path / "none.yaml").write_text(
        "data: {load_size: 16, crop_size: 16}\nmodel: {num_downs: 4}\n"
    )
    rc = main(
        ["data", "import", "--format", "aligned", "--src", str(src), "--out", str(out)] + args
    )
    assert rc == 0
    assert "wrote 8 pairs (train 4, val 2, test 2)" in capsys.readouterr().out
    assert main(["data", "validate", str(out)] + args) == 0
    assert "ok in" in capsys.readouterr().out


def test_cli_error_is_one_line_naming_the_file(tmp_path, capsys):
    src = tmp_path / "src"
    make_aligned(src, {"train": 3})
    save(src / "train" / "odd.png", np.zeros((16, 33, 3), np.uint8))
    rc = main(
        ["data", "import", "--format", "aligned", "--src", str(src), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0
    assert err == (
        f"p2p data: error: {src}/train/odd.png: odd width 33: cannot split into equal A | B "
        "halves (nothing written)"
    )
    rc = main(["data", "validate", str(src)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("p2p data: error:") and "odd.png" in err
    rc = main(["data", "validate", str(tmp_path / "missing")])
    assert rc == 2 and "missing: source folder not found" in capsys.readouterr().err
