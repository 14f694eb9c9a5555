"""`p2p bench import` runs end to end on a tiny size (figures printed, never asserted)."""

from __future__ import annotations

from p2p.cli import main


def test_bench_import_smoke(capsys):
    rc = main(["bench", "import", "--pairs", "4", "--px", "16", "--manifest-pairs", "50"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "4 pairs: import" in out and "PIL decode+encode floor" in out
    assert "manifest of 50 pairs" in out
