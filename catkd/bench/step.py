"""`step`: a CAT-KD training step over its compute floor; `--distiller NAME|all`: any method's.

The floor is the teacher's forward under no_grad plus the student's forward, backward and SGD step with
cross-entropy alone; the CAT-KD step is the trainer's own `train_step`. Both are timed interleaved in
one process (median of the repeats), so the ratio holds on a shared, noisy machine. Beside them, the
same CAT-KD step with models and images channels-last (what `RUN.CHANNELS_LAST auto` picks on a CPU).
"""
from __future__ import annotations

import copy
import contextlib
import statistics

import torch

from catkd.bench.common import median_time, student_ce_step

GOALS = {"catkd_over_floor": ("<=", 1.05),
         **{f"{n}_over_floor": ("<=", 1.10) for n in ("KD", "DKD", "CAT_KD", "FITNET", "AT", "NST", "PKT", "KDSVD",
                                                      "OFD", "RKD", "VID", "SP", "CRD", "REVIEWKD")}}
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

    cl = torch.channels_last
    dist_cl = copy.deepcopy(dist).to(memory_format=cl)
    opt_cl = torch.optim.SGD(dist_cl.student.parameters(), lr=0.01, momentum=0.9)
    x_cl = x.contiguous(memory_format=cl)

    def channels_last_step():
        train_step(dist_cl, opt_cl, x_cl, y, {}, contextlib.nullcontext())
        sync()

    steps = (catkd_step, floor_step, channels_last_step)
    for _ in range(3):  # warm-up (allocator, kernels)
        for fn in steps:
            fn()
    times: list[list[float]] = [[], [], []]
    for _ in range(repeats):  # interleaved: all see the same machine load
        for ts, fn in zip(times, steps):
            ts.append(median_time(fn, 1))
    ca, fb, cc = (statistics.median(ts) for ts in times)
    print(f"step: {teacher}->{student} batch {batch} on {device}: CAT-KD {ca * 1000:.1f} ms, floor {fb * 1000:.1f} ms, "
          f"channels-last {cc * 1000:.1f} ms")
    return {"catkd_step_ms": ca * 1000, "floor_step_ms": fb * 1000, "catkd_over_floor": ca / fb,
            "channels_last_step_ms": cc * 1000, "channels_last_over_contiguous": cc / ca}


class _Labels:
    """What CRD reads of a training set (`bind_data`): n samples, their classes and dataset indices."""

    def __init__(self, n: int, classes: int):
        self.labels = torch.arange(n) % classes
        self.source_index = torch.arange(n)


def bench_distiller(name: str, device: str = "cpu", teacher: str = "resnet56", student: str = "resnet20",
                    batch: int = 64, repeats: int = 15) -> dict:
    """Method `name`'s training step (the trainer's train_step, live teacher) over the CE floor (teacher
    forward + student forward/backward/SGD step with cross-entropy), timed interleaved. The method's
    extra modules (regressors, embeddings, memory, ...) are in its step, not in the floor: their
    parameter count is reported beside the ratio."""
    from types import SimpleNamespace

    from catkd.config import SECTIONS
    from catkd.distillers import DISTILLERS, build_distiller
    from catkd.engine.trainer import train_step
    from catkd.engine.validate import config_from_dict
    from catkd.models import build_model

    dev = torch.device(device)
    torch.manual_seed(0)
    kind = DISTILLERS.get(name)
    cfg = config_from_dict({"DISTILLER": {"TYPE": name, "TEACHER": teacher, "STUDENT": student},
                            **({name: {}} if name in SECTIONS else {})})
    t = build_model(teacher, 100).to(dev)
    s = build_model(student, 100, head_bias=kind.student_head_bias).to(dev)
    dist = build_distiller(cfg, s, t if kind.needs_teacher else None, 100).to(dev)
    dist.bind_data(SimpleNamespace(train=_Labels(50_000, 100)))
    dist.train()
    opt = torch.optim.SGD(dist.learnable_parameters(), lr=0.01, momentum=0.9)
    opt_floor = torch.optim.SGD(s.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 100, (batch,), device=dev)
    index = torch.randperm(50_000)[:batch]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    epoch = [0]

    def method_step():
        epoch[0] += 1  # a new epoch each step: ReviewKD's and DKD's warm-up, CRD's draws
        train_step(dist, opt, x, y, {"epoch": epoch[0], "step": 1, "index": index}, contextlib.nullcontext())
        sync()

    def floor_step():
        t.eval()
        with torch.no_grad():
            t(x)
        student_ce_step(s, opt_floor, x, y)
        sync()
        dist.train()  # OFD's teacher runs in train mode in its own step

    for _ in range(3):
        method_step()
        floor_step()
    a, b = [], []
    for _ in range(repeats):
        a.append(median_time(method_step, 1))
        b.append(median_time(floor_step, 1))
    ma, fb = statistics.median(a), statistics.median(b)
    extra = dist.extra_parameter_count()
    print(f"step {name}: {teacher}->{student} batch {batch} on {device}: {ma * 1000:.1f} ms, floor {fb * 1000:.1f} ms, "
          f"ratio {ma / fb:.3f}, extra parameters {extra:,}", flush=True)
    return {f"{name}_step_ms": ma * 1000, f"{name}_floor_ms": fb * 1000, f"{name}_over_floor": ma / fb,
            f"{name}_extra_parameters": extra}


def run(device: str = "cpu", quick: bool = False, distiller: str | None = None) -> dict:
    """The bench as the command line runs it: the device's pair; `quick`: 3 repeats instead of 15;
    `distiller`: a method's step (or "all": every registered method's) instead of CAT-KD's."""
    teacher, student = PAIRS["cuda" if device.startswith("cuda") else "cpu"]
    repeats = {"repeats": QUICK_REPEATS} if quick else {}
    if distiller is None:
        return bench_step(device, teacher, student, **repeats)
    from catkd.distillers import DISTILLERS

    names = [n for n in DISTILLERS.names() if n != "NONE"] if distiller == "all" else [distiller]
    out: dict = {}
    for name in names:
        try:
            out.update(bench_distiller(name, device, teacher, student, **repeats))
        except (ValueError, NotImplementedError) as e:  # a pair the method cannot run
            print(f"step {name}: {teacher}->{student} not runnable: {str(e).splitlines()[0]}")
    return out
