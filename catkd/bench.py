"""python -m catkd.bench {step,pipeline,all}: ratios measured side by side in one run.

This machine is shared and noisy, so every figure is a ratio of two things timed interleaved in
the same process, as the median of repeats. The last line printed is one JSON object of the
named figures. (Not a test: nothing here asserts a time.)

- step: CAT-KD training step / its compute floor (teacher forward under no_grad + student
  forward+backward+SGD step with CE only), resnet56 -> resnet20, batch 64 ("catkd_over_floor").
- pipeline: our batched in-memory augmentation (per-image crop+flip) vs the reference's
  torchvision per-sample PIL transforms through a DataLoader with 2 workers ("speedup_vs_pil").
- study: a --smoke study's training seconds summed over trials / (wall seconds x cores)
  ("utilization"): how much of the machine Ray start-up, scheduling and checkpoints leave to training.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from typing import Callable

import torch


def _median_time(fn: Callable[[], None], repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench_step(device: str = "cpu", teacher: str = "resnet56", student: str = "resnet20", batch: int = 64,
               repeats: int = 15) -> dict:
    import torch.nn.functional as F

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
        logits, _ = s(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()

    for _ in range(3):  # warm-up (allocator, kernels)
        catkd_step()
        floor_step()
    a, b = [], []
    for _ in range(repeats):  # interleaved: both see the same machine load
        a.append(_median_time(catkd_step, 1))
        b.append(_median_time(floor_step, 1))
    ca, fb = statistics.median(a), statistics.median(b)
    print(f"step: {teacher}->{student} batch {batch} on {device}: CAT-KD {ca * 1000:.1f} ms, floor {fb * 1000:.1f} ms")
    return {"catkd_step_ms": ca * 1000, "floor_step_ms": fb * 1000, "catkd_over_floor": ca / fb}


def bench_pipeline(n: int = 10000, batch: int = 64, repeats: int = 3) -> dict:
    import numpy as np
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    from catkd.data.loader import TrainLoader

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 100, size=n)
    mean, std = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)

    class PILSet(Dataset):  # what torchvision's CIFAR100 does per sample
        tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                 transforms.ToTensor(), transforms.Normalize(mean, std)])

        def __len__(self):
            return n

        def __getitem__(self, i):
            return self.tf(Image.fromarray(images[i])), int(labels[i])

    ref = DataLoader(PILSet(), batch_size=batch, shuffle=True, num_workers=2, persistent_workers=True)
    ours = TrainLoader(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels),
                       mean, std, batch, torch.device("cpu"))

    def run_ref():
        for xb, yb in ref:
            pass

    epoch = [0]

    def run_ours():
        epoch[0] += 1
        for xb, yb in ours.epoch_batches(epoch[0], 0):
            pass

    run_ref()
    run_ours()
    a, b = [], []
    for _ in range(repeats):
        a.append(_median_time(run_ours, 1))
        b.append(_median_time(run_ref, 1))
    ours_ips, ref_ips = n / statistics.median(a), n / statistics.median(b)
    print(f"pipeline: {n} CIFAR-shaped images, batch {batch}: ours {ours_ips:,.0f} img/s, "
          f"torchvision PIL + DataLoader(2 workers) {ref_ips:,.0f} img/s")
    return {"ours_images_per_s": ours_ips, "pil_images_per_s": ref_ips, "speedup_vs_pil": ours_ips / ref_ips}


def bench_study(study: str = "studies/beta_sweep.yaml") -> dict:
    import os
    import subprocess
    import tempfile
    from pathlib import Path

    import pyarrow.parquet as pq

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="catkd-bench-") as tmp:
        cmd = [sys.executable, "-m", "catkd.study", study, "--smoke", "--no-dashboard", "--storage", tmp,
               "--name", "bench"]
        # the smoke teacher is trained (and cached) first, outside the timed run
        subprocess.run(cmd + ["--name", "warm"], check=True, capture_output=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        wall = time.perf_counter() - t0
        rows = pq.read_table(Path(tmp) / "bench" / "results.parquet").to_pylist()
    train = sum(r["epoch_seconds"] for r in rows)
    print(f"study: {study} --smoke: {len(rows)} trial-epochs, {train:.0f} s of training in {wall:.0f} s wall "
          f"x {cores} cores")
    return {"study_wall_s": wall, "study_train_s": train, "utilization": train / (wall * cores)}


BENCHES = {"step": bench_step, "pipeline": bench_pipeline, "study": bench_study}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m catkd.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("name", choices=[*BENCHES, "all"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    names = list(BENCHES) if args.name == "all" else [args.name]
    out: dict = {"device": args.device, "threads": torch.get_num_threads()}
    for name in names:
        fn = BENCHES[name]
        out.update(fn(device=args.device) if name == "step" else fn())  # each prints its own lines
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
