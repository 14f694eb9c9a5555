"""Checkpoints: p2p round trip, and reference `latest_net_G.pth` files reproduce the reference
network's eval outputs.

`RefUnet` below is an independent, minimal re-implementation of the reference module structure
(junyanz/pytorch-CycleGAN-and-pix2pix `UnetGenerator` / `UnetSkipConnectionBlock`, written from
the description in the team's notes): the same construction loop, bias rule, in-place
activations and `cat([x, model(x)])` skip. It only produces reference-format files and outputs.
"""

from __future__ import annotations

import functools
import pickle

import pytest
import torch
import torch.nn as nn

from p2p.checkpoints import (
    FORMAT,
    SCHEMA_VERSION,
    infer_reference_generator,
    load_generator,
    read_checkpoint_info,
    read_generator_config,
    save_generator,
)
from p2p.config import load_config
from p2p.errors import P2PError
from p2p.models import ResnetGenerator, UnetGenerator, build_generator

# ----------------------------------------------------------------------------- reference net


class _Identity(nn.Module):
    def forward(self, x):
        return x


def _ref_norm(name):
    if name == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if name == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    return lambda c: _Identity()


class RefBlock(nn.Module):
    def __init__(
        self,
        outer_nc,
        inner_nc,
        input_nc=None,
        submodule=None,
        outermost=False,
        innermost=False,
        norm_layer=None,
        use_dropout=False,
    ):
        super().__init__()
        self.outermost = outermost
        use_bias = (
            isinstance(norm_layer, functools.partial) and norm_layer.func is nn.InstanceNorm2d
        )
        if input_nc is None:
            input_nc = outer_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        downrelu = nn.LeakyReLU(0.2, True)
        downnorm = norm_layer(inner_nc)
        uprelu = nn.ReLU(True)
        upnorm = norm_layer(outer_nc)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            model = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, 4, 2, 1, bias=use_bias)
            model = [downrelu, downconv, uprelu, upconv, upnorm]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, 2, 1, bias=use_bias)
            model = [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm]
            if use_dropout:
                model.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*model)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)  # x was activated in place by model[0]


class RefUnet(nn.Module):
    def __init__(self, input_nc, output_nc, num_downs, ngf=64, norm="batch", use_dropout=True):
        super().__init__()
        nl = _ref_norm(norm)
        block = RefBlock(ngf * 8, ngf * 8, innermost=True, norm_layer=nl)
        for _ in range(num_downs - 5):
            block = RefBlock(
                ngf * 8, ngf * 8, submodule=block, norm_layer=nl, use_dropout=use_dropout
            )
        block = RefBlock(ngf * 4, ngf * 8, submodule=block, norm_layer=nl)
        block = RefBlock(ngf * 2, ngf * 4, submodule=block, norm_layer=nl)
        block = RefBlock(ngf, ngf * 2, submodule=block, norm_layer=nl)
        self.model = RefBlock(
            output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True, norm_layer=nl
        )

    def forward(self, x):
        return self.model(x)


def _trained_looking_ref(num_downs, ngf, norm, size, in_nc=3, out_nc=3, seed=0):
    """A RefUnet with random non-trivial weights and real BN statistics, in eval mode."""
    torch.manual_seed(seed)
    ref = RefUnet(in_nc, out_nc, num_downs, ngf, norm)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.weight.normal_(0, 0.05)
                if m.bias is not None:
                    m.bias.normal_(0, 0.05)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.momentum = None  # cumulative average: running stats = stats of the data below
        ref.train()
        ref(torch.rand(1, in_nc, size, size) * 2 - 1)  # batch 1 (as pix2pix trains)
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1
                assert m.num_batches_tracked.item() == 1
    return ref.eval()


def _check_same_outputs(ref, g, size, in_nc=3):
    torch.manual_seed(1)
    x = torch.rand(1, in_nc, size, size) * 2 - 1
    with torch.no_grad():
        want = ref(x.clone())  # clone: the reference's in-place activations must not leak
        got = g(x.clone())
    assert not g.training
    # A degenerate (near-constant) reference output would prove little.
    assert want.std() > 0.05 and want.abs().max() < 0.999
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- reference files


def test_reference_unet256_file_reproduces_reference_outputs(tmp_path):
    ref = _trained_looking_ref(8, 64, "batch", 256)
    path = tmp_path / "latest_net_G.pth"
    assert len(ref.state_dict()) == 82
    torch.save(ref.state_dict(), path)
    g = load_generator(path)
    assert isinstance(g, UnetGenerator) and (g.num_downs, g.base_channels, g.norm) == (
        8,
        64,
        "batch",
    )
    _check_same_outputs(ref, g, 256)
    assert read_generator_config(path) is None  # a reference file stores no config
    assert read_checkpoint_info(path)["num_downs"] == 8


@pytest.mark.parametrize(
    ("num_downs", "ngf", "norm", "size", "prefix"),
    [
        (8, 8, "batch", 256, "module."),  # saved from DataParallel/DDP without unwrapping
        (8, 8, "instance", 256, ""),
        (7, 16, "batch", 128, ""),  # unet_128
        (6, 4, "none", 64, "module._orig_mod."),
    ],
    ids=["module-prefix", "instance", "unet128", "none-compiled"],
)
def test_reference_variants(tmp_path, num_downs, ngf, norm, size, prefix):
    ref = _trained_looking_ref(num_downs, ngf, norm, size)
    path = tmp_path / "latest_net_G.pth"
    torch.save({prefix + k: v for k, v in ref.state_dict().items()}, path)
    spec = infer_reference_generator(
        {k: v for k, v in ref.state_dict().items()}, path
    )  # the bare keys
    assert spec == {
        "generator": "unet",
        "input_nc": 3,
        "output_nc": 3,
        "base_channels": ngf,
        "num_downs": num_downs,
        "norm": norm,
    }
    _check_same_outputs(ref, load_generator(path), size)


def test_reference_gray_to_color_legacy_serialization(tmp_path):
    """Old torch (< 1.6) wrote the non-zip format; 1 -> 3 channels exercises in/out inference."""
    ref = _trained_looking_ref(6, 4, "batch", 64, in_nc=1, out_nc=3)
    path = tmp_path / "old_net_G.pth"
    torch.save(ref.state_dict(), path, _use_new_zipfile_serialization=False)
    g = load_generator(path)
    assert (g.input_nc, g.output_nc) == (1, 3)
    _check_same_outputs(ref, g, 64, in_nc=1)
    assert read_generator_config(path) is None


@pytest.mark.parametrize(
    ("num_downs", "norm"), [(8, "batch"), (8, "instance"), (7, "batch"), (6, "none"), (5, "batch")]
)
def test_key_mapping_is_identity(num_downs, norm):
    """p2p's UnetGenerator has the reference's nesting, so the key mapping is exactly identity."""
    ref = RefUnet(3, 3, num_downs, 4, norm).state_dict()
    ours = UnetGenerator(3, 3, num_downs, 4, norm).state_dict()
    assert [(k, v.shape) for k, v in ours.items()] == [(k, v.shape) for k, v in ref.items()]


def test_reference_resnet_file(tmp_path):
    torch.manual_seed(0)
    src = ResnetGenerator(3, 1, base_channels=4, n_blocks=6, norm="batch", use_dropout=True)
    src.eval()
    path = tmp_path / "latest_net_G.pth"
    torch.save(src.state_dict(), path)
    g = load_generator(path)
    assert isinstance(g, ResnetGenerator)
    assert infer_reference_generator(src.state_dict(), path) == {
        "generator": "resnet",
        "input_nc": 3,
        "output_nc": 1,
        "base_channels": 4,
        "resnet_blocks": 6,
        "use_dropout": True,
        "norm": "batch",
    }
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(g(x), src(x))


class _NotWeights:
    pass


def test_unrecognised_files_raise_p2perror_naming_the_file(tmp_path):
    from p2p.models import PatchDiscriminator

    cases = {}
    cases["missing.pth"] = None
    (tmp_path / "text.pth").write_text("hello, not a checkpoint")
    cases["text.pth"] = "not a readable torch checkpoint"
    torch.save(PatchDiscriminator(6, 4).state_dict(), tmp_path / "net_D.pth")
    cases["net_D.pth"] = "unrecognised generator state_dict"
    sd = RefUnet(3, 3, 6, 4).state_dict()
    torch.save(
        {k: v for k, v in sd.items() if k != "model.model.1.model.2.weight"}, tmp_path / "cut.pth"
    )
    cases["cut.pth"] = "missing"
    bad = dict(sd)
    bad["model.model.1.model.5.weight"] = torch.zeros(3, 3, 4, 4)
    torch.save(bad, tmp_path / "shape.pth")
    cases["shape.pth"] = "wrong shape"
    torch.save({"step": 3}, tmp_path / "dict.pth")
    cases["dict.pth"] = "not a named tensor"
    torch.save({}, tmp_path / "empty.pth")
    cases["empty.pth"] = "not a generator checkpoint"
    with open(tmp_path / "object.pth", "wb") as f:
        pickle.dump(_NotWeights(), f, protocol=2)  # weights_only=True must refuse to unpickle it
    cases["object.pth"] = "not a readable torch checkpoint"
    for name, reason in cases.items():
        path = tmp_path / name
        with pytest.raises(P2PError) as err:
            load_generator(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
        assert (reason or "not found") in str(err.value), str(err.value)


# ----------------------------------------------------------------------------- p2p files


def _tiny_cfg():
    return load_config(
        None,
        {
            "data.crop_size": 32,
            "data.load_size": 36,
            "data.output_nc": 1,
            "model.num_downs": 5,
            "model.base_channels": 4,
            "model.norm": "batch",
        },
    )


def test_p2p_checkpoint_round_trip(tmp_path):
    cfg = _tiny_cfg()
    torch.manual_seed(0)
    g = build_generator(cfg.model, 3, 1)
    g.train()
    g(torch.rand(4, 3, 32, 32) * 2 - 1)  # move BN running stats off their defaults
    g.eval()
    path = tmp_path / "models" / "generator.pt"
    save_generator(path, nn.DataParallel(g), cfg, step=120, epoch=3, extra={"val_psnr": 21.5})

    raw = torch.load(path, weights_only=True)  # plain containers and tensors only
    assert raw["format"] == FORMAT and raw["schema_version"] == SCHEMA_VERSION
    assert raw["p2p_version"] and raw["step"] == 120 and raw["epoch"] == 3
    assert raw["config"] == cfg.to_dict() and raw["extra"] == {"val_psnr": 21.5}
    assert not any(k.startswith("module.") for k in raw["generator"])
    assert read_generator_config(path) == cfg
    assert [p.name for p in path.parent.iterdir()] == ["generator.pt"]  # no temp file left

    loaded = load_generator(path)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), g(x))
    assert load_generator(path, eval_mode=False).training


def test_save_is_atomic_and_validates_extra(tmp_path, monkeypatch):
    cfg = _tiny_cfg()
    g = build_generator(cfg.model, 3, 1)
    path = save_generator(tmp_path / "generator.pt", g, cfg, step=1)
    before = path.read_bytes()
    with pytest.raises(TypeError, match="extra"):
        save_generator(path, g, cfg, extra={"obj": object()})

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_generator(path, g, cfg, step=2)
    assert path.read_bytes() == before  # the old checkpoint survives a failed save
    assert [p.name for p in tmp_path.iterdir()] == ["generator.pt"]


def test_newer_schema_is_refused(tmp_path):
    cfg = _tiny_cfg()
    path = save_generator(tmp_path / "g.pt", build_generator(cfg.model, 3, 1), cfg)
    raw = torch.load(path, weights_only=True)
    raw["schema_version"] = SCHEMA_VERSION + 1
    torch.save(raw, path)
    with pytest.raises(P2PError, match="newer"):
        load_generator(path)
