"""The results page (index.html) of `p2p evaluate`: model name and version, the scores with
their units, the trivial baselines and the model's margins over them, both inference modes on
val, the sample grid, and the details that identify the test set."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

SAMPLES_FILE = "samples.png"

UNITS = {"l1": "mean |output - target| on [-1, 1]", "psnr": "dB", "ssim": "0..1"}
UNITS.update({"lpips": "lower is better", "fid": "lower is better"})


def index_html(
    m: dict[str, Any], n_rows: int, *, model_name: str, version: str | None = None
) -> str:
    e = html.escape
    version = version or f"{Path(m['checkpoint']).name} (sha256 {m['checkpoint_sha256'][:12]})"

    def row(name: str, v: float, unit: str) -> str:
        return f"<tr><th>{e(name)}</th><td>{v:.4f}</td><td>{e(unit)}</td></tr>"

    scores = [(k, m[k]) for k in ("l1", "psnr", "ssim", "lpips", "fid") if k in m]
    rows = "".join(row(k, v, UNITS[k]) for k, v in scores)
    labels = m.get("baseline_labels") or {}
    for name, base in (m.get("baselines") or {}).items():
        margin = m.get("margins_psnr", {}).get(name)
        what = e(labels.get(name, name))
        rows += "".join(
            row(f"{k}, baseline: {labels.get(name, name)}", base[k], UNITS[k]) for k in base
        )
        if margin is not None:
            rows += f"<tr><th>psnr margin over {what}</th><td>{margin:+.2f}</td><td>dB</td></tr>"
    rows += "".join(
        f"<tr><th>{e(k)}</th><td colspan=2>unavailable: {e(str(r))}</td></tr>"
        for k, r in m.get("unavailable", {}).items()
    )
    used = " (the mode of the scores above)"
    modes = "".join(
        f"<tr><th>{e(mode)}{used if mode == m['inference_mode'] else ''}</th>"
        + "".join(f"<td>{s[k]:.4f} {e(UNITS[k] if k == 'psnr' else '')}</td>" for k in s)
        + "</tr>"
        for mode, s in (m.get("modes_val") or {}).items()
    )
    modes_table = (
        f"<h2>Inference modes on val</h2><table><tr><th>mode</th><th>l1</th><th>psnr</th>"
        f"<th>ssim</th></tr>{modes}</table>"
        if modes
        else ""
    )
    info = "".join(
        f"<tr><th>{e(k)}</th><td><code>{e(str(m[k]))}</code></td></tr>"
        for k in (
            "split",
            "n_samples",
            "inference_mode",
            "seed",
            "checkpoint",
            "checkpoint_sha256",
            "shards",
            "data_version",
            "testset",
            "created",
        )
        if k in m
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>p2p evaluation: {e(model_name)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
th,td{{text-align:left;padding:2px 12px}} img{{image-rendering:pixelated;max-width:100%}}</style>
</head><body>
<h1>{e(model_name)}: {e(m["split"])} split</h1>
<p>model <code>{e(version)}</code>, {m["n_samples"]} {e(m["split"])} images, inference mode
<b>{e(m["inference_mode"])}</b></p>
<h2>Metrics</h2><table><tr><th>metric</th><th>value</th><th>unit</th></tr>{rows}</table>
{modes_table}
<h2>Samples</h2><p>{n_rows} test images, one per row: input | output | target</p>
<img src="{SAMPLES_FILE}" alt="input | output | target">
<h2>Details</h2><table>{info}</table>
</body></html>
"""
