"""Evaluation and the model registry against real components: shards built from the demo
photos, a real MLflow sqlite store (artifacts on local disk, and on S3 through moto), real
evaluation of real checkpoints."""

from __future__ import annotations

import json
import math

import boto3
import numpy as np
import pytest
import torch
from data_fixtures import TINY
from PIL import Image

from p2p.checkpoints import load_generator, save_generator
from p2p.config import load_config
from p2p.errors import P2PError
from p2p.evaluation.evaluate import evaluate_checkpoint, read_metrics
from p2p.evaluation.metrics import l1, psnr, ssim
from p2p.models import build_generator

OVERRIDES = {
    **TINY,
    "build.size": 72,
    "eval.batch_size": 2,  # 3 test samples: two batches, the last one short
    "eval.num_samples": 2,
}


def make_cfg(**extra):
    return load_config(None, {**OVERRIDES, **extra})


def make_shards(root, *, num_pairs=30, seed=0):
    """Raw demo pairs -> WebDataset shards (the real data path)."""
    from p2p.data.build import build_demo
    from p2p.data.shards import write_shards

    cfg = make_cfg(**{"build.num_pairs": num_pairs, "build.seed": seed})
    build_demo(root / "raw", cfg.build, cfg.data)
    index = write_shards(root / "raw", root / "shards", cfg.data)
    return str(root / "shards"), index


def make_checkpoint(path, cfg, *, seed=0, saturate=None):
    """A generator checkpoint: random init, or with the last layer's bias pushed so far that
    the tanh saturates (a clearly bad model; the size of the push sets how bad)."""
    torch.manual_seed(seed)
    g = build_generator(cfg.model, cfg.data.input_nc, cfg.data.output_nc)
    if saturate is not None:
        last = [m for m in g.modules() if isinstance(m, torch.nn.ConvTranspose2d)][-1]
        with torch.no_grad():
            last.bias.fill_(saturate)
    save_generator(path, g, cfg)
    return path


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def other_shards(tmp_path_factory):
    """A second, different test set (other photos crops): another data version."""
    return make_shards(tmp_path_factory.mktemp("data2"), num_pairs=40, seed=7)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow sqlite store + local artifact root for the module (first use migrates the
    DB, ~3 s); tests use their own model names."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)  # default artifact root ./mlruns lands in the temp dir
        yield root


@pytest.fixture
def evaluated(tmp_path, shards):
    """Factory: checkpoint -> (path, metrics) evaluated on the module's shards."""

    def make(name, cfg, **kw):
        ckpt = make_checkpoint(tmp_path / f"{name}.pt", cfg, **kw)
        m = evaluate_checkpoint(ckpt, shards[0], cfg, tmp_path / f"eval-{name}")
        return ckpt, m

    return make


def _test_samples(shards_url, cfg):
    """The test split, read independently of evaluate (batch 1, every sample)."""
    from p2p.data.dataset import make_loader

    loader = make_loader(shards_url, "test", cfg.data, batch_size=1, train=False, num_batches=None)
    return [(a, b) for a, b in loader]


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_writes_metrics_grid_and_page(tmp_path, shards):
    url, index = shards
    cfg = make_cfg()
    ckpt = make_checkpoint(tmp_path / "g.pt", cfg, seed=1)
    out = tmp_path / "reports"
    m = evaluate_checkpoint(ckpt, url, cfg, out)

    n_test = index.samples("test")
    assert n_test == 3 and m["n_samples"] == n_test  # the short last batch is included
    assert m["split"] == "test" and m["checkpoint"] == str(ckpt)
    assert m["data_version"].startswith("manifest-sha256:")  # raw data not tracked by DVC here
    assert set(m["unavailable"]) | {k for k in ("fid", "lpips") if k in m} == {"fid", "lpips"}
    assert read_metrics(out / "metrics.json") == m

    # the same numbers, computed independently from the test samples one by one
    g = load_generator(ckpt)
    samples = _test_samples(url, cfg)
    assert len(samples) == n_test
    with torch.no_grad():
        fakes = torch.cat([g(a) for a, _ in samples])
    reals = torch.cat([b for _, b in samples])
    assert m["l1"] == pytest.approx(l1(fakes, reals), abs=1e-6)
    assert m["psnr"] == pytest.approx(psnr(fakes, reals), abs=1e-5)
    assert m["ssim"] == pytest.approx(ssim(fakes, reals), abs=1e-6)
    # the "input as output" baseline (3 -> 3 channels): what doing nothing scores
    inputs = torch.cat([a for a, _ in samples])
    base = m["baselines"]["input"]
    assert base["l1"] == pytest.approx(l1(inputs, reals), abs=1e-6)
    assert base["psnr"] == pytest.approx(psnr(inputs, reals), abs=1e-5)
    assert base["ssim"] == pytest.approx(ssim(inputs, reals), abs=1e-6)
    assert base["psnr"] != pytest.approx(m["psnr"])
    # the build task's classical baseline (edges: flat grey) and an untrained generator
    assert m["baseline_labels"]["classical"] == "edges: flat grey"
    grey = torch.zeros_like(reals)
    assert m["baselines"]["classical"]["psnr"] == pytest.approx(psnr(grey, reals), abs=1e-5)
    assert math.isfinite(m["baselines"]["untrained"]["psnr"])
    assert set(m["margins_psnr"]) == {"input", "untrained", "classical"}
    for name, b in m["baselines"].items():
        assert m["margins_psnr"][name] == pytest.approx(m["psnr"] - b["psnr"])
    assert m["beats_baselines"] == all(v > 0 for v in m["margins_psnr"].values())

    grid = Image.open(out / "samples.png")
    # 2 rows (eval.num_samples) of input | output | target under a 22 px label row, 64 px
    # tiles upscaled x4 (nearest) to 256 px, 4 px gaps
    assert grid.size == (3 * 256 + 4 * 4, 22 + 2 * (256 + 4))
    first_input = np.asarray(grid)[22 : 22 + 256 : 4, 4 : 4 + 256 : 4]
    expected = ((samples[0][0][0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte()
    np.testing.assert_array_equal(first_input, expected.numpy())
    page = (out / "index.html").read_text()
    assert 'src="samples.png"' in page and f"{m['psnr']:.4f}" in page
    assert "unavailable" in page
    assert f"psnr, baseline: the input as the output</th><td>{base['psnr']:.4f}" in page
    assert "psnr margin over edges: flat grey" in page


def test_evaluate_failure_keeps_previous_results(tmp_path, shards):
    cfg = make_cfg()
    ckpt = make_checkpoint(tmp_path / "g.pt", cfg)
    out = tmp_path / "reports"
    evaluate_checkpoint(ckpt, shards[0], cfg, out)
    before = (out / "metrics.json").read_bytes()
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(P2PError, match="broken.pt"):
        evaluate_checkpoint(tmp_path / "broken.pt", shards[0], cfg, out)
    with pytest.raises(P2PError, match="split 'nope'|no split|nope"):
        evaluate_checkpoint(ckpt, shards[0], cfg, out, split="nope")
    gray = make_checkpoint(tmp_path / "gray.pt", make_cfg(**{"data.input_nc": 1}))
    with pytest.raises(P2PError, match=r"gray.pt: generator maps 1 -> 3 channels"):
        evaluate_checkpoint(gray, shards[0], cfg, out)
    assert (out / "metrics.json").read_bytes() == before


def test_evaluate_noise_mode_differs_and_keeps_weights(tmp_path, shards):
    """eval.eval_mode false: dropout + batch statistics on (the paper's test-time noise)."""
    cfg = make_cfg()
    noisy = cfg.replace(**{"eval.eval_mode": False})
    ckpt = make_checkpoint(tmp_path / "g.pt", cfg, seed=3)
    m_eval = evaluate_checkpoint(ckpt, shards[0], cfg, tmp_path / "a")
    torch.manual_seed(0)
    m_noise = evaluate_checkpoint(ckpt, shards[0], noisy, tmp_path / "b")
    assert m_noise["eval_mode"] is False and m_eval["eval_mode"] is True
    assert m_noise["l1"] != pytest.approx(m_eval["l1"], abs=1e-6)
    assert m_noise["testset"] != m_eval["testset"]  # not comparable scores
    # and evaluation never changes the file it scored
    assert evaluate_checkpoint(ckpt, shards[0], cfg, tmp_path / "c")["l1"] == m_eval["l1"]


# ----------------------------------------------------------------------------- register


def test_register_tags_lineage_and_loads_back(store, evaluated):
    from p2p import registry

    cfg = make_cfg(**{"eval.model_name": "reg-lineage"})
    ckpt, m = evaluated("a", cfg, seed=1)
    v = registry.log_and_register(
        ckpt,
        cfg,
        m,
        lineage={
            "data_version": "0123abcd.dir",
            "ray_run": "runs/p2p-demo",
            "ray_checkpoint": "runs/p2p-demo/checkpoint_000003",
        },
    )
    assert (v.name, v.version, v.aliases) == ("reg-lineage", 1, ("challenger",))
    assert v.model_id and v.model_id.startswith("m-")  # the MLflow LoggedModel
    lin = v.group("lineage")
    assert lin["data_version"] == "0123abcd.dir"
    assert lin["ray_checkpoint"] == "runs/p2p-demo/checkpoint_000003"
    assert lin["params_hash"] == cfg.model_hash()
    assert len(lin["git_commit"]) == 40 or lin["git_commit"] == "unknown"
    assert float(v.tags["metric.psnr"]) == m["psnr"] and float(v.tags["metric.l1"]) == m["l1"]
    assert v.tags["eval.testset"] == m["testset"] and v.tags["eval.n_samples"] == "3"
    assert v.tags["metric.fid"].startswith("unavailable") or "fid" in m
    assert v.tags["onnx.checked_with"] == "onnxruntime"
    assert float(v.tags["onnx.max_abs_diff"]) < 1e-4

    # the run has the params, metrics and lineage too
    from mlflow import MlflowClient

    run = MlflowClient().get_run(v.run_id)
    assert run.data.params["model.base_channels"] == "8"
    assert run.data.metrics["test_psnr"] == pytest.approx(m["psnr"])
    assert run.data.tags["lineage.data_version"] == "0123abcd.dir"

    # the registered generator is the checkpoint, bit for bit
    g_ref = load_generator(ckpt)
    g, got_cfg = registry.load_registered_generator("models:/reg-lineage@challenger")
    g2, _ = registry.load_registered_generator("models:/reg-lineage/1")
    assert got_cfg.model == cfg.model and got_cfg.eval.model_name == "reg-lineage"
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(g(x), g_ref(x)) and torch.equal(g2(x), g_ref(x))

    # idempotency helper for flows
    found = registry.find_version(
        "reg-lineage", data_version="0123abcd.dir", params_hash=cfg.model_hash()
    )
    assert found is not None and found.version == 1
    assert registry.find_version("reg-lineage", data_version="other", params_hash="x") is None


def test_registry_untouched_when_upstream_failed(store, evaluated, tmp_path):
    from mlflow import MlflowClient

    from p2p import registry

    cfg = make_cfg(**{"eval.model_name": "reg-untouched"})
    ckpt, m = evaluated("a", cfg)
    other = make_checkpoint(tmp_path / "other.pt", cfg, seed=5)
    client = MlflowClient()
    runs_before = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    with pytest.raises(registry.RegistryError, match="computed for another file"):
        registry.log_and_register(other, cfg, m, lineage={})  # metrics of a different file
    with pytest.raises(registry.RegistryError, match="'psnr' missing"):
        registry.log_and_register(
            ckpt, cfg, {k: v for k, v in m.items() if k != "psnr"}, lineage={}
        )
    with pytest.raises(registry.RegistryError, match="finite"):
        registry.log_and_register(ckpt, cfg, {**m, "l1": math.nan}, lineage={})
    assert client.search_registered_models(filter_string="name = 'reg-untouched'") == []
    runs_after = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    assert runs_after == runs_before


def test_gate_both_ways_and_rollback(store, evaluated):
    from p2p import registry

    cfg = make_cfg(**{"eval.model_name": "reg-gate", "eval.metric": "psnr"})
    name = "reg-gate"
    bad, m_bad = evaluated("bad", cfg, saturate=2.0)  # near-white outputs
    good, m_good = evaluated("good", cfg, seed=0)  # near-gray outputs: closer to the targets
    worse, m_worse = evaluated("worse", cfg, saturate=4.0)
    assert m_good["psnr"] > m_bad["psnr"] > m_worse["psnr"]  # real scores, same test set
    assert m_good["testset"] == m_bad["testset"] == m_worse["testset"]

    v1 = registry.log_and_register(bad, cfg, m_bad, lineage={})
    d1 = registry.promotion_gate(name, v1.version)
    assert d1.promoted and d1.champion_version is None and "no champion" in d1.reason
    assert registry.get_version(name, "champion").version == 1

    v2 = registry.log_and_register(good, cfg, m_good, lineage={})
    d2 = registry.promotion_gate(name, v2.version)
    assert d2.promoted and d2.champion_version == 1 and not d2.rescored_champion
    assert d2.challenger_score == m_good["psnr"] and d2.champion_score == m_bad["psnr"]
    champ = registry.get_version(name, "champion")
    assert champ.version == 2 and "challenger" not in champ.aliases
    assert champ.tags["gate.decision"] == "promoted"

    v3 = registry.log_and_register(worse, cfg, m_worse, lineage={})
    d3 = registry.promotion_gate(name, v3.version)
    assert not d3.promoted
    assert registry.get_version(name, "champion").version == 2  # unchanged
    assert registry.get_version(name, "challenger").version == 3
    t = registry.get_version(name, 3).tags
    assert t["gate.decision"] == "rejected"
    assert float(t["gate.challenger_score"]) == m_worse["psnr"]
    assert float(t["gate.champion_score"]) == m_good["psnr"]
    assert t["gate.champion_version"] == "2" and t["gate.metric"] == "psnr"

    # l1 is lower-is-better: the good model also wins on it, and a margin can block it
    d_l1 = registry.promotion_gate(name, v3.version, metric="l1")
    assert not d_l1.promoted and not d_l1.higher_is_better
    gap = m_good["psnr"] - m_bad["psnr"]
    registry.promote(name, 1)
    d_margin = registry.promotion_gate(name, 2, margin=gap * 2)
    assert not d_margin.promoted and registry.get_version(name, "champion").version == 1
    d_ok = registry.promotion_gate(name, 2, margin=gap / 2)
    assert d_ok.promoted and registry.get_version(name, "champion").version == 2

    # rollback walks the champion history back: 2 -> 1 (history: 1, 2, 1, 2)
    back = registry.rollback(name)
    assert back.version == 1 and registry.get_version(name, "champion").version == 1
    assert registry.rollback(name).version == 2
    info = registry.show(name)
    assert info["aliases"] == {"champion": 2, "challenger": 3}
    assert [r["to"] for r in info["rollbacks"]] == [1, 2]
    assert {v["version"]: v["aliases"] for v in info["versions"]} == {
        1: [],
        2: ["champion"],
        3: ["challenger"],
    }
    assert info["versions"][2]["gate"]["decision"] == "rejected"
    registry.rollback(name)  # -> 1
    with pytest.raises(registry.RegistryError, match="no previous champion"):
        registry.rollback(name)


def test_gate_rescores_champion_on_the_challengers_test_set(
    store, evaluated, other_shards, tmp_path
):
    """A champion evaluated on an older test set is scored again on the challenger's."""
    from p2p import registry

    name = "reg-rescore"
    cfg = make_cfg(**{"eval.model_name": name, "eval.metric": "ssim"})
    old, m_old = evaluated("old", cfg, seed=2)  # scored on the module's shards
    registry.log_and_register(old, cfg, m_old, lineage={})
    registry.promotion_gate(name, 1)

    new = make_checkpoint(tmp_path / "new.pt", cfg, seed=4)
    m_new = evaluate_checkpoint(new, other_shards[0], cfg, tmp_path / "eval-new")
    assert m_new["testset"] != m_old["testset"] and m_new["data_version"] != m_old["data_version"]
    registry.log_and_register(new, cfg, m_new, lineage={})
    d = registry.promotion_gate(name, 2)
    assert d.rescored_champion
    fair = evaluate_checkpoint(old, other_shards[0], cfg, tmp_path / "eval-old-on-new")["ssim"]
    assert d.champion_score == pytest.approx(fair, abs=1e-9)
    assert d.champion_score != pytest.approx(m_old["ssim"], abs=1e-9)
    assert d.promoted == (m_new["ssim"] > fair)
    assert registry.get_version(name, 2).tags["gate.champion_rescored"] == "true"


def test_s3_shards_and_artifacts(store, shards, s3_bucket, tmp_path):
    """Shards on S3 evaluated from S3, model artifacts on S3; the gate re-scores the champion
    from the S3 shards."""
    from pathlib import Path

    from mlflow import MlflowClient

    from p2p import registry
    from p2p.data.shards import write_shards

    name = "reg-s3"
    cfg = make_cfg(**{"eval.model_name": name, "train.experiment": "p2p-s3"})
    MlflowClient().create_experiment("p2p-s3", artifact_location=f"s3://{s3_bucket}/mlflow")
    s3_shards = f"s3://{s3_bucket}/shards/demo"
    write_shards(Path(shards[0]).parent / "raw", s3_shards, cfg.data)

    ckpt = make_checkpoint(tmp_path / "a.pt", cfg, seed=6)
    m = evaluate_checkpoint(ckpt, s3_shards, cfg, tmp_path / "eval-a")
    local = evaluate_checkpoint(ckpt, shards[0], cfg, tmp_path / "eval-a-local")
    assert m["testset"] == local["testset"] and m["psnr"] == local["psnr"]  # same bytes
    v = registry.log_and_register(ckpt, cfg, m, lineage={"data_version": "s3test.dir"})
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert any(k.startswith("mlflow/") and k.endswith("artifacts/generator.pt") for k in keys)
    assert any(k.startswith("mlflow/") and k.endswith("artifacts/generator.onnx") for k in keys)
    g, _ = registry.load_registered_generator(f"models:/{name}/{v.version}")
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(g(x), load_generator(ckpt)(x))

    # champion scored on another test set -> re-scored from the challenger's S3 shards
    registry.promotion_gate(name, v.version)
    client = MlflowClient()
    client.set_model_version_tag(name, str(v.version), "eval.testset", "an-older-test-set")
    ckpt_b = make_checkpoint(tmp_path / "b.pt", cfg, seed=8)
    m_b = evaluate_checkpoint(ckpt_b, s3_shards, cfg, tmp_path / "eval-b")
    v_b = registry.log_and_register(ckpt_b, cfg, m_b, lineage={})
    d = registry.promotion_gate(name, v_b.version)
    assert d.rescored_champion and d.champion_score == pytest.approx(m["psnr"], abs=1e-9)


def test_cli_evaluate_register_gate_show(store, shards, tmp_path, capsys):
    from p2p.cli import main

    name = "reg-cli"
    ckpt = make_checkpoint(tmp_path / "g.pt", make_cfg())
    # what `p2p train` writes beside generator.pt: picked up as Ray lineage
    (tmp_path / "train_metrics.json").write_text(
        json.dumps(
            {
                "loss_g": 1.0,
                "run": {
                    "name": "p2p-demo-abc",
                    "mlflow_run_id": "r123",
                    "checkpoint": "runs/p2p-demo-abc/checkpoint_000002",
                },
            }
        )
    )
    sets = [f"--set={k}={v}" for k, v in OVERRIDES.items()] + [f"--set=eval.model_name={name}"]
    out = tmp_path / "reports"
    assert (
        main(
            ["evaluate", "--checkpoint", str(ckpt), "--shards", shards[0], "--out", str(out), *sets]
        )
        == 0
    )
    assert "3 samples" in capsys.readouterr().out
    assert (
        main(
            [
                "registry",
                "register",
                "--checkpoint",
                str(ckpt),
                "--metrics",
                str(out / "metrics.json"),
                "--lineage",
                "data_version=cli.dir",
                "--gate",
                *sets,
            ]
        )
        == 0
    )
    said = capsys.readouterr().out
    assert f"models:/{name}/1" in said and "PROMOTED" in said
    assert main(["registry", "show", name, "--json", *sets]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["aliases"] == {"champion": 1}
    lin = info["versions"][0]["lineage"]
    assert lin["data_version"] == "cli.dir" and lin["ray_run"] == "p2p-demo-abc"
    assert lin["ray_checkpoint"] == "runs/p2p-demo-abc/checkpoint_000002"
    assert lin["training_run_id"] == "r123"
    assert main(["registry", "show", *sets]) == 0  # NAME from eval.model_name
    assert "v1 [@champion]" in capsys.readouterr().out
    assert main(["registry", "gate", name, "1", *sets]) == 0
    assert "not promoted: already the champion" in capsys.readouterr().out
    assert main(["registry", "promote", name, "1", *sets]) == 0
    assert "champion is now v1" in capsys.readouterr().out
    # user errors: one line, exit 2
    assert main(["registry", "rollback", name, *sets]) == 2
    assert "no previous champion" in capsys.readouterr().err
    other = make_checkpoint(tmp_path / "other.pt", make_cfg(), seed=9)
    assert (
        main(
            [
                "registry",
                "register",
                "--checkpoint",
                str(other),
                "--metrics",
                str(out / "metrics.json"),
                *sets,
            ]
        )
        == 2
    )
    assert "computed for another file" in capsys.readouterr().err


def test_parse_model_uri():
    from p2p.registry import RegistryError, parse_model_uri

    assert parse_model_uri("models:/pix2pix@champion") == ("pix2pix", "champion")
    assert parse_model_uri("models:/pix2pix/3") == ("pix2pix", "3")
    for bad in ("runs:/abc/model", "models:/pix2pix/latest", "models:/@champion"):
        with pytest.raises(RegistryError):
            parse_model_uri(bad)
