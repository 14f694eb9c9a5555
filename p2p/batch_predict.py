"""Batch translation on Ray Data: `p2p predict --ray` / `--address ...` over a folder or an
s3:// prefix, for jobs of any size (millions of images) on CPU or GPU workers.

    p2p predict --address auto --model models:/pix2pix@champion \\
        --input s3://bucket/in/ --output s3://bucket/out/

How it runs:
- The driver lists the inputs (recursively; image extensions only; hidden files skipped) and the
  outputs that already exist: those inputs are skipped, so re-running a job resumes it. Each
  input `IN/sub/x.jpg` becomes `OUT/sub/x.png`.
- `ray.data.from_items(...).map_batches(_Translator, ...)` runs a fixed pool of actors
  (`--actors`, default `resources.num_workers`), each with `resources.cpus_per_worker` CPUs and,
  with `resources.use_gpu` (or `--device cuda`), `resources.gpus_per_worker` GPUs. Actors are
  spread over the nodes. Each actor loads the generator once, with the same loader as
  single-process `p2p predict` (`p2p.inference.load_model`): a registered model (the alias is
  resolved to a version once, on the driver, so a promotion during the job cannot mix two
  models), or a checkpoint file read on the driver and shipped through the object store (the
  nodes need not see the driver's files).
- Each output is written atomically: p2p.data.storage (local files: temp name, then
  rename; S3 objects: one PUT; an output appears whole or not at all).
- A bad input (unreadable, corrupt, wrong channels) fails that file only: it is named, with the
  reason, in the summary. `OUT/_summary.json` holds the counts (total, written, skipped, failed
  with file + reason), the model URI and version, the mode, and the nodes that did the work.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2p.data import storage
from p2p.data.images import is_image_file
from p2p.errors import DataError, P2PError

SUMMARY = "_summary.json"
ACTOR_START_TIMEOUT_S = 600  # a cluster must fit all --actors within this


@dataclass
class Plan:
    """What a job has to do: (source, destination) pairs still to write, and the rest."""

    todo: list[tuple[str, str]] = field(default_factory=list)
    total: int = 0
    skipped: int = 0  # the output already exists
    failed: list[dict[str, str]] = field(default_factory=list)  # {"file", "reason"}


def _relative(url: str, root: str) -> str:
    """`url` below the folder / prefix `root`, as a posix path."""
    if not storage.is_local(root):
        return url[len(root.rstrip("/")) + 1 :]
    return Path(url).relative_to(root).as_posix()


def plan(inp: str, out: str) -> Plan:
    """List the inputs under `inp` and the existing outputs under `out` (one listing each)."""
    local_in = storage.is_local(inp)
    if local_in and not Path(inp).is_dir():
        what = "is a file: without --ray/--address" if Path(inp).is_file() else "not found:"
        raise DataError(f"{inp}: input {what} batch prediction needs a folder or s3:// prefix")
    if _inside(out, inp):
        raise P2PError(f"{out}: the output must not be inside the input {inp}")
    p = Plan()
    existing = set(storage.list_urls(out))
    first: dict[str, str] = {}  # destination -> the input that claimed it
    for src in storage.list_urls(inp):
        rel = _relative(src, inp)
        if not is_image_file(rel) or any(part.startswith(".") for part in rel.split("/")):
            continue
        p.total += 1
        dst = storage.join_url(out, str(Path(rel).with_suffix(".png").as_posix()))
        if dst in first:
            p.failed.append({"file": src, "reason": f"same output name as {first[dst]}"})
            continue
        first[dst] = src
        if dst in existing:
            p.skipped += 1
        else:
            p.todo.append((src, dst))
    if not p.total:
        raise DataError(f"{inp}: no image files ({', '.join(sorted(_exts()))}) to translate")
    return p


def _exts() -> set[str]:
    from p2p.data.images import IMAGE_EXTENSIONS

    return set(IMAGE_EXTENSIONS)


def _inside(out: str, inp: str) -> bool:
    if storage.scheme_of(out) != storage.scheme_of(inp):
        return False
    if not storage.is_local(out):
        o, i = out.rstrip("/") + "/", inp.rstrip("/") + "/"
        return o.startswith(i) or i.startswith(o)
    o, i = Path(out).resolve(), Path(inp).resolve()
    return o == i or o.is_relative_to(i) or i.is_relative_to(o)


class _Translator:
    """One Ray Data actor: loads the generator once, then translates batches of files."""

    def __init__(self, model_args: dict[str, Any], checkpoint: Any, device: str) -> None:
        import ray

        from p2p.inference import DEFAULT_SEED, geometry, load_model, mode_of
        from p2p.raycluster import node

        args = argparse.Namespace(**model_args)
        with tempfile.TemporaryDirectory(prefix="p2p-ckpt-") as tmp:
            if checkpoint is not None:  # the driver's checkpoint bytes, via the object store
                path = Path(tmp, Path(args.checkpoint).name)
                path.write_bytes(
                    ray.get(checkpoint) if isinstance(checkpoint, ray.ObjectRef) else checkpoint
                )
                args.checkpoint = str(path)
            self.g, self.cfg = load_model(args.checkpoint, args.model, device)
        self.in_nc = geometry(self.g, self.cfg)[0]
        # the same mode and seed as single-process `p2p predict`: the model's recorded mode
        self.mode = args.mode or mode_of(self.cfg)
        self.seed = DEFAULT_SEED if args.seed is None else args.seed
        self.batch_size = args.batch_size
        self.where = node()
        self.actor = uuid.uuid4().hex[:8]
        self.batches = 0

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        from p2p.data.images import open_image

        srcs, dsts = [str(s) for s in batch["src"]], [str(d) for d in batch["dst"]]
        reasons: list[str] = [""] * len(srcs)
        images, idx = [], []
        for i, src in enumerate(srcs):
            try:
                images.append(open_image(_read(src), name=src, channels=self.in_nc))
                idx.append(i)
            except (DataError, OSError) as e:
                reasons[i] = _reason(e, src)
        for i, out in zip(idx, self._translate(images, [srcs[i] for i in idx]), strict=True):
            if isinstance(out, BaseException):
                reasons[i] = _reason(out, srcs[i])
                continue
            try:
                _write(out, dsts[i])
            except Exception as e:  # noqa: BLE001 - one failed write must not stop the batch
                reasons[i] = f"cannot write {dsts[i]}: {_reason(e, dsts[i])}"
        self.batches += 1
        n = len(srcs)
        return {
            "src": srcs,
            "reason": reasons,
            "node_id": [self.where["node_id"]] * n,
            "ip": [self.where["ip"]] * n,
            "batch": [f"{self.actor}-{self.batches}"] * n,
        }

    def _translate(self, images: list, names: list[str]) -> list:
        """Outputs in order; if the batch fails, each image alone (so only the bad one fails)."""
        from p2p.inference import translate

        kw = {"mode": self.mode, "seed": self.seed, "batch_size": self.batch_size}
        try:
            return translate(self.g, images, self.cfg, names=names, **kw)
        except Exception:  # noqa: BLE001 - retried one by one below to name the culprit
            if len(images) == 1:
                raise
        outs: list = []
        for img, name in zip(images, names, strict=True):
            try:
                outs += translate(self.g, [img], self.cfg, names=[name], **kw)
            except Exception as e:  # noqa: BLE001
                outs.append(e)
        return outs


def _read(src: str) -> bytes:
    return storage.read_bytes(src)


def _write(img: Any, dst: str) -> None:
    buf = io.BytesIO()
    img.save(buf, format="PNG")  # as single-process predict writes a .png
    storage.write_bytes(dst, buf.getvalue())  # atomic on every backend


def _reason(e: BaseException, name: str) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__).removeprefix(f"{name}: ")


def run(args: argparse.Namespace) -> int:
    """`p2p predict --ray | --address`: the batch job; 0 if every input is written or skipped,
    1 if some failed (listed in the summary and here)."""
    from p2p.config import load_config

    t0 = time.perf_counter()
    cfg = load_config(args.params, args.overrides)
    res = cfg.resources
    if args.batch_size < 1:
        raise P2PError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.actors is not None and args.actors < 1:
        raise P2PError(f"--actors must be >= 1, got {args.actors}")
    actors = args.actors or max(1, res.num_workers)
    device = args.device or ("cuda" if res.use_gpu else "cpu")
    todo = plan(args.input, args.output)
    model_args = {k: v for k, v in vars(args).items() if k != "func"}
    model, checkpoint = _model(model_args)
    summary: dict[str, Any] = {
        "mode": "ray",
        "address": args.address or "local",
        "model": model,
        "input": args.input,
        "output": args.output,
        "device": device,
        "actors": actors,
        "batch_size": args.batch_size,
    }
    written, failed = 0, list(todo.failed)
    nodes: dict[str, dict[str, Any]] = {}  # node id -> its ip, batch ids, image count
    if todo.todo:  # a rerun with nothing left starts no Ray at all
        # Rows are counted as they stream in: the driver holds no per-image list.
        for r in _run_ray(todo, args, model_args, checkpoint, device, actors, res):
            if r["reason"]:
                failed.append({"file": str(r["src"]), "reason": str(r["reason"])})
            else:
                written += 1
            n = nodes.setdefault(
                str(r["node_id"]), {"node_id": str(r["node_id"]), "ip": str(r["ip"])}
            )
            n.setdefault("batches", set()).add(str(r["batch"]))
            n["images"] = n.get("images", 0) + 1
    failed.sort(key=lambda f: f["file"])
    summary.update(
        {
            "counts": {
                "total": todo.total,
                "written": written,
                "skipped": todo.skipped,
                "failed": len(failed),
            },
            "failed": failed,
            "nodes": [{**n, "batches": len(n["batches"])} for _, n in sorted(nodes.items())],
            "seconds": round(time.perf_counter() - t0, 3),
        }
    )
    where = storage.join_url(args.output, SUMMARY)
    text = json.dumps(summary, indent=2) + "\n"
    storage.write_bytes(where, text.encode())
    c = summary["counts"]
    for f in failed[:20]:
        print(f"failed {f['file']}: {f['reason']}", file=sys.stderr)
    if len(failed) > 20:
        print(f"... and {len(failed) - 20} more (see {where})", file=sys.stderr)
    print(
        f"p2p predict: {c['total']} images: {c['written']} written, {c['skipped']} skipped "
        f"(already there), {c['failed']} failed; {len(nodes)} node(s), "
        f"{summary['seconds']:.1f} s; summary {where}"
    )
    return 1 if failed else 0


def _model(model_args: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
    """The model's {"uri", "version"} for the summary, and the checkpoint bytes to ship (None
    for a registered model; its alias is pinned to a version in `model_args`)."""
    if model_args.get("checkpoint"):
        path = Path(model_args["checkpoint"])
        try:
            blob = path.read_bytes()
        except OSError as e:
            raise P2PError(f"{path}: cannot read checkpoint ({e.strerror or e})") from None
        digest = hashlib.sha256(blob).hexdigest()
        return {"uri": str(path.resolve()), "version": f"sha256:{digest[:16]}"}, blob
    from p2p.registry import get_version, parse_model_uri

    uri = model_args["model"]
    v = get_version(*parse_model_uri(uri))
    model_args["model"] = v.uri  # every actor loads this exact version
    return {"uri": uri, "name": v.name, "version": v.version, "resolved": v.uri}, None


def _run_ray(todo: Plan, args, model_args, checkpoint, device, actors, res) -> Iterator[dict]:
    """One row per input ({"src", "reason" ("" = written), "node_id", "ip", "batch"}), as the
    actors finish them."""
    import ray
    import ray.data

    from p2p.raycluster import ray_session

    gpus = (res.gpus_per_worker or 1.0) if device == "cuda" else 0
    # A local Ray gets this machine's CPUs, or more logical CPUs if the actors ask for more.
    local_cpus = max(os.cpu_count() or 1, math.ceil(actors * res.cpus_per_worker))
    with ray_session(args.address, num_cpus=local_cpus):
        ref = ray.put(checkpoint) if checkpoint is not None else None
        # Start the whole fixed pool before dispatching: every actor (node) gets batches, and a
        # cluster without room for the pool fails with Ray Data's timeout instead of hanging.
        ray.data.DataContext.get_current().wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
        items = [{"src": s, "dst": d} for s, d in todo.todo]
        # Enough blocks to keep every actor busy; Ray Data cuts them into --batch-size batches.
        per_batch = math.ceil(len(items) / args.batch_size)
        blocks = min(len(items), max(actors, per_batch), 10_000)
        ds = ray.data.from_items(items, override_num_blocks=blocks)
        ds = ds.map_batches(
            _Translator,
            batch_size=args.batch_size,
            compute=ray.data.ActorPoolStrategy(size=actors),
            fn_constructor_kwargs={"model_args": model_args, "checkpoint": ref, "device": device},
            num_cpus=res.cpus_per_worker,
            num_gpus=gpus,  # actors are spread over the nodes (Ray Data's default, SPREAD)
        )
        yield from ds.iter_rows()
