"""Helpers shared by the tests that run studies in subprocesses."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


def kill_orphans(ray_tmp: Path) -> None:
    """SIGKILL the Ray processes a killed driver left behind (their command line names our RAY_TMPDIR).
    Never `ray stop`: it would kill every Ray process on the host."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        if str(ray_tmp) in args and int(pid) != os.getpid():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
