"""Atomic writes: all or nothing, and the permissions a plain write would give."""
from __future__ import annotations

import os
import stat

import pytest

from catkd.fsutil import atomic_write_text


def test_a_new_file_gets_the_umasks_permissions_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        import importlib

        import catkd.fsutil as fsutil

        importlib.reload(fsutil)  # the mode is read from the umask at import
        p = fsutil.atomic_write_text(tmp_path / "results.txt", "x")
    finally:
        os.umask(old)
        importlib.reload(fsutil)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
    assert p.read_text() == "x" and not list(tmp_path.glob(".*.tmp"))


def test_a_replaced_file_keeps_its_permissions(tmp_path):
    p = tmp_path / "study.yaml"
    p.write_text("old")
    p.chmod(0o640)
    atomic_write_text(p, "new")
    assert stat.S_IMODE(p.stat().st_mode) == 0o640 and p.read_text() == "new"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    from catkd.fsutil import atomic_write

    p = tmp_path / "trials.parquet"
    p.write_bytes(b"old")

    def boom(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(p, boom)
    assert p.read_bytes() == b"old" and not list(tmp_path.glob(".*.tmp"))
