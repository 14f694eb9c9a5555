"""`p2p demo`: the embedded default data, end to end, through the Prefect flows.

`python -m pipelines.demo` is the same command (`p2p demo` runs it).

Builds the demo dataset from photos shipped by installed packages, versions it with DVC (the
repository's default remote, local), shards it, trains on a local Ray cluster, evaluates,
registers and gates the model, then prints where to look and how the model compares with the
trivial baselines. It is `retrain_flow`: a second run finds the data version unchanged and the
champion trained on it, and skips everything.

Run it from the project directory (a git clone); Prefect starts a temporary local API when
PREFECT_API_URL is not set. `p2p demo` runs this module in a child process, so the library
(p2p) never imports the flows (pipelines import p2p, not the reverse).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from p2p.cli import load_cfg, one_line
from p2p.errors import P2PError
from pipelines.cli import flow_parser


def parser() -> argparse.ArgumentParser:
    p = flow_parser("pipelines.demo", __doc__, address=True)
    p.add_argument(
        "--refresh",
        action="store_true",
        help="rebuild and re-version the data before comparing with the champion's",
    )
    return p


def run_demo(args: argparse.Namespace) -> int:
    cfg = load_cfg(args)  # validate params before starting anything
    if not os.path.isdir(".dvc"):
        raise P2PError(
            f"{os.getcwd()}: not the p2p project directory (no .dvc/); run `p2p demo` from the "
            "root of a p2p clone"
        )
    # Before prefect is imported: a cold first start of the temporary API can exceed the
    # default 20 s on a busy 2-core machine; no telemetry (there may be no network).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    for noisy in ("httpx", "httpcore"):  # one INFO line per Prefect API request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    t0 = time.perf_counter()
    w = cfg.resources.num_workers
    print(
        f"p2p demo: {cfg.data.source} data -> {cfg.data.raw_dir} -> {cfg.data.shards}; "
        f"{cfg.epochs} epochs on {'Ray at ' + args.address if args.address else 'a local Ray'} "
        f"with {w} worker{'s' * (w != 1)}; model {cfg.eval.model_name!r}",
        flush=True,
    )
    print(
        "p2p demo: retrain_flow = data_flow (prepare, validate, version, shard) + "
        "training_flow (train, evaluate, register, gate)",
        flush=True,
    )
    if not os.environ.get("PREFECT_API_URL"):
        print("p2p demo: starting Prefect's temporary local API (~15 s)...", flush=True)
    from pipelines.retrain_flow import retrain_flow  # after the environment above is set

    result = retrain_flow(
        params=args.params,
        overrides=list(args.overrides),
        address=args.address,
        refresh=args.refresh,
    )
    _summary(cfg, result, time.perf_counter() - t0)
    return 0


def _summary(cfg: Any, result: dict[str, Any], seconds: float) -> None:
    from p2p.registry import RegistryError, get_version
    from p2p.settings import Settings

    name = cfg.eval.model_name
    try:
        champ = get_version(name, "champion")
    except RegistryError:  # e.g. someone removed the alias by hand
        champ = None
    scores = champ.scores() if champ else {}
    print()
    print(f"p2p demo: done in {seconds / 60:.1f} min")
    if result.get("skipped"):
        print(
            f"  data         : unchanged at version {result['data_version']}, the champion's: "
            "nothing retrained"
        )
        print(
            "                 (new data retrains: --refresh re-imports data.source; new params: "
            "python -m pipelines.training_flow)"
        )
    else:
        data, training = result["data"], result["training"]
        dv, totals = data["data_version"], data["totals"]
        print(
            f"  data version : {dv['md5']} ({dv['path']}, DVC remote {dv['remote']!r}; "
            f"{dv['dvc_file']})"
        )
        print(
            f"  shards       : {data['shards']} ({totals['samples']} samples in "
            f"{totals['shards']} shards)"
        )
        if dv["dvc_file"] == "dvc.lock":
            print(
                "  dvc.lock     : records the stages this run ran (`dvc repro`: nothing to do); "
                "commit it with the metrics: git add -A && git commit"
            )
        verdict = "promoted" if training["promoted"] else "not promoted"
        reuse = " (already registered: training skipped)" if training["skipped"] else ""
        print(f"  registered   : models:/{name}/{training['version']}{reuse}")
        print(f"  gate         : {verdict}: {training['gate'].get('reason')}")
    print(f"  champion     : models:/{name}@champion = version {champ.version if champ else '-'}")
    nan = float("nan")
    print(
        f"  test metrics : L1 {scores.get('l1', nan):.4f}  PSNR {scores.get('psnr', nan):.2f} dB  "
        f"SSIM {scores.get('ssim', nan):.4f}"
    )
    # the trivial baselines, scored by `p2p evaluate` on the same test images
    tags = champ.tags if champ else {}
    margins = []
    for base in ("input", "untrained", "classical"):
        if f"baseline.{base}.psnr" not in tags:
            continue
        what, psnr = tags[f"baseline.{base}"], float(tags[f"baseline.{base}.psnr"])
        margin = float(tags[f"margin.{base}.psnr"])
        margins.append(margin)
        print(f"  baseline     : {what}: PSNR {psnr:.2f} dB  (model {margin:+.2f} dB)")
    if margins:
        beats = all(m > 0 for m in margins)
        verdict = "beats every baseline" if beats else "does NOT beat every baseline"
        print(f"  verdict      : the champion {verdict} on held-out test photos")
    print("  sample grid  : reports/samples.png   (input | output | target)")
    print("  results page : reports/index.html")
    uri = Settings.from_env().mlflow_tracking_uri
    if not os.environ.get("VIRTUAL_ENV"):  # `make demo` runs .venv/bin/python directly
        print("  next         : source .venv/bin/activate   (puts p2p, mlflow and dvc on PATH)")
    print(f"  MLflow UI    : mlflow ui --backend-store-uri {uri}   (http://127.0.0.1:5000)")
    print(f"  serve        : mlflow models serve -m models:/{name}@champion --env-manager local")
    print(f"  predict      : p2p predict --model models:/{name}@champion --input IMG --output OUT")


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        return run_demo(args)
    except P2PError as e:
        print(f"p2p demo: error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
