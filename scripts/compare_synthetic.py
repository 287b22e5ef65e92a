"""Every method vs the same student trained alone, on the embedded SYNTHETIC dataset (CPU-sized).

Trains a teacher once, then the student alone and with each method over the same seeds, and prints
test top-1 (best and last epoch) as mean +- std. Each method starts from its packaged preset for
resnet56 -> resnet20 (`cifar100/<METHOD>/res56_res20`: its loss settings, β, DKD's BETA, KD's T and
weights), as `python -m catkd.train --cfg cifar100/DKD/res56_res20 DATASET.TYPE synthetic ...` would;
only the data, the models, the epoch budget and the schedule are replaced. The 240-epoch schedule is
scaled to the budget: lr decay at 60 % and 80 % of it, DKD's 20-epoch warm-up to the same fraction
(20/240), and so is ReviewKD's. CRD's K is a third of the negatives' pool (16,384 of 49,500 on
CIFAR-100). Usage:

    python scripts/compare_synthetic.py [--seeds 0 1] [--epochs 40] [--betas 20] [--per-class 300]
        [--methods KD CRD ...] [--out results/compare]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from tabulate import tabulate

from catkd.engine.validate import load_run_config as load_config
from catkd.engine import Trainer

DATA = {"DATASET.TYPE": "synthetic", "RUN.PROGRESS": "none", "SOLVER.BATCH_SIZE": 64,
        "SOLVER.WEIGHT_DECAY": 5e-4, "LOG.SAVE_CHECKPOINT_FREQ": 0}


def run(preset: str, out: Path, name: str, **over) -> "object":
    cfg = load_config(preset, {**DATA, "LOG.PREFIX": str(out), "EXPERIMENT.NAME": name, **over}, quiet=True)
    t0 = time.time()
    r = Trainer.from_config(cfg, log=lambda s: None).fit()
    print(f"  {name}: {r.status}, best {r.best_test_acc:.2f}, last {r.last_test_acc:.2f} ({time.time() - t0:.0f}s)",
          flush=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--teacher", default="resnet20")
    ap.add_argument("--teacher-epochs", type=int, help="the teacher's own budget (default: --epochs)")
    ap.add_argument("--student", default="resnet8")
    ap.add_argument("--betas", type=float, nargs="*", default=[20.0],
                    help="extra CAT-KD runs with this β, R=2, normalized (beside the preset's β)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    ap.add_argument("--per-class", type=int, default=300, help="synthetic training images per class (10 classes)")
    ap.add_argument("--methods", nargs="*", help="only these (labels' first word: alone, KD, DKD, CAT-KD, FITNET, ...)")
    ap.add_argument("--out", default="results/compare_synthetic")
    args = ap.parse_args()
    out = Path(args.out)
    e = args.epochs
    sched = {"SOLVER.EPOCHS": e, "SOLVER.LR_DECAY_STAGES": [int(e * 0.6), int(e * 0.8)], "SOLVER.LR": 0.05,
             "RUN.THREADS": args.threads, "DATASET.SYNTHETIC.TRAIN_PER_CLASS": args.per_class}
    print(f"teacher {args.teacher}, {e} epochs (SYNTHETIC data):", flush=True)
    te = args.teacher_epochs or e
    teacher = run("cifar100/vanilla/resnet20", out, f"teacher_{args.teacher}", **{
        **sched, "SOLVER.EPOCHS": te, "SOLVER.LR_DECAY_STAGES": [int(te * 0.6), int(te * 0.8)],
        "DISTILLER.STUDENT": args.teacher})
    ckpt = str(out / f"teacher_{args.teacher}" / f"ckpt_epoch_{te}.pth")
    warmup = max(1, round(20 * e / 240))
    methods: dict[str, tuple[str, dict]] = {
        "student alone": ("cifar100/vanilla/resnet20", {}),
        "KD (preset: T=4, CE 0.1 + KD 0.9)": ("cifar100/KD/res56_res20", {}),
        f"DKD (preset: BETA 2, ALPHA 1, T 4; warm-up {warmup} ep)": ("cifar100/DKD/res56_res20",
                                                                    {"DKD.WARMUP": warmup}),
        "CAT-KD (preset: β=0.7, R=2, not normalized)": ("cifar100/CAT_KD/res56_res20", {}),
    }
    for b in args.betas:
        methods[f"CAT-KD (β={b:g}, R=2, normalized)"] = (
            "cifar100/CAT_KD/res56_res20",
            {"CAT_KD.LOSS.CAT_loss_weight": b, "CAT_KD.LOSS.CAM_RESOLUTION": 2, "CAT_KD.IF_NORMALIZE": True})
    pool = 9 * args.per_class  # a sample's negatives: the other nine classes
    feature = {"FITNET": {}, "AT": {}, "NST": {}, "PKT": {}, "KDSVD": {}, "OFD": {}, "RKD": {}, "VID": {}, "SP": {},
               "CRD": {"CRD.NCE.K": pool // 3}, "REVIEWKD": {"REVIEWKD.WARMUP_EPOCHS": warmup}}
    for name, over in feature.items():
        methods[f"{name} (preset)"] = (f"cifar100/{name}/res56_res20", over)
    if args.methods:
        methods = {k: v for k, v in methods.items() if k.split()[0] in args.methods or
                   (k.startswith("student") and "alone" in args.methods)}
    rows = []
    for label, (preset, over) in methods.items():
        print(f"{label}:", flush=True)
        best, last = [], []
        stem = "".join(ch if ch.isalnum() else "_" for ch in label.split(":")[0].split(",")[0])
        for s in args.seeds:
            r = run(preset, out, f"{stem}_{s}", **sched, **over, **{
                "DISTILLER.STUDENT": args.student, "DISTILLER.TEACHER": args.teacher,
                "DISTILLER.TEACHER_CKPT": ckpt, "EXPERIMENT.SEED": s})
            best.append(r.best_test_acc)
            last.append(r.last_test_acc)
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
        rows.append([label, f"{statistics.mean(best):.2f} ± {sd(best):.2f}", f"{statistics.mean(last):.2f} ± {sd(last):.2f}",
                     len(best)])
    print(f"\nSYNTHETIC data, {args.teacher} -> {args.student}, {e} epochs, seeds {args.seeds}; teacher test "
          f"top-1 {teacher.last_test_acc:.2f} (best {teacher.best_test_acc:.2f})")
    print(tabulate(rows, headers=["method", "best top-1", "last top-1", "n"], tablefmt="github"))


if __name__ == "__main__":
    main()
