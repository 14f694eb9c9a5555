"""The summary `p2p demo` prints (pipelines.demo._summary), from the champion's tags."""

from __future__ import annotations

from p2p.config import load_config
from p2p.registry.versions import ModelVersionInfo
from pipelines import demo


def _champion(margin_classical: float) -> ModelVersionInfo:
    tags = {"metric.l1": "0.129", "metric.psnr": "21.32", "metric.ssim": "0.5244"}
    for name, what, psnr, margin in (
        ("input", "the input as the output", 12.21, 9.11),
        ("untrained", "the untrained generator", 11.41, 9.91),
        ("classical", "denoise: gaussian blur", 19.95, margin_classical),
    ):
        tags |= {f"baseline.{name}": what, f"baseline.{name}.psnr": repr(psnr)}
        tags[f"margin.{name}.psnr"] = repr(margin)
    return ModelVersionInfo("pix2pix", 1, None, None, ("champion",), tags)


def _printed(monkeypatch, capsys, champion) -> str:
    import p2p.registry

    monkeypatch.setattr(p2p.registry, "get_version", lambda name, ref: champion)
    cfg = load_config(None, {"eval.model_name": "pix2pix"})
    demo._summary(cfg, {"skipped": True, "data_version": "abc"}, 61.0)
    return capsys.readouterr().out


def test_summary_prints_baselines_margins_and_the_model_name(monkeypatch, capsys):
    out = _printed(monkeypatch, capsys, _champion(1.38))
    assert "test metrics : L1 0.1290  PSNR 21.32 dB" in out
    assert "baseline     : denoise: gaussian blur: PSNR 19.95 dB  (model +1.38 dB)" in out
    assert "the champion beats every baseline on held-out test photos" in out
    # the follow-up commands name the model, not a baseline
    assert "mlflow models serve -m models:/pix2pix@champion" in out
    assert "p2p predict --model models:/pix2pix@champion" in out


def test_summary_says_when_a_baseline_is_not_beaten(monkeypatch, capsys):
    out = _printed(monkeypatch, capsys, _champion(-0.2))
    assert "does NOT beat every baseline" in out
