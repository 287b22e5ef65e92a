"""Read a study's experiment directory: study.yaml, results.parquet, trials.parquet.

When the Parquet files are missing, the rows are rebuilt from Tune's per-trial `params.json` and
`result.json` files (search trials in the experiment directory, confirm trials under `confirm/`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import yaml

# The study-file aliases and the settings recorded per trial: catkd's own definitions.
from catkd.study.runner import SETTING_KEYS
from catkd.study.spec import ALIASES

SEED_KEY = "EXPERIMENT.SEED"
# Columns of trials.parquet that are not settings.
NON_SETTINGS = {
    "trial_id", "study", "stage", "seed", "status", "epochs_done", "epochs_budget", "best_val_acc",
    "best_test_acc", "last_test_acc", "last_val_acc", "test_acc_at_best_val", "wall_seconds",
    "trial_dir", "DISTILLER.TEACHER_CKPT", SEED_KEY,
}


class NotAStudy(Exception):
    """The directory holds neither study.yaml nor result files."""


@dataclass
class Study:
    path: Path
    spec: dict[str, Any]
    trials: pd.DataFrame
    epochs: pd.DataFrame
    source: str = "parquet"  # parquet | tune
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.spec.get("name") or self.path.name)

    @property
    def smoke(self) -> bool:
        return bool(self.spec.get("smoke_mode"))

    @property
    def partial(self) -> bool:
        return "status" in self.trials and bool((self.trials["status"] == "running").any())

    def space_keys(self) -> list[str]:
        """Dotted keys of the searched dimensions (sub-grids merged), in file order."""
        space = self.spec.get("space") or {}
        grids = space if isinstance(space, list) else [space]
        out: list[str] = []
        for g in grids:
            for k in (g or {}):
                k = canonical(k)
                if k not in out:
                    out.append(k)
        return out


def canonical(key: str) -> str:
    return ALIASES.get(key, key)


def _canonical_value(key: str, value: Any) -> Any:
    if isinstance(value, (list, dict)):
        return json.dumps(value)  # as the Parquet writer stores them
    if key == "CAT_KD.Strategy" and isinstance(value, str):
        return {"top": 0, "lowest": 1}.get(value, value)
    return value


def load(exp_dir: str | Path) -> Study:
    path = Path(exp_dir)
    if not path.is_dir():
        raise NotAStudy(f"{path}: not a directory")
    spec_file = path / "study.yaml"
    spec: dict[str, Any] = {}
    if spec_file.is_file():
        spec = yaml.safe_load(spec_file.read_text()) or {}
    trials_pq, results_pq = path / "trials.parquet", path / "results.parquet"
    if trials_pq.is_file():
        trials = pd.read_parquet(trials_pq)
        epochs = pd.read_parquet(results_pq) if results_pq.is_file() else pd.DataFrame()
        study = Study(path, spec, trials, epochs, "parquet")
    else:
        epochs, trials = from_tune(path, spec)
        if trials.empty and not spec:
            raise NotAStudy(f"{path}: no study.yaml, no trials.parquet and no Tune trial files "
                            "(params.json/result.json): not a study's experiment directory")
        study = Study(path, spec, trials, epochs, "tune",
                      ["Parquet files missing: rows rebuilt from Tune's result.json / params.json."])
    if not spec:
        study.notes.append("no study.yaml: study name from the directory, generic table")
    return study


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
    return rows


def from_tune(exp_dir: Path, spec: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(epoch rows, trial rows) rebuilt from Tune's per-trial files."""
    fixed = {canonical(k): _canonical_value(canonical(k), v) for k, v in (spec.get("fixed") or {}).items()}
    budget_default = fixed.get("SOLVER.EPOCHS")
    try:  # the runner's record of which stages ended
        stages_done = {k for k, v in json.loads((exp_dir / "stage.json").read_text()).items() if v == "done"}
    except (OSError, ValueError, AttributeError):
        stages_done = set()
    epoch_rows: list[dict[str, Any]] = []
    trial_rows: list[dict[str, Any]] = []
    for stage, stage_dir in (("search", exp_dir), ("confirm", exp_dir / "confirm")):
        if not stage_dir.is_dir():
            continue
        for pfile in sorted(stage_dir.glob("*/params.json")):
            tdir = pfile.parent
            try:
                params = json.loads(pfile.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            # grid studies nest the parameters under "grid"; searchers give them flat
            params = dict(params["grid"]) if isinstance(params.get("grid"), dict) else \
                {k: v for k, v in params.items() if not k.startswith("_")}
            # what catkd resolved (names canonical, as the config was built) wins over the raw values
            settings = {**fixed, **{canonical(k): _canonical_value(canonical(k), v) for k, v in params.items()},
                        **_resolved(spec, params)}
            results = _read_jsonl(tdir / "result.json")
            trial_id = results[0].get("trial_id") if results else tdir.name.split("_")[-1]
            by_epoch: dict[int, dict[str, Any]] = {}
            diverged = False
            for r in results:
                if r.get("status") == "diverged":
                    diverged = True
                if "epoch" in r and "test_acc" in r:
                    by_epoch[int(r["epoch"])] = r
            for ep in sorted(by_epoch):
                r = by_epoch[ep]
                row = {"trial_id": trial_id, "study": spec.get("name"), "stage": stage,
                       "seed": settings.get(SEED_KEY)}
                row.update({k: v for k, v in r.items() if not isinstance(v, (dict, list))})
                row.update(settings)
                row["epoch"] = ep
                epoch_rows.append(row)
            done = max(by_epoch, default=0)
            budget = next((r.get("epochs_budget") for r in results if r.get("epochs_budget")), budget_default)
            last_status = results[-1].get("status") if results else None
            if diverged:
                status = "diverged"
            elif budget and done >= budget:
                status = "finished"
            elif (tdir / "error.txt").exists() or (tdir / "error.pkl").exists():
                status = "error"
            elif last_status in ("finished", "stopped"):
                status = last_status
            elif stage in stages_done or (results and results[-1].get("done")):
                status = "stopped"  # ended before its budget: stopped early by the scheduler
            else:
                status = "running"
            val = [r["val_acc"] for r in by_epoch.values() if _finite(r.get("val_acc"))]
            test = [r["test_acc"] for r in by_epoch.values() if _finite(r.get("test_acc"))]
            trial_rows.append({
                "trial_id": trial_id, "study": spec.get("name"), "stage": stage,
                "seed": settings.get(SEED_KEY), **settings,
                "status": status, "epochs_done": done, "epochs_budget": budget,
                "best_val_acc": max(val) if val else None,
                "best_test_acc": max(test) if test else None,
                "last_test_acc": by_epoch[done].get("test_acc") if done else None,
                "last_val_acc": by_epoch[done].get("val_acc") if done else None,
                "wall_seconds": max((r.get("time_total_s") or 0 for r in results), default=None),
                "trial_dir": str(tdir),
            })
    return pd.DataFrame(epoch_rows), pd.DataFrame(trial_rows)




def _resolved(spec: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The trial's full settings (base or preset + fixed + params) when catkd can resolve them;
    {} otherwise (then only fixed + params are known)."""
    base = params.get("preset") or spec.get("base")
    if not base:
        return {}
    try:
        from catkd.config import _flatten, build_config, read_yaml, resolve_preset

        over = {canonical(k): v for k, v in (spec.get("fixed") or {}).items()}
        over.update({canonical(k): v for k, v in params.items() if k != "preset"})
        if over.get("CAT_KD.Strategy") in ("top", "lowest"):
            over["CAT_KD.Strategy"] = {"top": 0, "lowest": 1}[over["CAT_KD.Strategy"]]
        cfg = build_config(read_yaml(resolve_preset(base)), str(base), over, quiet=True)
        flat = _flatten(cfg.model_dump())
    except Exception:  # noqa: BLE001 - analysis must work without (or with a changed) catkd
        return {}
    out = {k: _canonical_value(k, flat[k]) for k in SETTING_KEYS if k in flat}
    if "preset" in params:
        out["preset"] = params["preset"]
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def settings_columns(trials: pd.DataFrame) -> list[str]:
    """Setting columns (everything except ids, metrics, status and the seed)."""
    return [c for c in trials.columns if c not in NON_SETTINGS]


def varied_columns(trials: pd.DataFrame) -> list[str]:
    """Settings that take more than one value across the trials."""
    out = []
    for c in settings_columns(trials):
        if trials[c].astype(str).nunique(dropna=False) > 1:
            out.append(c)
    return out


def classes_of(trials: pd.DataFrame, default: int = 100) -> int:
    """Number of classes of the dataset (synthetic: its NUM_CLASSES; otherwise CIFAR-100)."""
    col = "DATASET.SYNTHETIC.NUM_CLASSES"
    if col in trials and "DATASET.TYPE" in trials and (trials["DATASET.TYPE"] == "synthetic").any():
        v = trials[col].dropna()
        if len(v):
            return int(v.iloc[0])
    return default


def paper_file() -> Path:
    return Path(__file__).with_name("paper.yaml")


def load_paper(path: Optional[str | Path] = None) -> dict[str, Any]:
    return yaml.safe_load(Path(path or paper_file()).read_text()) or {}
