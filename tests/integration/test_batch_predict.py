"""`p2p predict --address`: batch translation with Ray Data on a real 2-node local cluster,
S3 (moto) in and out. Outputs equal single-process `p2p predict`; reruns resume; a corrupt
input is named in `_summary.json` while the others are written; actors ran on both nodes."""

from __future__ import annotations

import io
import json
import uuid

import numpy as np
import pytest
from data_fixtures import noise, save
from PIL import Image

pytestmark = pytest.mark.slow

# Sizes that are and are not multiples of the U-Net's 64 (resized for the network and back).
SIZES = {"a.png": (64, 64), "b.jpg": (80, 60), "sub/c.png": (64, 128), "sub/deep/d.png": (70, 50)}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch
    from data_fixtures import TINY

    from p2p.checkpoints import save_generator
    from p2p.config import load_config
    from p2p.models import build_generator

    cfg = load_config(None, {**TINY, "model.base_channels": 4})
    torch.manual_seed(0)
    g = build_generator(cfg.model, cfg.data.input_nc, cfg.data.output_nc)
    g.train()
    with torch.no_grad():
        g(torch.rand(2, 3, 64, 64) * 2 - 1)  # non-default BN running stats
    return save_generator(tmp_path_factory.mktemp("ckpt") / "generator.pt", g.eval(), cfg)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A local folder of inputs: images in subfolders, one corrupt image, one non-image file."""
    root = tmp_path_factory.mktemp("in")
    for i, (rel, (w, h)) in enumerate(SIZES.items()):
        save(root / rel, noise(h, w, seed=i), **({"quality": 95} if rel.endswith(".jpg") else {}))
    (root / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "notes.txt").write_text("not an image: ignored")
    return root


def _s3():
    import os

    import boto3

    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])


def _upload(root, bucket: str, prefix: str) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            _s3().put_object(
                Bucket=bucket, Key=f"{prefix}/{p.relative_to(root).as_posix()}", Body=p.read_bytes()
            )


def _keys(bucket: str, prefix: str) -> set[str]:
    got = _s3().list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
    return {o["Key"][len(prefix) + 1 :] for o in got}


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def _summary(bucket: str) -> dict:
    return json.loads(_s3().get_object(Bucket=bucket, Key="out/_summary.json")["Body"].read())


def test_s3_batch_on_two_nodes_matches_single_process_and_resumes(
    cluster, s3_server, checkpoint, inputs, tmp_path, capsys
):
    import ray

    from p2p.cli import main

    bucket = f"p2p-batch-{uuid.uuid4().hex[:8]}"
    _s3().create_bucket(Bucket=bucket)
    _upload(inputs, bucket, "in")
    cmd = ["predict", "--checkpoint", str(checkpoint), "--input", f"s3://{bucket}/in/",
           "--output", f"s3://{bucket}/out/", "--address", cluster.address,
           "--actors", "2", "--batch-size", "1"]  # fmt: skip

    # 1) The job: the corrupt input fails alone (exit 1), every other one is written.
    assert main(cmd) == 1
    assert not ray.is_initialized()
    out = capsys.readouterr()
    assert "failed s3://" in out.err and "sub/broken.png" in out.err
    s = _summary(bucket)
    assert s["counts"] == {"total": 5, "written": 4, "skipped": 0, "failed": 1}
    assert [f["file"] for f in s["failed"]] == [f"s3://{bucket}/in/sub/broken.png"]
    assert s["failed"][0]["reason"]  # the decoder's reason, e.g. "not a valid image ..."
    assert s["mode"] == "ray" and s["model"]["uri"] == str(checkpoint.resolve())
    assert s["model"]["version"].startswith("sha256:")
    assert len({n["node_id"] for n in s["nodes"]}) == 2, s["nodes"]  # both nodes did work
    assert sum(n["images"] for n in s["nodes"]) == 5
    expected = {rel.rsplit(".", 1)[0] + ".png" for rel in SIZES} | {"_summary.json"}
    assert _keys(bucket, "out") == expected

    # 2) Equal to single-process predict (no Ray) on the same checkpoint, within 1/255.
    good = tmp_path / "good"
    for rel in SIZES:
        (good / rel).parent.mkdir(parents=True, exist_ok=True)
        (good / rel).write_bytes((inputs / rel).read_bytes())
    for rel in SIZES:  # the folder mode of predict is flat: one call per subfolder file
        dst = tmp_path / "ref" / (rel.rsplit(".", 1)[0] + ".png")
        assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(good / rel),
                     "--output", str(dst), "--device", "cpu"]) == 0  # fmt: skip
        got = _s3().get_object(Bucket=bucket, Key=f"out/{dst.relative_to(tmp_path / 'ref')}")
        diff = np.abs(_pixels(got["Body"].read()) - _pixels(dst.read_bytes()))
        assert diff.max() <= 1, (rel, diff.max())
    assert not ray.is_initialized()

    # 3) A rerun writes nothing again; after deleting one output, only that one is redone.
    assert main(cmd) == 1  # the corrupt input is still reported
    assert _summary(bucket)["counts"] == {"total": 5, "written": 0, "skipped": 4, "failed": 1}
    _s3().delete_object(Bucket=bucket, Key="out/sub/c.png")
    assert main(cmd) == 1
    assert _summary(bucket)["counts"] == {"total": 5, "written": 1, "skipped": 3, "failed": 1}
    assert "sub/c.png" in _keys(bucket, "out")


def test_local_folders_resume_and_nothing_left_starts_no_ray(cluster, checkpoint, tmp_path):
    import ray

    from p2p.cli import main

    src = tmp_path / "in"
    for i, (rel, (w, h)) in enumerate(SIZES.items()):
        save(src / rel, noise(h, w, seed=i))
    out = tmp_path / "out"
    cmd = ["predict", "--checkpoint", str(checkpoint), "--input", str(src), "--output", str(out),
           "--address", cluster.address, "--actors", "2", "--batch-size", "2"]  # fmt: skip
    assert main(cmd) == 0
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == {rel.rsplit(".", 1)[0] + ".png" for rel in SIZES} | {"_summary.json"}
    assert not [p for p in out.rglob(".*")]  # no temp files left behind

    # Nothing left to do: no Ray at all (an unreachable address is never contacted).
    bad = [*cmd[:-6], "--address", "127.0.0.1:1"]
    assert main(bad) == 0
    s = json.loads((out / "_summary.json").read_text())
    assert s["counts"] == {"total": 4, "written": 0, "skipped": 4, "failed": 0}
    assert not ray.is_initialized()


def test_bad_arguments_are_one_line_errors(tmp_path, checkpoint, capsys):
    from p2p.cli import main

    base = ["predict", "--checkpoint", str(checkpoint), "--ray"]
    assert main([*base, "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]) == 2
    (tmp_path / "in").mkdir()
    assert main([*base, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o")]) == 2
    assert main([*base, "--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "input not found" in err and "no image files" in err and "must not be inside" in err


def test_registered_champion_is_pinned_and_matches_the_checkpoint(
    cluster, checkpoint, tmp_path, monkeypatch
):
    """--model models:/NAME@champion: the alias is resolved once to a version (recorded in the
    summary); the actors load that version with predict's own loader, so the outputs equal the
    --checkpoint job's."""
    from data_fixtures import TINY

    from p2p import registry
    from p2p.cli import main
    from p2p.config import load_config
    from p2p.evaluation.evaluate import file_sha256

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # the default artifact root ./mlruns lands here
    name = f"batch-{uuid.uuid4().hex[:6]}"
    cfg = load_config(None, {**TINY, "model.base_channels": 4, "eval.model_name": name})
    # The registry only needs an evaluation of this exact file; the scores are not the point.
    metrics = {"l1": 0.5, "psnr": 10.0, "ssim": 0.1, "n_samples": 1,
               "checkpoint_sha256": file_sha256(checkpoint)}  # fmt: skip
    v = registry.log_and_register(checkpoint, cfg, metrics, lineage={})
    registry.promote(name, v.version)

    src = tmp_path / "in"
    for i, (rel, (w, h)) in enumerate(SIZES.items()):
        save(src / rel, noise(h, w, seed=i))
    common = ["--input", str(src), "--address", cluster.address, "--actors", "2"]
    uri = f"models:/{name}@champion"
    assert main(["predict", "--model", uri, "--output", str(tmp_path / "m"), *common]) == 0
    ckpt = ["--checkpoint", str(checkpoint), "--output", str(tmp_path / "c")]
    assert main(["predict", *ckpt, *common]) == 0
    s = json.loads((tmp_path / "m" / "_summary.json").read_text())
    assert s["model"] == {"uri": uri, "name": name, "version": v.version,
                          "resolved": f"models:/{name}/{v.version}"}  # fmt: skip
    assert s["counts"]["written"] == len(SIZES)
    for rel in SIZES:
        png = rel.rsplit(".", 1)[0] + ".png"
        a, b = (_pixels((tmp_path / d / png).read_bytes()) for d in ("m", "c"))
        assert np.abs(a - b).max() <= 1, rel


def test_ray_flag_starts_a_local_ray(checkpoint, tmp_path):
    """--ray without --address: a local Ray for the job, stopped afterwards."""
    import ray

    from p2p.cli import main

    src = tmp_path / "in"
    save(src / "x.png", noise(64, 64, seed=1))
    out = tmp_path / "out"
    cmd = ["predict", "--checkpoint", str(checkpoint), "--input", str(src), "--output", str(out)]
    assert main([*cmd, "--ray", "--actors", "1"]) == 0
    assert not ray.is_initialized()
    s = json.loads((out / "_summary.json").read_text())
    assert (s["address"], s["counts"]["written"], len(s["nodes"])) == ("local", 1, 1)
