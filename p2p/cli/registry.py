"""`p2p registry`: the MLflow model registry for humans (and flows that shell out).

    p2p registry register --checkpoint models/generator.pt --metrics reports/metrics.json
    p2p registry gate [pix2pix] 3        # promote v3 only if it beats the champion
    p2p registry show [pix2pix]          # versions, aliases, metrics, lineage, gate decisions
    p2p registry promote [pix2pix] 3     # make v3 the champion by hand
    p2p registry rollback [pix2pix]      # champion back to the previous champion

The tracking store is MLFLOW_TRACKING_URI (default sqlite:///mlflow.db); an unreachable server
fails after P2P_MLFLOW_TIMEOUT_S seconds (default 30). NAME defaults to eval.model_name from
params.yaml. Deployments use models:/NAME@champion. Alias moves are compare-and-set: a gate
whose champion changed while it decided moves nothing and exits 1 (run it again).
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "registry",
        help="register, gate, promote, roll back and show registered models",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    r = rsub.add_parser("register", parents=[common], help="log and register an evaluated model")
    r.add_argument("--checkpoint", default="models/generator.pt", help="generator checkpoint")
    r.add_argument("--metrics", default="reports/metrics.json", help="its metrics.json")
    r.add_argument(
        "--lineage",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="lineage tag, e.g. data_version=..., ray_run=..., ray_checkpoint=... (repeatable)",
    )
    r.add_argument(
        "--train-info",
        default=None,
        help="train_metrics.json of the training run, for the Ray run/checkpoint lineage "
        "(default: the one beside the checkpoint, if there)",
    )
    r.add_argument(
        "--run-id", default=None, help="log into this MLflow run (e.g. the training run)"
    )
    r.add_argument(
        "--train-shards",
        default=None,
        help="shards whose train split the model trained on, recorded so the gate never "
        "judges on training data (default: data.shards stored in the checkpoint)",
    )
    r.add_argument("--gate", action="store_true", help="run the promotion gate afterwards")
    r.set_defaults(func=run_register)

    g = rsub.add_parser("gate", parents=[common], help="promote VERSION if it beats the champion")
    g.add_argument("name", nargs="?", help="default: eval.model_name")
    g.add_argument("version", nargs="?", help="the version number (required)")
    g.add_argument("--metric", default=None, choices=["psnr", "ssim", "l1"], help="eval.metric")
    g.add_argument("--margin", type=float, default=None, help="default: eval.margin")
    g.set_defaults(func=run_gate)

    s = rsub.add_parser("show", parents=[common], help="versions, aliases, metrics, lineage")
    s.add_argument("name", nargs="?", default=None, help="default: eval.model_name")
    s.add_argument("--all", action="store_true", help="list every registered model")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=run_show)

    pr = rsub.add_parser("promote", parents=[common], help="make VERSION the champion")
    pr.add_argument("name", nargs="?", help="default: eval.model_name")
    pr.add_argument("version", nargs="?", help="the version number (required)")
    pr.set_defaults(func=run_promote)

    rb = rsub.add_parser("rollback", parents=[common], help="champion back to the previous one")
    rb.add_argument("name", nargs="?", default=None, help="default: eval.model_name")
    rb.set_defaults(func=run_rollback)


def _name_version(args: argparse.Namespace) -> tuple[str, int]:
    """[NAME] VERSION -> (name, version); NAME defaults to eval.model_name."""
    from p2p.cli import load_cfg
    from p2p.errors import P2PError

    name, version = (None, args.name) if args.version is None else (args.name, args.version)
    if version is None or not str(version).isdigit():
        raise P2PError(f"{args.action}: expected [NAME] VERSION (a number), got {version!r}")
    return name or load_cfg(args).eval.model_name, int(version)


def run_register(args: argparse.Namespace) -> int:
    from pathlib import Path

    from p2p.cli import load_cfg
    from p2p.errors import P2PError
    from p2p.evaluation.evaluate import read_metrics
    from p2p.registry import lineage_from_training, log_and_register, promotion_gate

    cfg = load_cfg(args)
    train_info = args.train_info or Path(args.checkpoint).with_name("train_metrics.json")
    lineage = {}
    if args.train_info or Path(train_info).is_file():
        lineage.update(lineage_from_training(train_info))
    for item in args.lineage:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise P2PError(f"--lineage {item!r}: expected KEY=VALUE")
        lineage[key.strip()] = value
    metrics = read_metrics(args.metrics)
    v = log_and_register(
        args.checkpoint,
        cfg,
        metrics,
        lineage=lineage,
        run_id=args.run_id,
        train_shards=args.train_shards,
    )
    print(f"registered {v.uri} (aliases: {', '.join(v.aliases) or '-'}), run {v.run_id}")
    if args.gate:
        return _print_decision(promotion_gate(v.name, v.version, cfg=cfg))
    return 0


def run_gate(args: argparse.Namespace) -> int:
    from p2p.cli import load_cfg
    from p2p.registry import promotion_gate

    cfg = load_cfg(args)  # the configured gate: eval.metric and eval.margin
    name, version = _name_version(args)
    d = promotion_gate(
        name,
        version,
        metric=args.metric or cfg.eval.metric,
        margin=cfg.eval.margin if args.margin is None else args.margin,
    )
    return _print_decision(d)


def _print_decision(d) -> int:
    """Print the decision; exit status 1 if it was aborted (the champion changed)."""
    verdict = {
        "promoted": "PROMOTED to champion",
        "refused": "not promoted (REFUSED)",
        "aborted": "not promoted (ABORTED)",
    }.get(d.outcome, "not promoted")
    print(f"{d.name} v{d.version}: {verdict}: {d.reason}")
    return 1 if d.outcome == "aborted" else 0


def run_promote(args: argparse.Namespace) -> int:
    from p2p.registry import promote

    name, version = _name_version(args)
    v = promote(name, version, reason="manual (p2p registry promote)")
    print(f"{v.name}: champion is now v{v.version}")
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    from p2p.cli import load_cfg
    from p2p.registry import rollback

    v = rollback(args.name or load_cfg(args).eval.model_name)
    print(f"{v.name}: rolled back, champion is now v{v.version}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from p2p.cli import load_cfg
    from p2p.registry import show

    name = None if args.all else (args.name or load_cfg(args).eval.model_name)
    info = show(name)
    if args.json:
        print(json.dumps(info, indent=2))
    elif name is None:
        for m in info["models"]:
            aliases = ", ".join(f"@{a}=v{v}" for a, v in sorted(m["aliases"].items()))
            print(f"{m['name']}  {aliases}")
    else:
        _print_model(info)
    return 0


def _print_model(info: dict) -> None:
    aliases = ", ".join(f"@{a} = v{v}" for a, v in sorted(info["aliases"].items())) or "none"
    print(f"model {info['name']}   aliases: {aliases}")
    for v in info["versions"]:
        tag = f" [{', '.join('@' + a for a in v['aliases'])}]" if v["aliases"] else ""
        m = v["metrics"]
        scores = "  ".join(f"{k} {_num(m[k])}" for k in ("l1", "psnr", "ssim") if k in m)
        print(f"  v{v['version']}{tag}  {scores}")
        lin = v["lineage"]
        print(
            f"      data {lin.get('data_version') or '-'}  git {lin.get('git_commit', '-')[:12]}"
            f"  params {lin.get('params_hash') or '-'}  ray {lin.get('ray_checkpoint') or '-'}"
        )
        if v["gate"]:
            print(f"      gate: {v['gate'].get('decision')}: {v['gate'].get('reason')}")
    if info["rollbacks"]:
        last = info["rollbacks"][-1]
        print(f"  last rollback: v{last['from']} -> v{last['to']} at {last['at']}")


def _num(s: str) -> str:
    try:
        return f"{float(s):.4f}"
    except ValueError:
        return s
