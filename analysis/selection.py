"""What a report's table reads: which epoch's accuracy (the reporting rule), which stage's trials,
and the trials grouped into configurations (every setting but the seed)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from analysis.load import Study, settings_columns

# Which epoch's test accuracy a cell shows (the reporting rule: nothing is chosen on the test set).
#   best-val   test top-1 at the epoch of best validation accuracy (default when a study has a
#              validation split)
#   best-test  the best test epoch: the reference's (and the paper's) convention, which chooses the
#              epoch on the test set; default only for studies without a validation split, labelled
#   last       the last epoch
EPOCH_MODES = ("auto", "best-val", "best-test", "last")
_VALUE = {"best-val": "test_acc_at_best_val", "best-test": "best_test_acc", "last": "last_test_acc"}
_LABEL = {"best-val": "test top-1 % at the best-validation epoch",
          "best-test": "top-1 % at the best TEST epoch (the paper's convention: epoch chosen on the test set)",
          "last": "test top-1 % (last epoch)"}


def has_validation(study: Study) -> bool:
    """Did the study hold out a validation split (so epochs and configurations are chosen on it)?"""
    t = study.trials
    return study.spec.get("metric") == "val_acc" or (
        "best_val_acc" in t and pd.to_numeric(t["best_val_acc"], errors="coerce").notna().any())


def resolve_epoch(study: Study, epoch: str) -> str:
    if epoch not in EPOCH_MODES:
        raise ValueError(f"--epoch must be one of {', '.join(EPOCH_MODES)}, not {epoch!r}")
    if epoch == "auto":
        return "best-val" if has_validation(study) else "best-test"
    if epoch == "best-val" and not has_validation(study):
        raise ValueError("--epoch best-val: this study has no validation split")
    return epoch


def value_column(epoch: str) -> str:
    """The trials.parquet column a cell shows for an epoch mode (resolved, not "auto")."""
    try:
        return _VALUE[epoch]
    except KeyError:
        raise ValueError(f"--epoch must be one of {', '.join(EPOCH_MODES[1:])}, not {epoch!r}") from None


def epoch_label(epoch: str) -> str:
    """What a column of an epoch mode (resolved) is called."""
    return _LABEL[epoch]


def select_metric(study: Study) -> str:
    """What picks the best configuration: validation when there is a split, else the reported value."""
    return "best_val_acc" if has_validation(study) else "best_test_acc"


# ----------------------------------------------------------------------------- configurations

def _key(v: Any) -> Any:
    """A hashable, NaN-safe grouping key for one setting value."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, (list, dict)) or hasattr(v, "tolist") and not hasattr(v, "item"):
        return repr(v.tolist() if hasattr(v, "tolist") else v)
    return v.item() if hasattr(v, "item") else v


@dataclass
class Group:
    settings: dict[str, Any]
    trials: pd.DataFrame

    def get(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)


def groups(trials: pd.DataFrame) -> list[Group]:
    """Trials grouped by every setting except the seed (one group = one configuration), in the
    order configurations first appear."""
    cols = settings_columns(trials)
    if trials.empty or not cols:
        return [Group({}, trials)] if not trials.empty else []
    keys = trials[cols].apply(lambda col: col.map(_key)).astype(object)
    keys = keys.where(keys.notna(), None)
    out = []
    for key, sub in trials.groupby([keys[c] for c in cols], dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        out.append(Group({c: (None if isinstance(k, float) and math.isnan(k) else k) for c, k in zip(cols, key)}, sub))
    return out


# ----------------------------------------------------------------------------- rows to report

def rows_to_report(study: Study) -> tuple[pd.DataFrame, str, list[str]]:
    """(trials, stage label, notes): the confirm stage for studies tuned on validation."""
    t = study.trials
    notes: list[str] = []
    stage = t["stage"] if "stage" in t else pd.Series(["search"] * len(t), index=t.index)
    tuned_on_val = study.spec.get("metric") == "val_acc" and bool(study.spec.get("confirm"))
    if tuned_on_val:
        conf = t[stage == "confirm"]
        if len(conf):
            return conf, "confirm", notes
        notes.append("Tuned on validation, but there are no confirm rows yet: the table shows the "
                     "search trials (test accuracy of configurations chosen on validation).")
    return t[stage != "confirm"], "search", notes


def status_notes(trials: pd.DataFrame) -> list[str]:
    if "status" not in trials or trials.empty:
        return []
    counts = trials["status"].value_counts()

    def say(c: pd.Series) -> str:
        return ", ".join(f"{c[s]} {s}" for s in c.index)

    stages = trials["stage"].unique() if "stage" in trials else []
    if len(stages) > 1:  # per stage: a table of one stage must not seem to hold the other's trials
        text = "; ".join(f"{st} {say(trials.loc[trials['stage'] == st, 'status'].value_counts())}" for st in stages)
    else:
        text = say(counts)
    out = [f"Trials: {text}."]
    if "running" in counts:
        out.append("PARTIAL: some trials were still running (study running or killed); "
                   "their numbers are from the epochs done so far.")
    return out


def marker(study: Study) -> str:
    """The title's tags: SYNTHETIC/SMOKE, PARTIAL."""
    tags = []
    if study.smoke:
        tags.append(study.smoke_label)
    if study.partial:
        tags.append("PARTIAL")
    return f" [{', '.join(tags)}]" if tags else ""
