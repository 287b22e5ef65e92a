"""CAT-KD vs the same student trained alone, on the embedded SYNTHETIC dataset (CPU-sized).

Trains a teacher once, then the student alone and with CAT-KD (and KD, for reference) over the
same seeds, and prints test top-1 (best and last epoch) as mean +- std. The numbers recorded in
the README come from this script. Usage:

    python scripts/compare_synthetic.py [--seeds 0 1 2] [--epochs 30] [--out results/compare]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from tabulate import tabulate

from catkd.config import build_config
from catkd.engine import Trainer

DATA = {"DATASET.TYPE": "synthetic", "RUN.PROGRESS": "none", "SOLVER.BATCH_SIZE": 64,
        "SOLVER.WEIGHT_DECAY": 5e-4, "LOG.SAVE_CHECKPOINT_FREQ": 0}


def run(out: Path, name: str, **over) -> "object":
    cfg = build_config({}, "<compare>", {**DATA, "LOG.PREFIX": str(out), "EXPERIMENT.NAME": name, **over}, quiet=True)
    t0 = time.time()
    r = Trainer(cfg, log=lambda s: None).fit()
    print(f"  {name}: {r.status}, best {r.best_test_acc:.2f}, last {r.last_test_acc:.2f} ({time.time() - t0:.0f}s)",
          flush=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--teacher", default="resnet20")
    ap.add_argument("--student", default="resnet8")
    ap.add_argument("--betas", type=float, nargs="+", default=[50.0])
    ap.add_argument("--out", default="results/compare_synthetic")
    args = ap.parse_args()
    out = Path(args.out)
    e = args.epochs
    sched = {"SOLVER.EPOCHS": e, "SOLVER.LR_DECAY_STAGES": [int(e * 0.6), int(e * 0.8)], "SOLVER.LR": 0.05}
    print(f"teacher {args.teacher}, {e} epochs (SYNTHETIC data):", flush=True)
    teacher = run(out, f"teacher_{args.teacher}", **sched, **{"DISTILLER.TYPE": "NONE", "DISTILLER.STUDENT": args.teacher})
    ckpt = str(out / f"teacher_{args.teacher}" / f"ckpt_epoch_{e}.pth")
    methods = {
        "student alone": {"DISTILLER.TYPE": "NONE"},
        "KD": {"DISTILLER.TYPE": "KD"},
    }
    for b in args.betas:
        methods[f"CAT-KD (β={b:g}, R=2, normalized)"] = {
            "DISTILLER.TYPE": "CAT_KD", "CAT_KD.LOSS.CAT_loss_weight": b, "CAT_KD.LOSS.CAM_RESOLUTION": 2,
            "CAT_KD.IF_NORMALIZE": True}
    rows = []
    for label, over in methods.items():
        print(f"{label}:", flush=True)
        best, last = [], []
        for s in args.seeds:
            r = run(out, f"{label.split(',')[0].replace(' ', '_').replace('(', '').replace('=', '')}_{s}", **sched, **over, **{
                "DISTILLER.STUDENT": args.student, "DISTILLER.TEACHER": args.teacher,
                "DISTILLER.TEACHER_CKPT": ckpt, "EXPERIMENT.SEED": s})
            best.append(r.best_test_acc)
            last.append(r.last_test_acc)
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
        rows.append([label, f"{statistics.mean(best):.2f} ± {sd(best):.2f}", f"{statistics.mean(last):.2f} ± {sd(last):.2f}",
                     len(best)])
    print(f"\nSYNTHETIC data, {args.teacher} -> {args.student}, {e} epochs; teacher test top-1 "
          f"{teacher.last_test_acc:.2f} (best {teacher.best_test_acc:.2f})")
    print(tabulate(rows, headers=["method", "best top-1", "last top-1", "n"], tablefmt="github"))


if __name__ == "__main__":
    main()
