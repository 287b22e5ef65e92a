"""python -m catkd.bench {step,pipeline,study,cache,all} | asha | gpu: ratios measured side by side in one run.

This machine is shared and noisy, so every figure is a ratio of two things timed interleaved in
the same process, as the median of repeats. The last line printed is one JSON object of the
named figures. (Not a test: nothing here asserts a time.)

- step: CAT-KD training step / its compute floor (teacher forward under no_grad + student
  forward+backward+SGD step with CE only), resnet56 -> resnet20, batch 64 ("catkd_over_floor").
- pipeline: our batched in-memory augmentation (per-image crop+flip) vs the reference's
  torchvision per-sample PIL transforms through a DataLoader with 2 workers ("speedup_vs_pil").
- study: a --smoke study's trial processes' CPU time (user + system inside trials) / (wall seconds x
  cores) ("utilization_cpu"): how much of the machine Ray start-up, imports, scheduling, stage
  barriers and checkpoints leave to the trials. Beside it, the trainer's own timers (steps + the
  per-epoch evaluation, "utilization_trainer_time"; steps alone "utilization_steps_only"), which
  count a step waiting for a core as work. Median of 2 runs after an untimed warm-up.
- cache: what the teacher cache saves (catkd.bench_cache: the warm-cache step over the student's
  step, same-seed sharing, teacher forwards and wall of beta_sweep --smoke with over without it,
  the real-scale fraction from the loader's draws, the store dtype's loss difference).
- estimate (not in `all`): --dry-run's estimate of beta_sweep --smoke vs the same study run.
- asha (not in `all`: ~25 min here): a β grid on the synthetic data run to the end vs the same grid
  under ASHA, handed to ASHA in three orders (ascending, descending, a seeded shuffle): the share of
  the grid's epochs ASHA trained per order and at worst ("asha_epoch_fraction_max") and whether
  every order's pick is within 0.5 pt of the grid's best ("asha_found_best_all").
- gpu (not in `all`; needs CUDA): one CAT-KD trial resnet32x4 -> ShuffleV1 in fp32 and in bf16 +
  channels_last (images/s, projected 240-epoch wall time), and 4 trials at 0.25 GPU each vs one.
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


def student_ce_step(student, opt, x, y) -> None:
    """The student alone: forward, cross-entropy, backward, SGD step (the floor the benches compare with)."""
    import torch.nn.functional as F

    logits, _ = student(x)
    loss = F.cross_entropy(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


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
        for _ in ours.epoch_batches(epoch[0], 0):
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


def _run_smoke_study(study: str, storage: str, name: str, extra: list[str] = ()) -> tuple[float, list[dict]]:
    """Run `python -m catkd.study STUDY --smoke` in a subprocess; (wall seconds, epoch rows)."""
    import subprocess
    from pathlib import Path

    import pyarrow.parquet as pq

    cmd = [sys.executable, "-m", "catkd.study", study, "--smoke", "--no-dashboard", "--storage", storage, "--name", name,
           *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, pq.read_table(Path(storage) / name / "results.parquet").to_pylist()


def bench_study(study: str = "studies/beta_sweep.yaml", repeats: int = 2) -> dict:
    """Utilisation of a --smoke study after an untimed warm-up run (the smoke teacher is cached).

    utilization_cpu: CPU time (user + system, all threads) the trial processes spent inside trials
    (`trial_cpu_seconds`, measured by each trial) / (wall x cores). utilization_trainer_time: the
    trainer's own timers (optimisation steps + per-epoch evaluation) / (wall x cores), which counts a
    step waiting for a core as work; utilization_steps_only: the steps alone."""
    import os
    import tempfile

    cores = os.cpu_count() or 1
    runs = []
    with tempfile.TemporaryDirectory(prefix="catkd-bench-") as tmp:
        _run_smoke_study(study, tmp, "warm")  # trains and caches the smoke teacher: not timed
        for i in range(repeats):
            wall, rows = _run_smoke_study(study, tmp, f"bench{i}")
            train = sum(r["epoch_seconds"] for r in rows)
            evals = sum(r["eval_seconds"] for r in rows)
            cpu: dict[str, float] = {}
            for r in rows:  # cumulative per trial: its last epoch holds the trial's total
                cpu[r["trial_id"]] = max(cpu.get(r["trial_id"], 0.0), r.get("trial_cpu_seconds") or 0.0)
            cpu_s = sum(cpu.values())
            runs.append({"wall": wall, "train": train, "eval": evals, "cpu": cpu_s, "epochs": len(rows),
                         "util_cpu": cpu_s / (wall * cores), "util": (train + evals) / (wall * cores),
                         "util_steps": train / (wall * cores)})
            print(f"study: {study} --smoke run {i + 1}: {len(rows)} trial-epochs in {wall:.0f} s wall x {cores} "
                  f"cores; trial CPU time {cpu_s:.0f} s: utilization_cpu {runs[-1]['util_cpu']:.3f}; trainer "
                  f"timers {train:.0f} s steps + {evals:.0f} s eval: {runs[-1]['util']:.3f} "
                  f"({runs[-1]['util_steps']:.3f} steps alone)")
    med = lambda k: statistics.median(r[k] for r in runs)  # noqa: E731
    return {"study_wall_s": med("wall"), "study_train_s": med("train"), "study_eval_s": med("eval"),
            "study_trial_cpu_s": med("cpu"), "utilization_cpu": med("util_cpu"),
            "utilization_trainer_time": med("util"), "utilization_steps_only": med("util_steps")}


ASHA_STUDY = """\
name: asha_bench
description: catkd.bench asha -- a beta grid on the synthetic data, run to the end (fifo) or under ASHA
base: cifar100/CAT_KD/res56_res20
fixed: {{normalize: true, DATASET.VAL_SIZE: 5000}}  # the real study tunes on validation too
space:
  beta: {{grid: {betas}}}
search: {{algorithm: grid}}
scheduler: {{type: {scheduler}, grace_period: 1, reduction_factor: {rf}}}
metric: val_acc
seeds: [0]
smoke:
  epochs: {epochs}
  grace_period: 1
  teacher: resnet20
  student: resnet8
  dataset: {{NUM_CLASSES: 10, TRAIN_PER_CLASS: 500, TEST_PER_CLASS: 10}}
  val_size: 2000   # a large validation split: 1 image = 0.05 pt, so "within 0.5 pt" is not noise
  max_concurrent: 2
"""


ASHA_ORDERS = ("ascending", "descending", "shuffled")


def bench_asha(points: int = 12, epochs: int = 9, tolerance: float = 0.5, reduction_factor: float = 4,
               orders: tuple[str, ...] = ASHA_ORDERS, seed: int = 0) -> dict:
    """A β grid run to the end vs the same grid under ASHA (grace 1, `reduction_factor`) on the synthetic
    data, with the grid handed to ASHA in each of `orders` (ascending β, descending, a seeded shuffle):
    async ASHA promotes whichever trial reaches a rung first, so the order matters and one order alone
    could flatter it.

    The grid's best is the highest final-epoch val_acc (the grid run's values do not depend on the
    order: training is deterministic per β). ASHA's pick is its best trial that ran the full budget;
    it "found the best" when that β's final val_acc in the grid run is within `tolerance` points of
    the grid's best. Fraction: epochs ASHA trained / epochs the grid trained. The smoke teacher is
    trained and cached before either side is timed.
    """
    import math
    import random
    import tempfile
    from pathlib import Path

    betas = [round(10 ** (3 * i / (points - 1)), 3) for i in range(points)]  # 1 .. 1000, log-spaced
    shuffled = list(betas)
    random.Random(seed).shuffle(shuffled)
    order_of = {"ascending": betas, "descending": betas[::-1], "shuffled": shuffled}

    def final_acc(rows: list[dict]) -> dict[float, tuple[int, float]]:
        """β -> (epochs trained, val_acc at the last epoch; -inf for a diverged trial)."""
        by_trial: dict[str, dict] = {}
        for r in rows:
            if r["trial_id"] not in by_trial or r["epoch"] > by_trial[r["trial_id"]]["epoch"]:
                by_trial[r["trial_id"]] = r
        acc = lambda v: v if v is not None and math.isfinite(v) else -math.inf  # noqa: E731
        return {r["CAT_KD.LOSS.CAT_loss_weight"]: (r["epoch"], acc(r["val_acc"])) for r in by_trial.values()}

    def run(tmp: str, name: str, grid: list, scheduler: str, n_epochs: int) -> tuple[float, list[dict]]:
        path = Path(tmp) / f"{name}.yaml"
        path.write_text(ASHA_STUDY.format(betas=grid, scheduler=scheduler, epochs=n_epochs, rf=reduction_factor))
        return _run_smoke_study(str(path), tmp, name)

    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="catkd-bench-") as tmp:
        run(tmp, "warm", [1.0], "fifo", 1)  # the smoke teacher, trained once and cached: not timed
        grid_wall, rows = run(tmp, "grid", betas, "fifo", epochs)
        grid = final_acc(rows)
        grid_best_beta = max(grid, key=lambda b: grid[b][1])
        grid_epochs = sum(e for e, _ in grid.values())
        print(f"asha: grid (fifo): {len(rows)} epochs over {points} β values in {grid_wall:.0f} s; "
              f"best β {grid_best_beta:g} (val_acc {grid[grid_best_beta][1]:.2f})")
        fractions, found = [], []
        for order in orders:
            wall, rows = run(tmp, f"asha_{order}", order_of[order], "asha", epochs)
            asha = final_acc(rows)
            full = {b: a for b, (e, a) in asha.items() if e == epochs} or {b: a for b, (e, a) in asha.items()}
            pick = max(full, key=full.get)
            frac = sum(e for e, _ in asha.values()) / grid_epochs
            gap = grid[grid_best_beta][1] - grid[pick][1]
            fractions.append(frac)
            found.append(bool(gap <= tolerance))
            for b in betas:
                print(f"asha:   [{order}] β {b:9.3f}: grid val_acc {grid[b][1]:6.2f} | ASHA {asha[b][1]:6.2f} "
                      f"({asha[b][0]} ep)" + ("   <- grid best" if b == grid_best_beta else "")
                      + ("   <- ASHA pick" if b == pick else ""))
            print(f"asha: [{order}] ASHA trained {frac:.3f} of the grid's {grid_epochs} epochs in {wall:.0f} s; "
                  f"its pick β {pick:g} is {gap:.2f} pt below the grid's best ({'found' if found[-1] else 'MISSED'})")
            out.update({f"asha_epoch_fraction_{order}": frac, f"asha_found_best_{order}": found[-1],
                        f"asha_gap_pt_{order}": gap, f"asha_wall_s_{order}": wall})
    out.update({"asha_epoch_fraction_max": max(fractions), "asha_found_best_all": all(found),
                "asha_grid_wall_s": grid_wall})
    return out


# ---- GPU: one trial's images/s (fp32 vs bf16 + channels_last) and 4 trials sharing one GPU ----------
def _gpu_trial_cfg(tmp: str, precision: str, channels_last: bool, quick: bool, epochs: int):
    """resnet32x4 -> ShuffleV1 CAT-KD (preset res32x4_shuv1) on CIFAR-shaped synthetic data, with a
    randomly initialised teacher written to `tmp` (throughput does not depend on its weights)."""
    from pathlib import Path

    from catkd.config import load_config
    from catkd.models import build_model

    teacher, student = ("resnet8", "resnet8") if quick else ("resnet32x4", "ShuffleV1")
    ckpt = Path(tmp) / f"{teacher}_random.pth"
    if not ckpt.is_file():
        torch.save({"model": build_model(teacher, 100).state_dict()}, ckpt)
    return load_config("cifar100/CAT_KD/res32x4_shuv1", {
        "DISTILLER.TEACHER": teacher, "DISTILLER.STUDENT": student, "DISTILLER.TEACHER_CKPT": str(ckpt),
        "DATASET.TYPE": "synthetic", "DATASET.VAL_SIZE": 0,
        "DATASET.SYNTHETIC.NUM_CLASSES": 100,
        "DATASET.SYNTHETIC.TRAIN_PER_CLASS": 10 if quick else 200,
        "DATASET.SYNTHETIC.TEST_PER_CLASS": 2 if quick else 50,
        "CAT_KD.LOSS.CAM_RESOLUTION": 2 if quick else 4,
        "SOLVER.EPOCHS": epochs, "LOG.SAVE_CHECKPOINT_FREQ": 0,
        "RUN.PRECISION": precision, "RUN.CHANNELS_LAST": channels_last, "RUN.PROGRESS": "none",
    }, quiet=True)


def _timed_fit(cfg, out_dir: str) -> list[dict]:
    """Fit `cfg`; per epoch: images, train seconds, eval seconds and the wall-clock span of training."""
    from catkd.engine import Trainer

    epochs: list[dict] = []

    def report(m: dict, _run_dir) -> None:
        end = time.time() - m["eval_seconds"]
        epochs.append({"images": m["images_per_second"] * m["epoch_seconds"], "train_s": m["epoch_seconds"],
                       "eval_s": m["eval_seconds"], "start": end - m["epoch_seconds"], "end": end})

    Trainer.from_config(cfg, out_dir=out_dir, log=lambda _: None).fit(report=report)
    return epochs


def bench_gpu(quick: bool = False, concurrent: int = 4) -> dict:
    """(a) images/s of one CAT-KD trial resnet32x4 -> ShuffleV1, batch 64, fp32 vs bf16 +
    channels_last, and the projected wall time of 240 epochs on CIFAR-100 (50,000 training and
    10,000 test images per epoch); (b) aggregate images/s of `concurrent` trials at 1/concurrent GPU
    each (Ray tasks, as Tune places trials) vs one trial alone. The first epoch of every run is
    warm-up and not counted. `quick` shrinks everything to check the script on a CPU."""
    import os
    import tempfile

    import ray

    if not quick and not torch.cuda.is_available():
        raise SystemExit("catkd.bench gpu: no CUDA device here (use --quick to check the script on a CPU)")
    epochs = 2 if quick else 3
    out: dict = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (quick CPU check)"}
    with tempfile.TemporaryDirectory(prefix="catkd-bench-gpu-") as tmp:
        single = {}
        for label, prec, cl in (("fp32", "fp32", False), ("bf16_channels_last", "bf16", True)):
            ep = _timed_fit(_gpu_trial_cfg(tmp, prec, cl, quick, epochs), os.path.join(tmp, label))[1:]
            ips = sum(e["images"] for e in ep) / sum(e["train_s"] for e in ep)
            eval_s = statistics.median(e["eval_s"] for e in ep)
            test_images = 100 * (2 if quick else 50)
            epoch_s = 50_000 / ips + eval_s * 10_000 / test_images
            single[label] = ips
            out[f"eval_s_per_epoch_{label}"] = eval_s * 10_000 / test_images
            out[f"images_per_s_{label}"] = ips
            out[f"projected_240_epochs_min_{label}"] = 240 * epoch_s / 60
            print(f"gpu: one trial, {label}: {ips:,.0f} img/s; 240 CIFAR-100 epochs ~ {240 * epoch_s / 60:.1f} min")
        out["bf16_channels_last_speedup"] = single["bf16_channels_last"] / single["fp32"]
        # (c) the same trial with a warm teacher cache: its step is the student's step plus reading targets
        from catkd.bench_cache import bench_cached_step

        teacher, student = ("resnet8", "resnet8") if quick else ("resnet32x4", "ShuffleV1")
        c = bench_cached_step(repeats=5 if quick else 20, teacher=teacher, student=student,
                              resolution=2 if quick else 4, device="cuda" if torch.cuda.is_available() else "cpu")
        warm = 240 * (50_000 / 64 * c["cached_step_ms"] / 1000 + out["eval_s_per_epoch_fp32"]) / 60
        out["projected_240_epochs_min_warm_cache_fp32"] = warm
        out["warm_cache_step_over_live"] = c["cached_step_ms"] / c["live_step_ms"]
        print(f"gpu: one trial with a warm teacher cache (fp32): step {c['cached_step_ms']:.1f} vs "
              f"{c['live_step_ms']:.1f} ms live; 240 CIFAR-100 epochs ~ {warm:.1f} min (live: "
              f"{out['projected_240_epochs_min_fp32']:.1f} min)")

        share = 1.0 / concurrent
        ray.init(address="local", num_cpus=max(concurrent, os.cpu_count() or 1), num_gpus=1,
                 include_dashboard=False, log_to_driver=False)
        try:
            cpus = max(1, (os.cpu_count() or concurrent) // concurrent)

            @ray.remote(num_gpus=share, num_cpus=cpus)
            def trial(i: int) -> list[dict]:
                torch.set_num_threads(cpus)
                return _timed_fit(_gpu_trial_cfg(tmp, "bf16", True, quick, epochs), os.path.join(tmp, f"c{i}"))[1:]

            runs = ray.get([trial.remote(i) for i in range(concurrent)])
        finally:
            ray.shutdown()
        spans = [e for run in runs for e in run]
        agg = sum(e["images"] for e in spans) / (max(e["end"] for e in spans) - min(e["start"] for e in spans))
        out[f"aggregate_images_per_s_{concurrent}_trials"] = agg
        out["concurrent_over_single"] = agg / single["bf16_channels_last"]
        print(f"gpu: {concurrent} trials at {share:g} GPU each (bf16 + channels_last): {agg:,.0f} img/s together, "
              f"{out['concurrent_over_single']:.2f}x one trial alone")
    return out


def bench_cache(no_prefetch_side: bool = True, rounds: int = 2) -> dict:
    from catkd.bench_cache import bench_cache as run

    return run(no_prefetch_side=no_prefetch_side, rounds=rounds)


def bench_estimate(study: str = "studies/beta_sweep.yaml") -> dict:
    """--dry-run's estimate of a --smoke study's wall vs the wall of the same study run (the smoke
    teacher trained and cached first, untimed): actual / estimated."""
    import io
    import shutil
    import tempfile
    from contextlib import redirect_stdout
    from pathlib import Path

    from catkd.study.estimate import estimate
    from catkd.study.preflight import absolutise, ensure_smoke_teacher
    from catkd.study.spec import load_study

    tmp = tempfile.mkdtemp(prefix="catkd-bench-estimate-")
    try:
        spec = load_study(study, smoke=True)
        ensure_smoke_teacher(spec, Path(tmp) / ".cache" / "teachers")
        buf = io.StringIO()
        with redirect_stdout(buf):
            est = estimate(absolutise(spec)[0])
        wall, rows = _run_smoke_study(study, tmp, "estimate")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    est_s = est["wall_hours"] * 3600
    train_s = sum(r["epoch_seconds"] + r["eval_seconds"] for r in rows) / est["concurrency"]
    print(f"estimate: {study} --smoke: estimated {est_s:.0f} s wall ({est['trial_epochs_expected']:.0f} expected "
          f"trial-epochs), measured {wall:.0f} s ({len(rows)} trial-epochs; the trials' own train + eval time / "
          f"{est['concurrency']} slots: {train_s:.0f} s): actual / estimate {wall / est_s:.2f}")
    return {"estimate_wall_s": est_s, "actual_wall_s": wall, "actual_over_estimate": wall / est_s,
            "actual_trial_time_over_estimate": train_s / est_s}


BENCHES = {"step": bench_step, "pipeline": bench_pipeline, "study": bench_study, "cache": bench_cache}
# not part of `all`: gpu needs a CUDA device; asha (a grid and three ASHA orders, ~25 min on 2 cores)
# would take `all` past its 25-minute budget
EXTRA = {"gpu": bench_gpu, "asha": bench_asha, "estimate": bench_estimate}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m catkd.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("name", choices=[*BENCHES, *EXTRA, "all"],
                    help="`all` runs step, pipeline, study and cache (asha and gpu: by name)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="for step")
    ap.add_argument("--quick", action="store_true", help="gpu: tiny models and data, to check the script on a CPU")
    ap.add_argument("--asha-points", type=int, default=12, help="asha: β values in the grid (default 12)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="cache: interleaved rounds of the smoke study, each side (default 2)")
    ap.add_argument("--asha-rf", type=float, default=4, help="asha: ASHA reduction factor (default 4; see README)")
    args = ap.parse_args(argv)
    names = list(BENCHES) if args.name == "all" else [args.name]
    out: dict = {"device": args.device, "threads": torch.get_num_threads()}
    for name in names:  # each prints its own lines
        if name == "step":
            on_gpu = args.device.startswith("cuda")  # the pairs: small on CPU, the preset pair on GPU
            out.update(bench_step(args.device, *(("resnet32x4", "ShuffleV1") if on_gpu else ("resnet56", "resnet20"))))
        elif name == "asha":
            out.update(bench_asha(points=args.asha_points, reduction_factor=args.asha_rf))
        elif name == "gpu":
            out.update(bench_gpu(quick=args.quick))
        elif name == "cache":
            # `all` leaves out its side without the prefetch: with it, `all` took 25 min 22 s on a
            # slow 2-core machine (budget: 25 min); `bench cache` runs every side
            out.update(bench_cache(no_prefetch_side=args.name != "all", rounds=args.rounds))
        else:
            out.update({**BENCHES, **EXTRA}[name]())
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
