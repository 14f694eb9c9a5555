"""p2p.atomic: files written atomically get the umask's mode, like a plain open()."""

from __future__ import annotations

import os
import stat

import pytest

from p2p.atomic import current_umask, write_bytes_atomic, write_text_atomic


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_files_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        assert current_umask() == mask
        write_text_atomic(tmp_path / "report.json", "{}")
        write_bytes_atomic(tmp_path / "out.png", b"x")
        (tmp_path / "plain.txt").write_text("x")  # what a user expects
    finally:
        os.umask(old)
    plain = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    for name in ("report.json", "out.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == plain == 0o666 & ~mask


def test_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")

    def boom(tmp: str) -> None:
        raise RuntimeError("disk full")

    from p2p.atomic import write_atomic

    with pytest.raises(RuntimeError):
        write_atomic(target, boom)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
