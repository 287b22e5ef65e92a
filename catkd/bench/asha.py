"""`asha`: a β grid run to the end vs the same grid under ASHA, on the synthetic data.

Not in `all`: a grid and three ASHA orders take ~25 minutes on 2 cores.
"""
from __future__ import annotations

from catkd.bench.common import run_smoke_study

GOALS = {"asha_epoch_fraction_max": ("<=", 1 / 3), "asha_found_best_all": ("==", True)}


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
        return run_smoke_study(str(path), tmp, name)

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
