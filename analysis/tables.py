"""The table each study answers with: mean ± std (n) over seeds, published numbers beside ours.

Every function takes a loaded `analysis.load.Study` and returns `Table`s; `render` turns them into
Markdown, LaTeX (booktabs) or CSV. Published numbers come only from `analysis/paper.yaml`.
"""
from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import pandas as pd
from tabulate import tabulate

from analysis.load import Study, load_paper, settings_columns
from catkd.study.results import finite

BETA = "CAT_KD.LOSS.CAT_loss_weight"
RES = "CAT_KD.LOSS.CAM_RESOLUTION"
BIN = "CAT_KD.IF_BINARIZE"
PARTIAL = "CAT_KD.IF_OnlyTransferPartialCAMs"
NUMS = "CAT_KD.CAMs_Nums"
STRATEGY = "CAT_KD.Strategy"
TYPE, TEACHER, STUDENT = "DISTILLER.TYPE", "DISTILLER.TEACHER", "DISTILLER.STUDENT"
ONLY_CAT = "CAT_KD.onlyCAT"
RATE, CLASSES = "DATASET.RESERVED_RATE", "DATASET.RESERVED_CLASS_NUM"



@dataclass
class Table:
    name: str          # file stem (csv) and anchor
    title: str
    headers: list[str]
    rows: list[list[Any]]
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- statistics

def stats(values: Iterable[Any]) -> tuple[Optional[float], Optional[float], int]:
    """(mean, std with ddof=1 or None when n < 2, n) over the finite values."""
    vals = [float(v) for v in values if _finite(v)]
    if not vals:
        return None, None, 0
    mean = statistics.fmean(vals)
    std = statistics.stdev(vals) if len(vals) > 1 else None
    return mean, std, len(vals)


def cell(values: Iterable[Any], digits: int = 2) -> str:
    """`mean ± std (n)`; n = 1 gives `mean (1)`; no value gives `-`."""
    mean, std, n = stats(values)
    if n == 0:
        return "-"
    if std is None:
        return f"{mean:.{digits}f} ({n})"
    return f"{mean:.{digits}f} ± {std:.{digits}f} ({n})"


def welch(a: Iterable[Any], b: Iterable[Any]) -> tuple[Optional[float], Optional[tuple[float, float]], int, int]:
    """(mean(a) - mean(b), its 95 % Welch confidence interval or None, n_a, n_b) over the finite values.

    No interval when either side has fewer than 2 values, or both have zero spread."""
    from scipy import stats as st

    xa = [float(v) for v in a if _finite(v)]
    xb = [float(v) for v in b if _finite(v)]
    if not xa or not xb:
        return None, None, len(xa), len(xb)
    diff = statistics.fmean(xa) - statistics.fmean(xb)
    if len(xa) < 2 or len(xb) < 2 or (statistics.stdev(xa) == 0 and statistics.stdev(xb) == 0):
        return diff, None, len(xa), len(xb)
    ci = st.ttest_ind(xa, xb, equal_var=False).confidence_interval(0.95)
    return diff, (float(ci.low), float(ci.high)), len(xa), len(xb)


DIFF_HEADERS = ["comparison", "difference of means", "95 % CI (Welch)", "n", "published difference",
                "published inside our CI"]


def difference_row(label: str, a: Iterable[Any], b: Iterable[Any],
                   published: Optional[float] = None) -> list[str]:
    """One row of a differences table: ours with its interval, the published difference beside it."""
    diff, ci, na, nb = welch(a, b)
    if diff is None:
        return [label, "-", "-", f"{na} vs {nb}", _fmt_pub(published), "-"]
    interval = f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "no interval (n < 2 or no spread)"
    inside = "-" if published is None else ("no interval" if ci is None else
                                             ("yes" if ci[0] <= published <= ci[1] else "no"))
    return [label, f"{diff:+.2f}", interval, f"{na} vs {nb}", _fmt_pub(published), inside]


def _fmt_pub(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:+.2f}"


_finite = finite  # one definition, with the trial record


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


def _select_metric(study: Study) -> str:
    """What picks the best configuration: validation when there is a split, else the reported value."""
    return "best_val_acc" if has_validation(study) else "best_test_acc"


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
    tags = []
    if study.smoke:
        tags.append("SYNTHETIC/SMOKE")
    if study.partial:
        tags.append("PARTIAL")
    return f" [{', '.join(tags)}]" if tags else ""


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _epoch_label(epoch: str) -> str:
    return _LABEL[epoch]


# ----------------------------------------------------------------------------- layouts

def pivot(gs: list[Group], value: str, row_of: Callable[[Group], tuple], col_of: Callable[[Group], Any],
          row_headers: list[str], name: str, title: str, col_sort: Optional[Callable] = None) -> Table:
    """Rows x columns of `mean ± std (n)` cells (several groups landing in one cell are pooled)."""
    long = pd.DataFrame([{"row": row_of(g), "col": col_of(g), "v": v}
                         for g in gs for v in g.trials[value].tolist()], columns=["row", "col", "v"])
    if long.empty:
        return Table(name, title, row_headers, [])
    wide = long.pivot_table(index="row", columns="col", values="v", aggfunc=lambda v: cell(v),
                            dropna=False, sort=False)
    cols = sorted(wide.columns, key=col_sort or _sortkey)
    index = sorted(wide.index, key=lambda r: tuple(_sortkey(x) for x in r))
    present = set(zip(long["row"], long["col"]))
    rows = [[_fmt(x) for x in r] + [wide.at[r, c] if (r, c) in present else "-" for c in cols] for r in index]
    return Table(name, title, row_headers + [_fmt(c) for c in cols], rows)


def _sortkey(v: Any) -> tuple:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, str(v))




def build(study: Study, epoch: str = "auto", paper: Optional[dict[str, Any]] = None) -> list[Table]:
    """All tables of a study; the first title carries the SYNTHETIC/SMOKE and PARTIAL markers.

    epoch "auto": test top-1 at the best-validation epoch when the study has a validation split;
    otherwise the paper's best-test-epoch convention (labelled), with the last epoch's tables beside.
    """
    paper = load_paper() if paper is None else paper
    mode = resolve_epoch(study, epoch)
    tables = _tables_for(study, mode, paper)
    if epoch == "auto" and mode == "best-test" and not study.trials.empty:
        last = _tables_for(study, "last", paper)
        for t in last:
            t.name += "_last"
            t.title += " — last epoch"
        tables += last
    cache = teacher_cache_table(study)
    if cache is not None:
        tables.append(cache)
    mark = marker(study)
    for t in tables:
        t.title += mark
    tables[0].notes = study.notes + status_notes(study.trials) + [_rule_note(mode)] + tables[0].notes
    return tables


def teacher_cache_table(study: Study) -> Optional[Table]:
    """What the teacher cache saved, per stage: teacher images forwarded vs images trained on (what
    the live teacher would have forwarded). None when no epoch carries the counts."""
    e = study.epochs
    if e.empty or "teacher_images" not in e or e["teacher_images"].isna().all():
        return None
    e = e[e["teacher_images"].notna()]
    rows = []
    for stage, g in e.groupby("stage", sort=False):
        seen = float((g["images_per_second"] * g["epoch_seconds"]).round().sum())
        fwd = float(g["teacher_images"].sum())
        rows.append([stage, g["trial_id"].nunique(), len(g), f"{fwd:,.0f}", f"{seen:,.0f}",
                     f"{fwd / seen:.3f}" if seen else "-"])
    notes = []
    from catkd.teacher_cache.prefetch import totals

    ahead = totals(study.path)  # the driver's prefetch from idle CPU time (catkd.teacher_cache.prefetch)
    if ahead is not None:
        n = float(ahead.get("teacher_images") or 0)
        rows.append(["prefetch (idle CPU)", "-", "-", f"{n:,.0f}", "-", "-"])
        notes.append("prefetch: teacher images forwarded ahead of the trials, at the lowest CPU priority, for the "
                     "seeds' views; the study's teacher forwards are the column's sum.")
    return Table("teacher_cache", f"{study.name}: teacher forwards (the teacher cache)",
                 ["stage", "trials", "trial-epochs", "teacher images forwarded", "images trained on",
                  "share forwarded"], rows,
                 ["Images trained on = what the live teacher would have forwarded; the rest came from the "
                  "teacher cache (a trial with RUN.TEACHER_CACHE off forwards every image)."] + notes)


def _rule_note(mode: str) -> str:
    if mode == "best-val":
        return ("Cells: test top-1 at each trial's best-validation epoch; configurations chosen on "
                "validation. Nothing here is chosen on the test set.")
    if mode == "best-test":
        return ("Cells: the best TEST epoch, the reference's and the paper's convention (the epoch is "
                "chosen on the test set, which flatters); the last epoch's tables follow.")
    return "Cells: test top-1 at the last epoch."


def _tables_for(study: Study, epoch: str, paper: dict[str, Any]) -> list[Table]:
    from analysis.layouts import LAYOUTS, layout_of

    if study.trials.empty:
        return [Table("empty", f"{study.name}: no trials yet", [], [])]
    return LAYOUTS[layout_of(study)](study, epoch, paper)


# ----------------------------------------------------------------------------- rendering

def render(tables: list[Table], fmt: str) -> str:
    """Markdown or LaTeX text of all tables (CSV: see `write_csv`)."""
    parts = []
    for t in tables:
        if fmt == "md":
            body = tabulate(t.rows, headers=t.headers, tablefmt="github", disable_numparse=True)
            notes = "".join(f"\n- {n}" for n in t.notes)
            parts.append(f"## {t.title}\n\n{body}\n{notes}\n")
        elif fmt == "latex":
            body = tabulate(t.rows, headers=t.headers, tablefmt="latex_booktabs", disable_numparse=True)
            notes = "".join(f"% {n}\n" for n in t.notes)
            parts.append(f"% {t.title}\n{notes}{body}\n")
        else:
            raise ValueError(f"unknown format {fmt!r}")
    return "\n".join(parts)


def csv_text(t: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(t.headers)
    w.writerows(t.rows)
    return buf.getvalue()
