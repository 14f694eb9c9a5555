import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from p2p.config import ConfigError, ExperimentConfig, load_config


def test_defaults_are_the_paper_defaults():
    cfg = ExperimentConfig()
    assert cfg.model.generator == "unet" and cfg.model.num_downs == 8
    assert cfg.model.base_channels == 64 and cfg.model.norm == "batch"
    assert cfg.loss.gan_mode == "vanilla" and cfg.loss.lambda_l1 == 100.0
    assert (cfg.optim.lr, cfg.optim.beta1, cfg.optim.beta2) == (2e-4, 0.5, 0.999)
    assert (cfg.data.load_size, cfg.data.crop_size, cfg.train.batch_size) == (286, 256, 1)
    assert cfg.epochs == 200


def test_repo_params_yaml_loads_and_round_trips():
    cfg = load_config("params.yaml")
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    # every key of params.yaml is spelled the same in flat()
    raw = yaml.safe_load(Path("params.yaml").read_text())
    flat_keys = {f"{g}.{k}" for g, sub in raw.items() for k in sub}
    assert flat_keys == set(cfg.flat())


def test_unknown_key_is_an_error_naming_the_key(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  lrate: 0.1\n")
    with pytest.raises(ConfigError, match="train.lrate"):
        load_config(p)
    p.write_text("trian:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="trian"):
        load_config(p)


def test_overrides_parse_types_and_validate():
    cfg = load_config(None, ["optim.lr=1e-4", "train.batch_size=4", "data.flip=false"])
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.train.batch_size == 4 and cfg.data.flip is False
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(None, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="model.norm"):
        load_config(None, ["model.norm=layer"])
    with pytest.raises(ConfigError, match="group.key=value"):
        load_config(None, ["lr=1"])
    with pytest.raises(ConfigError, match="crop_size"):
        load_config(None, ["data.crop_size=300"])
    with pytest.raises(ConfigError, match="divisible"):
        load_config(None, ["train.batch_size=3", "resources.num_workers=2"])


def test_frozen_and_hash_stable():
    a, b = load_config(None), load_config(None)
    assert a.params_hash() == b.params_hash()
    assert a.replace(**{"optim.lr": 1e-3}).params_hash() != a.params_hash()
    with pytest.raises(AttributeError):
        a.optim.lr = 1.0  # type: ignore[misc]


def test_missing_params_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_config_show_and_errors():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "p2p",
            "config",
            "show",
            "--format",
            "flat",
            "--set",
            "optim.lr=0.001",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "optim.lr=0.001" in out.splitlines()
    bad = subprocess.run(
        [sys.executable, "-m", "p2p", "config", "show", "--set", "optim.nope=1"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0
    assert bad.stderr.strip().count("\n") == 0 and "optim.nope" in bad.stderr
