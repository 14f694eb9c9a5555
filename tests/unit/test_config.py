import re
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


# ----------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.lr=.nan", "optim.lr"),
        ("optim.lr=nan", "optim.lr"),  # a string YAML value that float() reads as nan
        ("optim.lr=.inf", "optim.lr"),
        ("optim.lr=0", "optim.lr"),
        ("eval.margin=.nan", "eval.margin"),
        ("eval.margin=-0.5", "eval.margin"),
        ("train.epochs=-1", "train.epochs"),
        ("train.steps_per_epoch=-1", "train.steps_per_epoch"),
        ("resources.max_failures=-1", "resources.max_failures"),
        ("data.loader_workers=-1", "data.loader_workers"),
        ("resources.cpus_per_worker=0", "resources.cpus_per_worker"),
        ("eval.batch_size=0", "eval.batch_size"),
        ("optim.beta1=1", "optim.beta1"),
        ("loss.lambda_l1=-1", "loss.lambda_l1"),
        ("train.seed=-3", "train.seed"),
        ("data.input_nc=2", "data.input_nc"),
        ("model.num_downs=11", "model.num_downs"),
    ],
)
def test_out_of_range_values_are_one_line_naming_key_and_range(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert msg.startswith(f"{key}:") and "allowed:" in msg and "\n" not in msg


def test_documented_special_values_stay_valid():
    cfg = load_config(
        None,
        [
            "train.epochs=0",  # = n_epochs + n_epochs_decay
            "train.steps_per_epoch=0",  # = auto
            "resources.num_workers=0",  # Ray Train local mode
            "resources.max_failures=0",
            "data.loader_workers=0",
            "eval.margin=0",
            "train.val_batches=0",
            "loss.lambda_l1=0",
        ],
    )
    assert cfg.epochs == cfg.optim.n_epochs + cfg.optim.n_epochs_decay
    with pytest.raises(ConfigError, match="train.epochs"):  # ... but something must be trained
        load_config(None, ["optim.n_epochs=0", "optim.n_epochs_decay=0"])


def test_every_numeric_key_declares_its_range():
    import dataclasses
    import typing

    for group in dataclasses.fields(ExperimentConfig):
        cls = group.default_factory  # type: ignore[misc]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] in (int, float):
                assert "range" in f.metadata, f"{group.name}.{f.name} has no declared range"
                assert getattr(cls(), f.name) in f.metadata["range"]  # the default is allowed


def test_ranges_hold_for_direct_construction_too():
    from p2p.config import OptimConfig

    with pytest.raises(ConfigError, match=r"optim.lr: nan"):
        OptimConfig(lr=float("nan"))


# ----------------------------------------------------------------------------- bad files and values


def test_unreadable_params_files_are_one_line_errors(tmp_path):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("data:\n  name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8"):
        load_config(latin1)
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    broken = tmp_path / "broken.yaml"
    broken.write_text("optim:\n  lr: [1\n")
    with pytest.raises(ConfigError) as e:
        load_config(broken)
    assert "broken.yaml: not valid YAML" in str(e.value) and "\n" not in str(e.value)


def test_bad_yaml_in_an_override_names_the_key():
    with pytest.raises(ConfigError, match=r"override optim.lr: '\[1' is not a YAML value"):
        load_config(None, ["optim.lr=[1"])


# ----------------------------------------------------------------------------- did you mean


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("train.lr=1e-4", "did you mean optim.lr?"),  # a key in the wrong group
        ("eval.marjin=1", "did you mean eval.margin?"),  # a typo
        ("model.num_down=7", "did you mean model.num_downs?"),
        ("trian.seed=1", "did you mean train?"),  # a mistyped group
        ("lr=1e-4", "did you mean optim.lr?"),  # a key without its group
    ],
)
def test_unknown_keys_suggest_the_known_key(override, suggestion):
    with pytest.raises(ConfigError, match=re.escape(suggestion)):
        load_config(None, [override])


def test_examples_in_help_and_docs_use_real_keys():
    """`--set KEY=...` / `-S KEY=...` examples in the CLI, flows, dvc.yaml and params.yaml."""
    from p2p.config import known_keys

    root = Path(__file__).resolve().parents[2]
    files = [
        *(root / "p2p").rglob("*.py"),
        *(root / "pipelines").rglob("*.py"),
        root / "dvc.yaml",
        root / "params.yaml",
    ]
    example = re.compile(r"(?:--set|-S)[ =]+([a-z_]+\.[a-z_0-9]+)=")
    bad = [
        f"{f.relative_to(root)}: {m[1]}"
        for f in files
        for m in example.finditer(f.read_text())
        if m[1] not in (*known_keys(), "group.key")  # group.key: the placeholder itself
    ]
    assert not bad
    from p2p.cli import common_parser

    assert "optim.lr=1e-4" in common_parser().format_help()


# ----------------------------------------------------------------------------- CLI errors


def _p2p(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "p2p", *args], capture_output=True, text=True, cwd=cwd
    )


def test_cli_config_errors_are_one_line_exit_2(tmp_path):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"data:\n  name: caf\xe9\n")
    for args, says in [
        (["--params", str(latin1)], "not UTF-8"),
        (["--params", str(tmp_path)], "is a directory"),
        (["--set", "optim.lr=[1"], "optim.lr"),
        (["--set", "train.lr=1e-4"], "did you mean optim.lr?"),
        (["--set", "train.epochs=-1"], "train.epochs: -1 is out of range; allowed: >= 0"),
    ]:
        r = _p2p("config", "show", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.count("\n") == 1 and says in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_cli_bugs_keep_their_traceback(monkeypatch, capsys):
    """A P2PError is the user's: one line, exit 2; anything else is a bug: it propagates."""
    from p2p import cli
    from p2p.cli import config as config_cmd
    from p2p.errors import P2PError

    def fail_with(exc):
        def show(args):
            raise exc

        return show

    monkeypatch.setattr(config_cmd, "show_config", fail_with(P2PError("two\nlines")))
    assert cli.main(["config", "show"]) == 2
    assert capsys.readouterr().err == "p2p config: error: two lines\n"
    monkeypatch.setattr(config_cmd, "show_config", fail_with(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["config", "show"])


def test_data_version_commit_hint_is_shell_quoted():
    import shlex

    from p2p.cli.versioning import commit_hint
    from p2p.data.versioning import DataVersion

    v = DataVersion(
        path="data/raw/my photos",
        md5="abc.dir",
        nfiles=2,
        size=10,
        remote=None,
        dvc_file="data/raw/my photos; rm -rf ~.dvc",
    )
    hint = commit_hint(v, repo="my repo")
    assert shlex.split(hint) == [
        "git",
        "-C",
        "my repo",
        "commit",
        "-m",
        "data: data/raw/my photos abc.dir",
        "--",
        "data/raw/my photos; rm -rf ~.dvc",
    ]


def test_resize_mode_needs_load_size_divisible_by_the_unet():
    # preprocess "resize" trains at load_size (as the reference), so the U-Net must fit it too
    base = ["data.preprocess=resize", "model.num_downs=6", "data.crop_size=64"]
    with pytest.raises(ConfigError, match=r"data.load_size \(72\) must be a multiple of"):
        load_config(None, [*base, "data.load_size=72"])
    assert load_config(None, [*base, "data.load_size=128"]).data.load_size == 128
    load_config(None, [*base[1:], "data.preprocess=resize_and_crop", "data.load_size=72"])


def test_field_rules_live_in_config_rules_and_import_from_config():
    """`p2p.config_rules` holds the field rules; `from p2p.config import ...` still works."""
    import p2p.config as config
    import p2p.config_rules as rules

    for name in ("ConfigError", "Range", "num", "Names", "choice"):
        assert getattr(config, name) is getattr(rules, name)
    with pytest.raises(config.ConfigError, match=r"optim.lr: 0.0 is out of range; allowed: > 0"):
        config.load_config(None, {"optim.lr": 0})
