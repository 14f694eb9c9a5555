"""Which package may import which, checked statically (ast) over p2p/:

- only the `p2p` command line (p2p/cli/, and p2p/__main__.py) imports p2p.cli: library modules
  (benchmarks included) get their config from their caller, so the CLI never imports itself back;
- no p2p module imports the Prefect flows (`pipelines`): they import p2p, not the reverse
  (`p2p demo` runs `python -m pipelines.demo` in a child process), so there is no cycle;
- p2p.config (and the registries of names it validates against) never imports torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

P2P = Path(__file__).resolve().parents[2] / "p2p"

# Modules another change has still to move off p2p.cli (their config should come from the CLI).
PENDING_CLI_IMPORTS: set[str] = set()


def _imports(path: Path) -> set[str]:
    """Every module name `path` imports (absolute imports; p2p has no relative ones)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _importers(prefix: str) -> set[str]:
    root = P2P.parent
    return {
        str(f.relative_to(root))
        for f in P2P.rglob("*.py")
        if any(n == prefix or n.startswith(prefix + ".") for n in _imports(f))
    }


def test_only_the_cli_imports_p2p_cli():
    outside = {
        f for f in _importers("p2p.cli") if not f.startswith("p2p/cli/") and f != "p2p/__main__.py"
    }
    assert outside <= PENDING_CLI_IMPORTS, f"library modules importing p2p.cli: {sorted(outside)}"


def test_the_library_never_imports_the_flows():
    assert _importers("pipelines") == set()


def test_loading_a_config_does_not_import_torch():
    """p2p.config reads its generator/discriminator choices from the torch-free
    p2p.architectures, so `p2p config`, the flows' argument checks and DVC's params stay light."""
    code = (
        "import sys; from p2p.config import load_config; "
        "load_config(None, {'model.generator': 'resnet', 'data.crop_size': 252}); "
        "print('torch' in sys.modules)"
    )
    run = [sys.executable, "-c", code]
    out = subprocess.run(run, cwd=P2P.parent, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
