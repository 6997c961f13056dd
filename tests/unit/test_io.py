"""zsc.io: atomic writes leave the old file or the whole new one, never a temp file, with open()'s permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from zsc.io import atomic_open, atomic_write_bytes


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_replaces_whole_and_keeps_open_permissions(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "out.bin"
    old_umask = os.umask(0o027)
    try:
        atomic_write_bytes(target, b"first")
        atomic_write_bytes(target, b"second, longer")
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"second, longer"
    assert _mode(target) == 0o640  # 0o666 minus the umask, as open() gives (not mkstemp's private 0o600)
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_open(target, "w") as f:
        f.write("half of the new")
        raise RuntimeError("disk on fire")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
