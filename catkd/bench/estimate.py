"""`estimate`: --dry-run's wall estimate of a --smoke study vs the same study run."""
from __future__ import annotations

from catkd.bench.common import SMOKE_STUDY, run_smoke_study

GOALS: dict = {}  # a ratio, reported: Ray's and the stages' overheads are not modelled


def bench_estimate(study: str = SMOKE_STUDY) -> dict:
    """--dry-run's estimate of a --smoke study's wall vs the wall of the same study run (the smoke
    teacher trained and cached first, untimed): actual / estimated."""
    import io
    import shutil
    import tempfile
    from contextlib import redirect_stdout
    from pathlib import Path

    from catkd.study.estimate import estimate
    from catkd.study.preflight import absolutise, ensure_smoke_teacher
    from catkd.study.load import load_study

    tmp = tempfile.mkdtemp(prefix="catkd-bench-estimate-")
    try:
        spec = load_study(study, smoke=True)
        ensure_smoke_teacher(spec, Path(tmp) / ".cache" / "teachers")
        buf = io.StringIO()
        with redirect_stdout(buf):
            est = estimate(absolutise(spec)[0])
        wall, rows = run_smoke_study(study, tmp, "estimate")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    est_s = est["wall_hours"] * 3600
    train_s = sum(r["epoch_seconds"] + r["eval_seconds"] for r in rows) / est["concurrency"]
    print(f"estimate: {study} --smoke: estimated {est_s:.0f} s wall ({est['trial_epochs_expected']:.0f} expected "
          f"trial-epochs), measured {wall:.0f} s ({len(rows)} trial-epochs; the trials' own train + eval time / "
          f"{est['concurrency']} slots: {train_s:.0f} s): actual / estimate {wall / est_s:.2f}")
    return {"estimate_wall_s": est_s, "actual_wall_s": wall, "actual_over_estimate": wall / est_s,
            "actual_trial_time_over_estimate": train_s / est_s}
