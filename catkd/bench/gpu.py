"""`gpu` (needs CUDA): one CAT-KD trial's images/s in fp32 and in bf16 + channels_last, and 4 trials
sharing one GPU.

Not in `all`. `--quick` shrinks models and data to check the script end to end on a CPU.
"""
from __future__ import annotations

import statistics
import time

import torch

# 240 CIFAR-100 epochs within 10 minutes on one H100; 4 trials at 0.25 GPU each >= 2.5x one alone
GOALS = {"projected_240_epochs_min_bf16_channels_last": ("<=", 10), "concurrent_over_single": (">=", 2.5)}


def _gpu_trial_cfg(tmp: str, precision: str, channels_last: bool, quick: bool, epochs: int):
    """resnet32x4 -> ShuffleV1 CAT-KD (preset res32x4_shuv1) on CIFAR-shaped synthetic data, with a
    randomly initialised teacher written to `tmp` (throughput does not depend on its weights)."""
    from pathlib import Path

    from catkd.engine.validate import load_run_config
    from catkd.models import build_model

    teacher, student = ("resnet8", "resnet8") if quick else ("resnet32x4", "ShuffleV1")
    ckpt = Path(tmp) / f"{teacher}_random.pth"
    if not ckpt.is_file():
        torch.save({"model": build_model(teacher, 100).state_dict()}, ckpt)
    return load_run_config("cifar100/CAT_KD/res32x4_shuv1", {
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
        from catkd.bench.cache import bench_cached_step

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
