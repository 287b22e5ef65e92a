"""Read a study's experiment directory: study.yaml, then the rows through catkd's trial record.

`catkd.study.results.read` is the one reader: the Parquet files, or, when they are missing, the
same rows built by the same builder from the trial files (Tune's `params.json` / `result.json`
and each trial's own `run/settings.json`).
"""
from __future__ import annotations

import shutil
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import yaml

# The results schema and the study file's setting names: catkd's own definitions.
from catkd.study import results as record
from catkd.study.keys import resolve_keys, subgrids
from catkd.study.results import SEED_KEY
# Columns of trials.parquet that are not settings.
NON_SETTINGS = {
    "trial_id", "study", "stage", "seed", "status", "epochs_done", "epochs_budget", "best_val_acc",
    "best_test_acc", "last_test_acc", "last_val_acc", "test_acc_at_best_val", "best_val_epoch", "wall_seconds",
    "trial_dir", "gpu_ids", "DISTILLER.TEACHER_CKPT", SEED_KEY,
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
    uri: Optional[str] = None  # the experiment in object storage that `path` is a local copy of
    _copy: Any = field(default=None, repr=False, compare=False)  # removes that local copy

    def close(self) -> None:
        """Remove the local copy of a study read from object storage (also done when the Study is
        garbage-collected, and at exit); nothing for a study on a disk."""
        if self._copy is not None:
            self._copy()

    @property
    def results(self) -> pd.DataFrame:
        """One row per trial per reported epoch (results.parquet): the same frame as `epochs`."""
        return self.epochs

    @property
    def name(self) -> str:
        return str(self.spec.get("name") or (self.uri or str(self.path)).rstrip("/").rsplit("/", 1)[-1])

    @property
    def smoke(self) -> bool:
        return bool(self.spec.get("smoke_mode"))

    @property
    def smoke_label(self) -> str:
        """What a smoke run's tables are labelled: its data was synthetic, or a small folder of JPEGs."""
        jpeg = ((self.spec.get("smoke") or {}).get("data")) == "jpeg"
        return "SMOKE, small JPEG folder" if jpeg else "SYNTHETIC/SMOKE"

    @property
    def partial(self) -> bool:
        return "status" in self.trials and bool((self.trials["status"] == "running").any())

    def searches(self) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """(label, constants, space as study.yaml writes it) of each search of a searcher-driven
        study: one per method in tuned_baselines, one for beta_sweep; [] for grids and old files."""
        if (self.spec.get("search") or {}).get("algorithm") not in ("optuna", "random"):
            return []
        from catkd.study.spec import StudySpec, arms

        try:
            found = arms(StudySpec.model_validate(self.spec))
        except Exception:  # noqa: BLE001 - a study.yaml of another version: read it as one search
            return []
        return [(a.label, a.constants, {k: d.model_dump(exclude_none=True) for k, d in a.space.items()})
                for a in found]

    def space_keys(self) -> list[str]:
        """Dotted keys of the searched dimensions (sub-grids merged), in file order."""
        out: list[str] = []
        for g in subgrids(self.spec.get("space")):
            out += [k for k in (g or {}) if k not in out]
        return out


def load(exp_dir: str | Path, checkpoints: bool = False) -> Study:
    """The study of an experiment directory, or of an experiment in object storage (s3://...: its
    tables and trial records are fetched into a local scratch copy first; with `checkpoints` also the
    trials' checkpoints and student weights, which the CAM pictures need)."""
    from catkd.storage import StorageError, is_uri

    if is_uri(exp_dir):
        try:
            return _load_uri(str(exp_dir), checkpoints)
        except StorageError as e:
            raise NotAStudy(str(e)) from None
    path = Path(exp_dir)
    if not path.is_dir():
        raise NotAStudy(f"{path}: not a directory")
    spec_file = path / "study.yaml"
    spec: dict[str, Any] = {}
    if spec_file.is_file():
        spec = yaml.safe_load(spec_file.read_text()) or {}
        # study.yaml holds dotted keys; one written before settings were named once may hold aliases
        spec = resolve_keys(spec, str(spec_file), strict=False)[0] if isinstance(spec, dict) else {}
    epochs, trials, source = record.read(path, spec)
    if source == "tune" and trials.empty and not spec:
        raise NotAStudy(f"{path}: no study.yaml, no trials.parquet and no Tune trial files "
                        "(params.json/result.json): not a study's experiment directory")
    study = Study(path, spec, trials, epochs, source)
    if source == "tune":
        study.notes.append("Parquet files missing: rows rebuilt from the trial files by catkd's own builder.")
    if not spec:
        study.notes.append("no study.yaml: study name from the directory, generic table")
    return study


def _load_uri(uri: str, checkpoints: bool) -> Study:
    from catkd.storage import Mirror, check, location, scratch_dir

    where = location(uri)
    check(where)
    if not where.exists():
        raise NotAStudy(f"{uri}: nothing there")
    mirror = Mirror(scratch_dir("report"), where)
    try:
        small = lambda rel: not rel.startswith("report/") and "/checkpoint_" not in f"/{rel}" and not rel.endswith(".pth")  # noqa: E731
        mirror.pull((lambda rel: not rel.startswith("report/")) if checkpoints else small)
        study = load(mirror.local)
    except BaseException:
        mirror.remove_local()
        raise
    # the local copy lives as long as the Study that reads it (a notebook's), or until `close()`
    study._copy = weakref.finalize(study, shutil.rmtree, mirror.local, ignore_errors=True)
    study.uri = where.uri
    if "trial_dir" in study.trials:  # the trials' folders in the local copy
        study.trials["trial_dir"] = study.trials["trial_dir"].astype(str).str.replace(
            where.uri, str(mirror.local), regex=False)
    return study


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
