"""`study`: how much of the machine a --smoke study leaves to its trials.

Ray's start-up, imports, scheduling, stage barriers and checkpoints all cost wall time the trials do
not use; this measures what is left for them, on beta_sweep --smoke after an untimed warm-up run.
"""
from __future__ import annotations

import statistics

from catkd.bench.common import SMOKE_STUDY, run_smoke_study

GOALS = {"utilization_cpu": (">=", 0.85)}


def bench_study(study: str = SMOKE_STUDY, repeats: int = 2) -> dict:
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
        run_smoke_study(study, tmp, "warm")  # trains and caches the smoke teacher: not timed
        for i in range(repeats):
            wall, rows = run_smoke_study(study, tmp, f"bench{i}")
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
