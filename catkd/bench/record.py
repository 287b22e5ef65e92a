"""A bench's figures as a JSON record: what was measured, when, on what machine, from which commit.

Records are what docs/benchmarks.md's "Latest figures" is generated from, so they carry everything a
reader needs to judge a figure: the date, the cores and device, the load the machine had, and the
exact code (a commit hash, "+dirty" when tracked files had uncommitted changes).
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Optional

from catkd.fsutil import atomic_write_json

REPO = Path(__file__).resolve().parents[2]  # the checkout catkd runs from (an editable install)


def git_commit(cwd: str | Path = REPO) -> Optional[str]:
    """Short hash of HEAD, plus "+dirty" when tracked files have uncommitted changes; None outside a git
    checkout (or without git)."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "--short", "HEAD")
        if head.returncode != 0:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.returncode != 0 or dirty.stdout.strip() else "")


def machine() -> dict[str, Any]:
    """Cores, platform, torch version, device, and the load average when the record was made: the
    machine may be shared, and its load says how far its seconds can be compared."""
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"cpu_cores": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
            "device": device, "load_average_1_5_15min": load_average()}


def load_average() -> Optional[list[float]]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def context(cwd: str | Path = REPO) -> dict[str, Any]:
    """Date (ISO, UTC), machine and commit, taken when a bench starts: the code that ran and the load the
    bench met, not the load it made."""
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
            "commit": git_commit(cwd)}


def make_record(bench: str, figures: dict, args: dict, ctx: Optional[dict] = None, *,
                wall_s: Optional[float] = None, note: Optional[str] = None) -> dict[str, Any]:
    """`args`: the command line's options (quick or not, ...); `ctx`: `context()` from the bench's start
    (taken now if None)."""
    ctx = ctx or context()
    # the load at the end beside the one at the start: others' work that began during the bench shows
    machine = {**ctx["machine"], "load_average_1_5_15min_at_end": load_average()}
    rec = {"bench": bench, "figures": figures, "date": ctx["date"], "machine": machine,
           "commit": ctx["commit"], "args": args}
    if wall_s is not None:
        rec["wall_s"] = round(wall_s, 1)
    if note:
        rec["note"] = note
    return rec


def write_record(path: str | Path, record: dict) -> Path:
    """Atomically: a reader sees the previous record or this one, never half of one."""
    return atomic_write_json(path, record)
