"""Study results as Parquet (docs/contracts.md, C6), derived from Tune's own per-trial files.

Tune writes every reported result of a trial to `<trial dir>/result.json` as it arrives, and its
parameters to `params.json`. `results.parquet` and `trials.parquet` are rebuilt from those files
(deduplicated by trial and epoch, so a trial restored from a checkpoint that re-reports an epoch
is counted once), then written atomically. A study killed at any moment therefore leaves readable
files, and `--resume` rebuilds them exactly.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from catkd.fsutil import atomic_write_bytes

# Columns every epoch row carries (docs/contracts.md, C6), in this order, before the loss terms and settings.
EPOCH_COLUMNS = [
    "epoch", "lr", "train_loss", "train_acc", "val_acc", "val_acc_top5", "test_acc", "test_acc_top5",
    "best_val_acc", "best_test_acc", "test_acc_unseen", "epoch_seconds", "eval_seconds", "images_per_second",
]
STATUSES = ("finished", "stopped", "diverged", "error", "running")


def trial_dirs(exp_dir: Path) -> list[Path]:
    """Trial directories of a study: the search stage and, if present, the confirm stage."""
    out = []
    for stage_dir in (exp_dir, exp_dir / "confirm"):
        if stage_dir.is_dir():
            out += sorted(p.parent for p in stage_dir.glob("*/params.json"))
    return out


def _read_results(path: Path) -> list[dict[str, Any]]:
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill: the rest of the file is still good
    return rows


def collect(
    exp_dir: Path,
    settings_of: "callable",
    study: str,
    epochs_of: "callable",
    study_done: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Epoch rows and trial rows of the experiment directory.

    settings_of(params) -> {dotted key: value} (the trial's resolved settings);
    epochs_of(params) -> the trial's full epoch budget (to tell finished from stopped early).
    """
    epoch_rows: list[dict[str, Any]] = []
    trial_rows: list[dict[str, Any]] = []
    for tdir in trial_dirs(exp_dir):
        try:
            params = json.loads((tdir / "params.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        stage = "confirm" if tdir.parent.name == "confirm" and tdir.parent != exp_dir else "search"
        results = _read_results(tdir / "result.json")
        trial_id = results[0]["trial_id"] if results else tdir.name.split("_")[-1]
        settings = settings_of(params)
        by_epoch: dict[int, dict[str, Any]] = {}
        diverged = False
        for r in results:
            if r.get("status") == "diverged":
                diverged = True
                continue
            if "epoch" in r and "test_acc" in r:
                by_epoch[int(r["epoch"])] = r  # last report of an epoch wins (restored trials)
        rows = []
        for ep in sorted(by_epoch):
            r = by_epoch[ep]
            row = {"trial_id": trial_id, "study": study, "stage": stage, "seed": settings.get("EXPERIMENT.SEED")}
            row.update({k: _num(r.get(k)) for k in EPOCH_COLUMNS})
            row.update({k: _num(v) for k, v in r.items() if k.startswith("loss_")})
            row["epoch"] = ep
            row.update(settings)
            rows.append(row)
        epoch_rows += rows
        budget = epochs_of(params)
        done = max(by_epoch, default=0)
        error = (tdir / "error.txt").exists() or (tdir / "error.pkl").exists()
        if diverged:
            status = "diverged"
        elif done >= budget:
            status = "finished"
        elif error and study_done:
            status = "error"
        elif study_done:
            status = "stopped"  # stopped early by the scheduler
        else:
            status = "error" if error else "running"
        wall = sum(_num(r.get("epoch_seconds")) or 0.0 for r in by_epoch.values())
        val = [r["val_acc"] for r in by_epoch.values() if r.get("val_acc") is not None]
        test = [r["test_acc"] for r in by_epoch.values()]
        trial_rows.append({
            "trial_id": trial_id, "study": study, "stage": stage, "seed": settings.get("EXPERIMENT.SEED"),
            **settings,
            "status": status, "epochs_done": done, "epochs_budget": budget,
            "best_val_acc": max(val) if val else None,
            "best_test_acc": max(test) if test else None,
            "last_test_acc": by_epoch[done]["test_acc"] if done else None,
            "last_val_acc": by_epoch[done].get("val_acc") if done else None,
            "test_acc_at_best_val": _test_at_best_val(by_epoch),
            "wall_seconds": _trial_wall(results) or wall,
            "trial_dir": str(tdir),
        })
    return epoch_rows, trial_rows


def _test_at_best_val(by_epoch: dict[int, dict[str, Any]]) -> Optional[float]:
    withval = [r for r in by_epoch.values() if r.get("val_acc") is not None]
    if not withval:
        return None
    best = max(withval, key=lambda r: (r["val_acc"], -r["epoch"]))
    return best["test_acc"]


def _trial_wall(results: list[dict[str, Any]]) -> Optional[float]:
    ts = [r.get("time_total_s") for r in results if r.get("time_total_s") is not None]
    return max(ts) if ts else None


def _num(v: Any) -> Any:
    return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


def to_table(rows: list[dict[str, Any]], first: Iterable[str]) -> pa.Table:
    cols: list[str] = [c for c in first]
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    data = {c: [_cell(r.get(c)) for r in rows] for c in cols}
    return pa.table({c: _column(v) for c, v in data.items()})


def _cell(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return v


def _column(values: list[Any]) -> pa.Array:
    kinds = {type(v) for v in values if v is not None}
    if kinds == {int}:
        return pa.array(values, pa.int64())
    if kinds <= {int, float}:
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    if kinds == {bool}:
        return pa.array(values, pa.bool_())
    if not kinds:
        return pa.array(values, pa.null())
    return pa.array([None if v is None else str(v) for v in values], pa.string())


def write_parquet(path: Path, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(path, buf.getvalue())


def write_results(exp_dir: Path, epoch_rows: list[dict[str, Any]], trial_rows: list[dict[str, Any]]) -> None:
    write_parquet(exp_dir / "results.parquet", to_table(epoch_rows, ["trial_id", "study", "stage", "seed"]))
    write_parquet(exp_dir / "trials.parquet", to_table(trial_rows, ["trial_id", "study", "stage", "seed"]))
