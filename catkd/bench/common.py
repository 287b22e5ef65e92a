"""What several benches share: timing side by side, the student-alone step, running a --smoke study."""
from __future__ import annotations

import statistics
import subprocess
import sys
import time
from typing import Callable

SMOKE_STUDY = "studies/beta_sweep.yaml"


def median_time(fn: Callable[[], None], repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def interleaved(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds of each fn, timed in turn each repeat so all see the same machine load (after two
    untimed warm-up calls each)."""
    for fn in fns.values():
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def student_ce_step(student, opt, x, y) -> None:
    """The student alone: forward, cross-entropy, backward, SGD step (the floor the benches compare with)."""
    import torch.nn.functional as F

    logits, _ = student(x)
    loss = F.cross_entropy(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def run_smoke_study(study: str, storage: str, name: str, extra: list[str] = ()) -> tuple[float, list[dict]]:
    """Run `python -m catkd.study STUDY --smoke` in a subprocess; (wall seconds, epoch rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cmd = [sys.executable, "-m", "catkd.study", study, "--smoke", "--no-dashboard", "--storage", storage, "--name", name,
           *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    from catkd.storage import location

    table = (location(storage) / name / "results.parquet").read_bytes()
    return wall, pq.read_table(pa.BufferReader(table)).to_pylist()
