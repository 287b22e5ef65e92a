"""`step`: a CAT-KD training step over its compute floor.

The floor is the teacher's forward under no_grad plus the student's forward, backward and SGD step with
cross-entropy alone; the CAT-KD step is the trainer's own `train_step`. Both are timed interleaved in
one process (median of the repeats), so the ratio holds on a shared, noisy machine.
"""
from __future__ import annotations

import contextlib
import statistics

import torch

from catkd.bench.common import median_time, student_ce_step

GOALS = {"catkd_over_floor": ("<=", 1.05)}
# the pair timed per device: small on a CPU, the preset pair on a GPU
PAIRS = {"cpu": ("resnet56", "resnet20"), "cuda": ("resnet32x4", "ShuffleV1")}
QUICK_REPEATS = 3


def bench_step(device: str = "cpu", teacher: str = "resnet56", student: str = "resnet20", batch: int = 64,
               repeats: int = 15) -> dict:
    from catkd.distillers.cat_kd import CATKD
    from catkd.engine.trainer import train_step
    from catkd.models import build_model

    dev = torch.device(device)
    torch.manual_seed(0)
    t = build_model(teacher, 100).to(dev).eval()
    s = build_model(student, 100, head_bias=False).to(dev)
    dist = CATKD(s, t, beta=0.7, resolution=2, normalize=False).to(dev)
    dist.train()
    opt = torch.optim.SGD(s.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 100, (batch,), device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def catkd_step():  # the trainer's own step
        train_step(dist, opt, x, y, {}, contextlib.nullcontext())
        sync()

    def floor_step():
        with torch.no_grad():
            t(x)
        student_ce_step(s, opt, x, y)
        sync()

    for _ in range(3):  # warm-up (allocator, kernels)
        catkd_step()
        floor_step()
    a, b = [], []
    for _ in range(repeats):  # interleaved: both see the same machine load
        a.append(median_time(catkd_step, 1))
        b.append(median_time(floor_step, 1))
    ca, fb = statistics.median(a), statistics.median(b)
    print(f"step: {teacher}->{student} batch {batch} on {device}: CAT-KD {ca * 1000:.1f} ms, floor {fb * 1000:.1f} ms")
    return {"catkd_step_ms": ca * 1000, "floor_step_ms": fb * 1000, "catkd_over_floor": ca / fb}


def run(device: str = "cpu", quick: bool = False) -> dict:
    """The bench as the command line runs it: the device's pair; `quick`: 3 repeats instead of 15."""
    teacher, student = PAIRS["cuda" if device.startswith("cuda") else "cpu"]
    return bench_step(device, teacher, student, **({"repeats": QUICK_REPEATS} if quick else {}))
