"""Architectures: exact parameter counts, reference state_dict layout, shapes, dropout placement."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from p2p.config import ModelConfig, load_config
from p2p.models import (
    DISCRIMINATORS,
    GENERATORS,
    PatchDiscriminator,
    PixelDiscriminator,
    ResnetGenerator,
    UnetGenerator,
    build_discriminator,
    build_generator,
    count_parameters,
)
from p2p.models.layers import init_weights, norm_layer

# The reference key lists, dumped from the upstream networks, live in the repo's tests/data.
_KEY_DIR = Path(__file__).resolve().parents[1] / "data"


def _keys_file(name: str) -> list[tuple[str, str, str]]:
    path = _KEY_DIR / name
    return [tuple(line.split("\t")) for line in path.read_text().splitlines() if line.strip()]


def _layout(m: nn.Module) -> list[tuple[str, str, str]]:
    return [(k, str(tuple(v.shape)), str(v.dtype)) for k, v in m.state_dict().items()]


# ----------------------------------------------------------------------------- counts


def test_unet256_batch_matches_reference_count_and_keys():
    g = UnetGenerator(3, 3, num_downs=8, base_channels=64, norm="batch")
    assert count_parameters(g) == 54_413_955
    assert len(g.state_dict()) == 82
    # Same names, order, shapes and dtypes as the reference's latest_net_G.pth.
    assert _layout(g) == _keys_file("reference_unet256_G_keys.txt")


def test_basic_discriminator_matches_reference_count_and_keys():
    d = PatchDiscriminator(6, 64, n_layers=3, norm="batch")
    assert count_parameters(d) == 2_768_705
    assert _layout(d) == _keys_file("reference_basic_D_keys.txt")


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: UnetGenerator(3, 3, 8, 64, "instance"), 54_409_603),
        (lambda: UnetGenerator(3, 3, 7, 64, "batch"), 41_828_995),
        (lambda: ResnetGenerator(3, 3, 64, 9, "instance"), 11_378_179),
        (lambda: PatchDiscriminator(6, 64, 3, "instance"), 2_767_809),
        (lambda: PixelDiscriminator(6, 64, "batch"), 9_024),
    ],
    ids=["unet256-instance", "unet128-batch", "resnet9-instance", "basic-instance", "pixel"],
)
def test_reference_parameter_counts(make, expected):
    assert count_parameters(make()) == expected


def test_unet256_instance_has_32_entries_and_conv_biases():
    g = UnetGenerator(3, 3, 8, 64, "instance")
    sd = g.state_dict()
    assert len(sd) == 32  # 16 conv weights + 16 biases, no norm entries
    assert "model.model.0.bias" in sd  # instance norm: every conv has a bias


def test_bias_rule_batch_norm():
    g = UnetGenerator(3, 3, 8, 64, "batch")
    conv_biases = [
        k
        for k, m in g.named_modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.bias is not None
    ]
    assert conv_biases == ["model.model.3"]  # only the outermost up conv, before Tanh


# ----------------------------------------------------------------------------- shapes


def test_patchgan_outputs_30x30_for_256():
    d = PatchDiscriminator(6, 8, 3, "batch")
    with torch.no_grad():
        assert d(torch.randn(1, 6, 256, 256)).shape == (1, 1, 30, 30)
        assert PixelDiscriminator(6, 8)(torch.randn(2, 6, 16, 16)).shape == (2, 1, 16, 16)


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_unet_shapes_and_tanh_range(norm):
    torch.manual_seed(0)
    g = UnetGenerator(1, 3, num_downs=5, base_channels=8, norm=norm).eval()
    x = torch.randn(2, 1, 64, 96) * 50  # far outside [-1, 1]: Tanh must still bound the output
    with torch.no_grad():
        y = g(x)
    assert y.shape == (2, 3, 64, 96)
    assert y.abs().max() <= 1.0 and y.std() > 0


def test_unet_rejects_size_not_multiple():
    g = UnetGenerator(3, 3, num_downs=4, base_channels=4)
    with pytest.raises(ValueError, match="divisible by 16"):
        g(torch.randn(1, 3, 40, 48))


def test_resnet_shapes():
    g = ResnetGenerator(3, 1, base_channels=8, n_blocks=6, norm="instance").eval()
    with torch.no_grad():
        assert g(torch.randn(1, 3, 32, 48)).shape == (1, 1, 32, 48)


def test_dropout_acts_on_4_8_16_maps_in_unet256():
    """Three Dropout(0.5) layers, on the decoder maps at 16x16, 8x8 and 4x4 (not 2x2, not 1x1)."""
    g = UnetGenerator(3, 3, num_downs=8, base_channels=8, norm="batch")
    seen = []
    for m in g.modules():
        if isinstance(m, nn.Dropout):
            assert m.p == 0.5
            m.register_forward_hook(lambda mod, inp, out: seen.append(tuple(out.shape[1:])))
    with torch.no_grad():
        g(torch.randn(1, 3, 256, 256))
    # 8*ngf channels; innermost first in call order of the hooks (deepest block finishes first).
    assert sorted(seen) == [(64, 4, 4), (64, 8, 8), (64, 16, 16)]
    assert not any(isinstance(m, nn.Dropout) for m in UnetGenerator(use_dropout=False).modules())


# ----------------------------------------------------------------------------- registries / init


def test_registries_build_from_config():
    cfg = load_config(
        None,
        {
            "model.num_downs": 5,
            "model.base_channels": 4,
            "data.crop_size": 32,
            "data.load_size": 32,
            "model.disc_channels": 4,
        },
    )
    assert set(GENERATORS) == {"unet", "resnet"}
    assert set(DISCRIMINATORS) == {"basic", "n_layers", "pixel"}
    g = build_generator(cfg.model, 1, 3)
    assert isinstance(g, UnetGenerator) and g.num_downs == 5 and g.input_nc == 1
    d = build_discriminator(cfg.model, 4)
    assert isinstance(d, PatchDiscriminator)
    d5 = build_discriminator(
        ModelConfig(discriminator="n_layers", disc_layers=5, disc_channels=4), 4
    )
    # 5 stride-2 convs (the first included) + 1 stride-1 conv + the logit conv
    assert sum(isinstance(m, nn.Conv2d) for m in d5.modules()) == 7
    px = build_discriminator(ModelConfig(discriminator="pixel", disc_channels=64), 6)
    assert isinstance(px, PixelDiscriminator) and count_parameters(px) == 9_024
    r = build_generator(ModelConfig(generator="resnet", resnet_blocks=6, base_channels=4), 3, 3)
    assert isinstance(r, ResnetGenerator)
    with pytest.raises(ValueError, match="unknown norm"):
        norm_layer("group")


def test_init_normal_statistics():
    torch.manual_seed(0)
    g = init_weights(UnetGenerator(3, 3, 5, 16, "batch"), "normal", 0.02)
    w = g.model.model[1].model[1].weight  # (32, 16, 4, 4) conv: 8192 samples
    assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.02) < 1e-3
    bn = g.model.model[1].model[2]
    assert abs(bn.weight.mean().item() - 1.0) < 0.01 and bn.bias.abs().max() == 0
    assert g.model.model[3].bias.abs().max() == 0  # conv biases zeroed
    d = PatchDiscriminator(6, 4)
    for kind in ("xavier", "kaiming", "orthogonal"):
        before = d.model[2].weight.clone()
        init_weights(d, kind, 0.02)
        assert not torch.equal(before, d.model[2].weight)
    with pytest.raises(ValueError, match="unknown init_type"):
        init_weights(d, "uniform", 0.02)


@pytest.mark.parametrize(
    ("size", "bias"), [(1, False), (3, True), (8, False), (9, True), (16, False)]
)
def test_upconv_is_conv_transpose_on_every_path(size, bias):
    """UpConv's CPU GEMM + col2im path (inputs <= 64 px) and the library path (larger inputs)
    compute nn.ConvTranspose2d's map: outputs and all gradients agree in float64."""
    from p2p.models.layers import UPCONV_GEMM_MAX_PIXELS, UpConv

    torch.manual_seed(size)
    up = UpConv(12, 5, kernel_size=4, stride=2, padding=1, bias=bias).double()
    ref = nn.ConvTranspose2d(12, 5, kernel_size=4, stride=2, padding=1, bias=bias).double()
    assert list(up.state_dict()) == list(ref.state_dict())  # same keys: checkpoints unchanged
    ref.load_state_dict(up.state_dict())
    x = torch.randn(3, 12, size, size, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = up(x), ref(x_ref)
    assert y.shape == y_ref.shape == (3, 5, 2 * size, 2 * size)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(up.weight.grad, ref.weight.grad, rtol=0, atol=1e-10)
    if bias:
        torch.testing.assert_close(up.bias.grad, ref.bias.grad, rtol=0, atol=1e-10)
    assert (size * size <= UPCONV_GEMM_MAX_PIXELS) == (size <= 8)  # both paths are covered


def test_unet_upconvs_are_upconv_and_trace_to_the_standard_operator():
    from p2p.models.layers import UpConv

    g = build_generator(ModelConfig(num_downs=6, base_channels=4), 3, 3).eval()
    ups = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(ups) == 6 and all(isinstance(m, UpConv) for m in ups)
    traced = torch.jit.trace(g, torch.randn(1, 3, 64, 64))  # what ONNX export records
    graph = str(traced.inlined_graph)
    assert "aten::col2im" not in graph and "aten::_convolution" in graph
