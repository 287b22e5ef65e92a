"""The one trial record: results schema, builder, writer and reader (docs/contracts.md, C6).

This module owns the columns, statuses and setting keys, and is the only code that
writes or reads `results.parquet` / `trials.parquet` (`analysis` reads through `read`).

Each trial records its settings once, from the run config it actually trained with
(`<trial dir>/run/settings.json`, written by the trial: `write_settings`). Tune writes every
reported result of a trial to `<trial dir>/result.json` (in the driver's folder first, copied into
the experiment now and then); the trial writes its own record of each epoch to
`<trial dir>/run/metrics.jsonl` before reporting it. `collect` rebuilds the rows from those files
(deduplicated by trial and epoch, so a trial restored from a checkpoint that re-reports an epoch is
counted once; a diverged trial's marker row is not an epoch); `write` stores them atomically. A study killed at any moment therefore leaves readable files, `--resume` rebuilds
them exactly, and a report of a directory without Parquet files builds the same rows.
"""
from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path
from typing import Any, Iterable, Optional

from catkd.fsutil import atomic_write_bytes, atomic_write_json
from catkd.study.keys import PRESET_KEY, ROLE_KEY, SEED_KEY, SELECT_KEYS, resolve_names, subgrids  # noqa: F401 (PRESET_KEY: re-exported)

# Columns every epoch row carries, in this order, before the loss terms and settings.
EPOCH_COLUMNS = [
    "epoch", "lr", "train_loss", "train_acc", "val_acc", "val_acc_top5", "test_acc", "test_acc_top5",
    "best_val_acc", "best_test_acc", "test_acc_unseen", "epoch_seconds", "eval_seconds", "images_per_second", "trial_cpu_seconds",
    "teacher_images", "teacher_cache_hit_rate", "teacher_test_acc",
]
ID_COLUMNS = ["trial_id", "study", "stage", "seed"]
STATUSES = ("finished", "stopped", "diverged", "error", "running")

# Settings recorded as columns for every trial (plus every fixed key and every dimension of the study).
SETTING_KEYS = [
    "DISTILLER.TYPE", "DISTILLER.TEACHER", "DISTILLER.STUDENT", "SOLVER.LR", "SOLVER.EPOCHS",
    "SOLVER.BATCH_SIZE", "CAT_KD.LOSS.CAT_loss_weight", "CAT_KD.LOSS.CAM_RESOLUTION",
    "CAT_KD.LOSS.CE_WEIGHT", "CAT_KD.IF_NORMALIZE", "CAT_KD.IF_BINARIZE", "CAT_KD.onlyCAT",
    "CAT_KD.IF_OnlyTransferPartialCAMs", "CAT_KD.CAMs_Nums", "CAT_KD.Strategy", "KD.TEMPERATURE",
    "DKD.BETA", "DKD.T", "DATASET.TYPE", "DATASET.REDUCTION", "DATASET.RESERVED_CLASS_NUM",
    "DATASET.RESERVED_RATE", "DATASET.VAL_SIZE", SEED_KEY,
]
SETTINGS_FILE = "settings.json"  # in <trial dir>/run/, written by the trial
ARMS_DIR = "arms"  # <study>/arms/<arm>: one Tune experiment per arm of a study with several searches
# what the driver reads of an experiment kept in object storage (its local copy holds only these):
# the trial files `collect` reads, and the driver's own files that --resume continues from
TRIAL_FILES = {"params.json", "result.json", SETTINGS_FILE, "metrics.jsonl", "error.txt", "error.pkl"}
DRIVER_FILES = {"study.yaml", "stage.json", "optuna.db"}


def trial_file(rel: str) -> bool:
    """A file of the experiment (path relative to it) that `collect` reads."""
    return rel.rsplit("/", 1)[-1] in TRIAL_FILES and "/checkpoint_" not in f"/{rel}"


def driver_file(rel: str) -> bool:
    """A file --resume reads back: the driver's own, the trials', Tune's experiment state."""
    name = rel.rsplit("/", 1)[-1]
    return rel in DRIVER_FILES or trial_file(rel) or (name.startswith("experiment_state-") and name.endswith(".json"))


def setting_keys(spec: dict[str, Any]) -> list[str]:
    """SETTING_KEYS plus the study's fixed keys and dimensions (dotted keys), in that order."""
    keys = list(SETTING_KEYS)
    for k in [*(spec.get("fixed") or {}), *(k for g in subgrids(spec.get("space")) for k in (g or {}))]:
        if k not in keys:
            keys.append(k)
    return keys


def settings_of(cfg: Any, spec: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """{dotted key: value} of the run config a trial trains with (the trial's one record)."""
    row: dict[str, Any] = {k: params[k] for k in (*SELECT_KEYS, ROLE_KEY) if k in params}
    for k in setting_keys(spec):
        if k in SELECT_KEYS:
            continue
        try:
            v = cfg.get(k)
        except AttributeError:
            continue
        row[k] = v.model_dump(mode="json") if hasattr(v, "model_dump") else v
    return row


def write_settings(run_dir: Path, settings: dict[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / SETTINGS_FILE, settings)


def trial_dirs(exp_dir: Path) -> list[Path]:
    """Trial directories of a study: the search stage (one experiment, or one per arm under
    <study>/arms) and, if present, the confirm stage."""
    out = []
    arm_dirs = sorted(p for p in (exp_dir / ARMS_DIR).glob("*") if p.is_dir())
    for stage_dir in (exp_dir, *arm_dirs, exp_dir / "confirm"):
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


def _params(tdir: Path) -> dict[str, Any]:
    """A trial's study parameters from Tune's params.json (grid studies nest them under "grid")."""
    params = json.loads((tdir / "params.json").read_text())
    if isinstance(params.get("grid"), dict):
        params = dict(params["grid"])
    return {k: v for k, v in params.items() if not k.startswith("_")}


def _recorded_settings(tdir: Path, spec: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The trial's own record; before it has written one (not started), its parameters as given."""
    try:
        return json.loads((tdir / "run" / SETTINGS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {**(spec.get("fixed") or {}), **resolve_names(params)}  # params.json of an older version: aliases


def collect(exp_dir: Path, spec: dict[str, Any], study_done: bool,
            shown_as: Optional[str] = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Epoch rows and trial rows of the experiment directory (`spec`: the study as run, a dict).
    shown_as: where the experiment really is when `exp_dir` is a local copy of it (a URI): the
    `trial_dir` column names the trial there."""
    exp_dir = Path(exp_dir)
    study = spec.get("name")
    epoch_rows: list[dict[str, Any]] = []
    trial_rows: list[dict[str, Any]] = []
    for tdir in trial_dirs(exp_dir):
        try:
            params = _params(tdir)
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
        stage = "confirm" if tdir.parent.name == "confirm" and tdir.parent != exp_dir else "search"
        results = _read_results(tdir / "result.json")
        trial_id = results[0]["trial_id"] if results else tdir.name.split("_")[-1]
        settings = _recorded_settings(tdir, spec, params)
        by_epoch: dict[int, dict[str, Any]] = {}
        diverged = False
        for r in results:
            if r.get("status") == "diverged":
                diverged = True
                continue  # the marker row is not an epoch
            if "epoch" in r and "test_acc" in r:
                by_epoch[int(r["epoch"])] = r  # last report of an epoch wins (restored trials)
        last = max(by_epoch, default=0)
        if len(by_epoch) < last:
            # An epoch missing from Tune's rows: Tune writes result.json in the driver's own folder and
            # copies it into the experiment (on a disk or in a bucket) later than the trial saves its
            # checkpoint, so a kill in between loses the rows of epochs whose checkpoint the restored trial
            # continues from (and the restored trial's copy can replace the older rows). The trial's own
            # record of each epoch (written, and put, before the epoch is reported) fills such gaps; not
            # beyond Tune's last epoch: a trial the scheduler stopped may have recorded one more epoch that
            # Tune never took.
            for r in _read_results(tdir / "run" / "metrics.jsonl"):
                if "epoch" in r and "test_acc" in r and int(r["epoch"]) < last:
                    by_epoch.setdefault(int(r["epoch"]), r)
        seed = settings.get(SEED_KEY)
        for ep in sorted(by_epoch):
            r = by_epoch[ep]
            row = {"trial_id": trial_id, "study": study, "stage": stage, "seed": seed}
            row.update({k: _num(r.get(k)) for k in EPOCH_COLUMNS})
            row.update({k: _num(v) for k, v in r.items() if k.startswith("loss_")})
            row["epoch"] = ep
            row.update(settings)
            epoch_rows.append(row)
        budget = settings.get("SOLVER.EPOCHS") or next(
            (r.get("epochs_budget") for r in results if r.get("epochs_budget")), None)
        done = max(by_epoch, default=0)
        error = (tdir / "error.txt").exists() or (tdir / "error.pkl").exists()
        if diverged:
            status = "diverged"
        elif budget and done >= budget:
            status = "finished"
        elif error and study_done:
            status = "error"
        elif study_done:
            status = "stopped"  # stopped early by the scheduler
        else:
            status = "error" if error else "running"
        wall = sum(_num(r.get("epoch_seconds")) or 0.0 for r in by_epoch.values())
        val = [r["val_acc"] for r in by_epoch.values() if finite(r.get("val_acc"))]
        test = [r["test_acc"] for r in by_epoch.values() if finite(r.get("test_acc"))]
        trial_rows.append({
            "trial_id": trial_id, "study": study, "stage": stage, "seed": seed,
            **settings,
            "status": status, "epochs_done": done, "epochs_budget": budget,
            "best_val_acc": max(val) if val else None,
            "best_test_acc": max(test) if test else None,
            "last_test_acc": by_epoch[done]["test_acc"] if done else None,
            "last_val_acc": by_epoch[done].get("val_acc") if done else None,
            "test_acc_at_best_val": _test_at_best_val(by_epoch),
            "teacher_test_acc": by_epoch[done].get("teacher_test_acc") if done else None,
            "best_val_epoch": _best_val_epoch(by_epoch),
            "wall_seconds": _trial_wall(results) or wall,
            # the GPUs Ray gave the trial ("" for none; of its last run when it was restored elsewhere)
            "gpu_ids": next((str(r["gpu_ids"]) for r in reversed(results) if "gpu_ids" in r), None),
            "trial_dir": str(tdir) if shown_as is None else f"{shown_as}/{tdir.relative_to(exp_dir).as_posix()}",
        })
    return epoch_rows, trial_rows


def finite(v: Any) -> bool:
    """A real, finite number (not None, not a bool, not NaN/inf)."""
    try:
        return v is not None and not isinstance(v, bool) and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _best_val_epoch(by_epoch: dict[int, dict[str, Any]]) -> Optional[int]:
    withval = [r for r in by_epoch.values() if finite(r.get("val_acc"))]
    if not withval:
        return None
    return int(max(withval, key=lambda r: (r["val_acc"], -r["epoch"]))["epoch"])


def _test_at_best_val(by_epoch: dict[int, dict[str, Any]]) -> Optional[float]:
    """Test top-1 at the epoch of best validation accuracy (the earliest, on ties)."""
    e = _best_val_epoch(by_epoch)
    return None if e is None else by_epoch[e]["test_acc"]


def _trial_wall(results: list[dict[str, Any]]) -> Optional[float]:
    ts = [r.get("time_total_s") for r in results if r.get("time_total_s") is not None]
    return max(ts) if ts else None


def _num(v: Any) -> Any:
    return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


def to_table(rows: list[dict[str, Any]], first: Iterable[str]):
    import pyarrow as pa

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


def _column(values: list[Any]):
    import pyarrow as pa

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


def write_parquet(path: Path, table) -> None:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(path, buf.getvalue())


def write_results(exp_dir: Path, epoch_rows: list[dict[str, Any]], trial_rows: list[dict[str, Any]]) -> None:
    write_parquet(exp_dir / "results.parquet", to_table(epoch_rows, ID_COLUMNS))
    write_parquet(exp_dir / "trials.parquet", to_table(trial_rows, ID_COLUMNS))


def write(exp_dir: Path, spec: dict[str, Any], study_done: bool, shown_as: Optional[str] = None) -> list[dict[str, Any]]:
    """Rebuild both Parquet files from the trial files; returns the trial rows."""
    rows, trials = collect(exp_dir, spec, study_done, shown_as)
    write_results(Path(exp_dir), rows, trials)
    return trials


def read(exp_dir: Path, spec: dict[str, Any]):
    """(epoch rows, trial rows, source) as pandas DataFrames: the Parquet files, or, when there are
    none yet, the same rows built from the trial files (source "parquet" or "tune")."""
    import pandas as pd

    exp_dir = Path(exp_dir)
    trials_pq, results_pq = exp_dir / "trials.parquet", exp_dir / "results.parquet"
    if trials_pq.is_file():
        epochs = pd.read_parquet(results_pq) if results_pq.is_file() else pd.DataFrame()
        return epochs, pd.read_parquet(trials_pq), "parquet"
    try:
        state = json.loads((exp_dir / "stage.json").read_text())
        done = all(v == "done" for v in state.values()) and bool(state)
    except (OSError, ValueError, AttributeError):
        done = False
    rows, trials = collect(exp_dir, spec, study_done=done)
    # the same cell conversion as the Parquet writer (lists/dicts as JSON text)
    rows = [{k: _cell(v) for k, v in r.items()} for r in rows]
    trials = [{k: _cell(v) for k, v in t.items()} for t in trials]
    return pd.DataFrame(rows), pd.DataFrame(trials), "tune"


class ResultsWriter:
    """Rebuilds results.parquet / trials.parquet from Tune's trial files; throttled while running.
    `spec`: the study as run, a dict. With `mirror` (a catkd.storage.Mirror: `exp_dir` is the local
    copy of an experiment in object storage) each write first fetches the trial files that changed,
    and afterwards puts back every file the driver changed (the Parquet files, stage.json, optuna.db)."""

    def __init__(self, exp_dir: Path, spec: dict[str, Any], every_s: float = 5.0, mirror: Any = None):
        self.exp_dir, self.spec_dict, self.mirror = exp_dir, spec, mirror
        self.every_s = every_s if mirror is None else max(every_s, 15.0)  # a listing and GETs per write
        self.last = 0.0

    @property
    def shown_as(self) -> Optional[str]:
        return None if self.mirror is None else self.mirror.remote.uri

    def local_dir(self, trial_dir: str) -> Path:
        """The local directory of a trial_dir column value."""
        if self.shown_as and trial_dir.startswith(self.shown_as + "/"):
            return self.exp_dir / trial_dir[len(self.shown_as) + 1:]
        return Path(trial_dir)

    def sync(self) -> None:
        """Put back the files the driver changed (object storage only)."""
        if self.mirror is not None:
            self.mirror.push()

    def write(self, study_done: bool = False, force: bool = True) -> list[dict[str, Any]]:
        now = time.time()
        if not force and now - self.last < self.every_s:
            return []
        self.last = now
        if self.mirror is not None:
            self.mirror.pull(trial_file)
        trials = write(self.exp_dir, self.spec_dict, study_done, self.shown_as)
        self.sync()
        return trials
