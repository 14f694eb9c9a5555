"""The command line of the flow modules (pipelines/cli.py): `python -m pipelines.<flow>`.

`--help` and bad arguments run nothing (no flow run, no Prefect API, no files); `--set` is the
`p2p` CLI's and reaches the config the flow's tasks use. The parse tests are cheap (they import
Prefect); one real flow run: training_flow stopped by a missing shard index named by `--set`.
"""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
MODULES = ["training_flow", "data_flow", "retrain_flow", "deploy"]
FLOWS = ["training_flow", "data_flow", "retrain_flow"]  # each module's flow has its name


def _run_module(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m pipelines.<module> ...` in `cwd` (an empty temp dir), with its own PREFECT_HOME
    and no Prefect API configured: a flow run would start a temporary Prefect server there."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "PREFECT_HOME": str(cwd / "prefect-home")}
    for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", f"pipelines.{module}", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _made(cwd: Path) -> list[str]:
    """What a command left in `cwd`: project files (mlflow.db, runs/, models/...) or a Prefect
    server database in its PREFECT_HOME (prefect's import alone may create the folder)."""
    made = sorted(p.name for p in cwd.iterdir() if p.name != "prefect-home")
    home = cwd / "prefect-home"
    return made + sorted(p.name for p in home.glob("prefect.db*")) if home.exists() else made


@pytest.mark.parametrize("module", MODULES)
def test_help_exits_0_and_runs_nothing(module, tmp_path):
    r = _run_module(module, "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: python -m pipelines.{module}")
    assert "--params" in r.stdout and "--set KEY=VALUE" in r.stdout
    assert ("--address" in r.stdout) == (module != "data_flow")
    assert "temporary server" not in r.stderr and "Flow run" not in r.stderr
    assert _made(tmp_path) == []


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["extra"], "unrecognized arguments: extra"),
        (["--set", "optim.lr=[1"], "override optim.lr: '[1' is not a YAML value"),
        (["--set", "train.lr=1e-4"], "did you mean optim.lr?"),
        (["--set", "train.epochs=-1"], "train.epochs: -1 is out of range"),
        (["--params", "missing.yaml"], "missing.yaml: params file not found"),
    ],
)
def test_bad_arguments_exit_2_before_anything_runs(
    module, args, says, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(f"pipelines.{module}").main
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2
    [line] = [line for line in err.splitlines() if "error:" in line]  # one line, no traceback
    assert line.startswith(f"python -m pipelines.{module}: error: ") and says in line
    assert "Traceback" not in err
    assert _made(tmp_path) == []


@pytest.mark.parametrize("module", FLOWS)
def test_set_reaches_the_config_the_flow_tasks_use(module, tmp_path):
    from pipelines import cli, tasks

    mod = importlib.import_module(f"pipelines.{module}")
    params = tmp_path / "p.yaml"
    params.write_text("optim:\n  lr: 0.0005\ntrain:\n  epochs: 3\n")
    argv = ["--params", str(params), "--set", "optim.lr=0.001", "--set", "data.flip=false"]
    kwargs = cli.parse(mod.parser(), argv)

    # every option is a parameter of the flow: the parsed arguments are its keyword arguments
    flow_fn = getattr(mod, module).fn
    assert set(kwargs) <= set(inspect.signature(flow_fn).parameters)
    # ... and the flow resolves them with tasks.load, which every task's config comes from
    cfg = tasks.load(kwargs["params"], kwargs["overrides"])
    assert cfg["optim"]["lr"] == 0.001 and cfg["data"]["flip"] is False  # --set wins
    assert cfg["train"]["epochs"] == 3  # the rest of the file is kept


def test_deploy_passes_set_and_address_to_the_deployment(tmp_path, monkeypatch):
    """deploy has the flows' CLI: its --set/--address become the scheduled runs' parameters."""
    from pipelines import cli
    from pipelines.deploy import parser

    monkeypatch.chdir(tmp_path)
    kwargs = cli.parse(parser(), ["--set", "optim.lr=0.001", "--address", "auto", "--refresh"])
    assert kwargs["overrides"] == ["optim.lr=0.001"] and kwargs["address"] == "auto"
    assert kwargs["refresh"] is True


@pytest.mark.slow
def test_training_flow_run_uses_the_set_overrides(tmp_path):
    """A real `python -m pipelines.training_flow` run (temporary Prefect server): the shard dir
    it looks for is the one `--set` names, and the missing index is one line, exit 2."""
    shards = tmp_path / "elsewhere" / "shards"
    r = _run_module(
        "training_flow",
        "--set",
        f"data.shards={shards}",
        "--out-dir",
        str(tmp_path / "models"),
        "--reports-dir",
        str(tmp_path / "reports"),
        cwd=tmp_path,
    )
    assert r.returncode == 2, r.stderr[-3000:]
    ours = [
        line
        for line in r.stderr.splitlines()
        if line.startswith("python -m pipelines.training_flow: error:")
    ]
    assert len(ours) == 1 and f"{shards}: no shard index" in ours[0]
    assert not (tmp_path / "models").exists()  # stopped before training and registration
