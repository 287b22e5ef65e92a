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

from analysis.load import Study, classes_of, load_paper, settings_columns, varied_columns

BETA = "CAT_KD.LOSS.CAT_loss_weight"
RES = "CAT_KD.LOSS.CAM_RESOLUTION"
BIN = "CAT_KD.IF_BINARIZE"
PARTIAL = "CAT_KD.IF_OnlyTransferPartialCAMs"
NUMS = "CAT_KD.CAMs_Nums"
STRATEGY = "CAT_KD.Strategy"
TYPE, TEACHER, STUDENT = "DISTILLER.TYPE", "DISTILLER.TEACHER", "DISTILLER.STUDENT"
ONLY_CAT = "CAT_KD.onlyCAT"
RATE, CLASSES = "DATASET.RESERVED_RATE", "DATASET.RESERVED_CLASS_NUM"

KNOWN = ("beta_sweep", "cam_resolution", "binarization", "partial_cams", "data_reduction",
         "main_results", "teachers")


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


def _finite(v: Any) -> bool:
    try:
        return v is not None and not isinstance(v, bool) and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


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
    """Trials grouped by every setting except the seed (one group = one configuration)."""
    cols = settings_columns(trials)
    out: dict[tuple, Group] = {}
    for idx, row in trials.iterrows():
        k = tuple(_key(row[c]) for c in cols)
        if k not in out:
            out[k] = Group(dict(zip(cols, k)), trials.loc[[idx]])
        else:
            out[k].trials = pd.concat([out[k].trials, trials.loc[[idx]]])
    return list(out.values())


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
    text = ", ".join(f"{counts[s]} {s}" for s in counts.index)
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
    cells: dict[tuple, dict[Any, list]] = {}
    cols: list[Any] = []
    for g in gs:
        r, c = row_of(g), col_of(g)
        cells.setdefault(r, {}).setdefault(c, []).extend(g.trials[value].tolist())
        if c not in cols:
            cols.append(c)
    cols = sorted(cols, key=col_sort or _sortkey)
    rows = [[_fmt(x) for x in r] + [cell(cells[r][c]) if c in cells[r] else "-" for c in cols]
            for r in sorted(cells, key=lambda r: tuple(_sortkey(x) for x in r))]
    return Table(name, title, row_headers + [_fmt(c) for c in cols], rows)


def _sortkey(v: Any) -> tuple:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, str(v))


def generic(study: Study, epoch: str) -> list[Table]:
    trials, stage, notes = rows_to_report(study)
    value = value_column(epoch)
    keys = varied_columns(trials)
    rows = []
    for g in groups(trials):
        status = ", ".join(f"{n} {s}" for s, n in g.trials["status"].value_counts().items()) \
            if "status" in g.trials else ""
        rows.append([_fmt(g.get(k)) for k in keys] + [cell(g.trials[value]), status])
    rows.sort(key=lambda r: [str(x) for x in r])
    title = f"{study.name}: {_epoch_label(epoch)} by configuration ({stage})"
    return [Table("generic", title, keys + [_epoch_label(epoch), "status"], rows, notes)]


def beta_sweep(study: Study, epoch: str, paper: dict[str, Any]) -> list[Table]:
    value = value_column(epoch)
    t = study.trials
    stage = t["stage"] if "stage" in t else pd.Series(["search"] * len(t), index=t.index)
    search, confirm = t[stage != "confirm"], t[stage == "confirm"]
    gs = groups(search)
    gs.sort(key=lambda g: (_sortkey(g.get(BETA)), _sortkey(g.get(RES))))
    rows = []
    for g in gs:
        rows.append([_fmt(g.get(BETA)), _fmt(g.get(RES)), ", ".join(sorted(set(g.trials["status"]))),
                     int(g.trials["epochs_done"].max()), cell(g.trials["best_val_acc"]), cell(g.trials[value]),
                     _fmt(_loss_cat_epoch1(study, g.trials))])
    headers = ["β", "R", "status", "epochs", "val top-1 % (best)", _epoch_label(epoch), "β·L_CAT epoch 1"]
    tables = [Table("beta_sweep_search", f"{study.name}: β vs top-1, search trials (sorted by β)", headers, rows)]
    notes: list[str] = []
    select = _select_metric(study)
    if len(confirm):
        cg = groups(confirm)
        # the configuration is chosen by validation (never by the test accuracy it reports)
        best = max(cg, key=lambda g: stats(g.trials[select])[0] or -1)
        crow = [[_fmt(g.get(BETA)), _fmt(g.get(RES)), cell(g.trials[select]), cell(g.trials[value])]
                for g in sorted(cg, key=lambda g: -(stats(g.trials[select])[0] or -1))]
        tables.append(Table("beta_sweep_confirm", f"{study.name}: confirm stage (new seeds; sorted by {select})",
                            ["β", "R", "val top-1 % (best)" if select == "best_val_acc" else select,
                             _epoch_label(epoch)], crow))
        where = f"confirm stage, chosen by mean {select}"
        best_trials = best.trials
        # β·L_CAT of the same configuration in the search stage (the confirm runs have it too)
    else:
        if study.spec.get("confirm"):
            notes.append("Tuned on validation, but there are no confirm rows yet: the best β is "
                         "chosen among the search trials.")
        best = max(gs, key=lambda g: stats(g.trials[select])[0] or -1) if gs else None
        where = f"search stage, chosen by {select}"
        best_trials = best.trials if best else None
    if best is not None:
        lc = _loss_cat_epoch1(study, best_trials)
        lo, hi = (paper.get("advice", {}).get("beta_times_lcat", {}).get("range") or [None, None])
        src = paper.get("advice", {}).get("beta_times_lcat", {}).get("source", "")
        inside = "unknown (no loss_cat at epoch 1)" if lc is None or lo is None else \
            ("yes" if lo <= lc <= hi else "no")
        tables.append(Table("beta_sweep_best", f"{study.name}: best β ({where})",
                            ["β", "R", _epoch_label(epoch), "mean β·L_CAT at epoch 1",
                             f"inside advised {lo}..{hi} ({src})"],
                            [[_fmt(best.get(BETA)), _fmt(best.get(RES)), cell(best_trials[value]),
                              _fmt(lc), inside]], notes))
    return tables


def _loss_cat_epoch1(study: Study, trials: pd.DataFrame) -> Optional[float]:
    e = study.epochs
    if e.empty or "loss_cat" not in e or "trial_id" not in e:
        return None
    sel = e[(e["trial_id"].isin(trials["trial_id"])) & (e["epoch"] == 1)]
    mean, _, n = stats(sel["loss_cat"])
    return mean if n else None


def cam_resolution(study: Study, epoch: str) -> list[Table]:
    trials, stage, notes = rows_to_report(study)
    value = value_column(epoch)
    t = pivot(groups(trials), value, lambda g: (), lambda g: g.get(RES), [],
              "cam_resolution", f"{study.name}: CAM resolution R vs {_epoch_label(epoch)}")
    t.headers = [f"R = {h}" for h in t.headers]
    t.notes = notes
    return [t]


def binarization(study: Study, epoch: str) -> list[Table]:
    trials, stage, notes = rows_to_report(study)
    value = value_column(epoch)
    t = pivot(groups(trials), value, lambda g: (bool(g.get(BIN)), g.get(BETA)), lambda g: g.get(RES),
              ["binarized", "β"], "binarization", f"{study.name}: binarize x R, {_epoch_label(epoch)}")
    t.headers = t.headers[:2] + [f"R = {h}" for h in t.headers[2:]]
    t.notes = notes
    tables = [t]
    by: dict[tuple, list] = {}
    for g in groups(trials):
        by.setdefault((bool(g.get(BIN)), g.get(RES)), []).extend(g.trials[value].tolist())
    rows = [[_fmt(r)] + difference_row("binarized - not binarized", by[(True, r)], by[(False, r)])
            for r in sorted({r for _, r in by}, key=_sortkey) if (True, r) in by and (False, r) in by]
    if rows:
        tables.append(Table("binarization_differences", f"{study.name}: binarized - not binarized at each R, "
                            f"{_epoch_label(epoch)}", ["R"] + DIFF_HEADERS, rows,
                            ["95 % Welch interval over seeds; the paper gives no number for this difference."]))
    return tables


def partial_cams(study: Study, epoch: str) -> list[Table]:
    trials, stage, notes = rows_to_report(study)
    value = value_column(epoch)
    n_classes = classes_of(trials)

    def row(g: Group) -> tuple:
        if not g.get(PARTIAL):
            return ("all CAMs",)
        s = g.get(STRATEGY)
        return ({0: "top-n", 1: "lowest-n"}.get(s, str(s)),)

    def col(g: Group) -> Any:
        return g.get(NUMS) if g.get(PARTIAL) else f"all ({n_classes})"

    t = pivot(groups(trials), value, row, col, ["CAMs transferred"], "partial_cams",
              f"{study.name}: strategy x n (CAMs transferred), {_epoch_label(epoch)}")
    t.headers = t.headers[:1] + [h if h.startswith("all") else f"n = {h}" for h in t.headers[1:]]
    t.notes = notes
    return [t]


def method_of(g: Group | dict) -> str:
    typ = g.get(TYPE)
    if typ == "CAT_KD":
        return "CAT (alone)" if g.get(ONLY_CAT) else "CAT-KD"
    if typ in (None, "NONE"):
        return "student alone"
    return str(typ)  # KD, DKD


def data_reduction(study: Study, epoch: str) -> list[Table]:
    trials, stage, notes = rows_to_report(study)
    value = value_column(epoch)
    n_classes = classes_of(trials)
    gs = groups(trials)
    full = [g for g in gs if not _finite(g.get(CLASSES)) or int(g.get(CLASSES)) >= n_classes]
    fewer = [g for g in gs if g not in full]
    order = {"CAT-KD": 0, "DKD": 1, "KD": 2, "student alone": 3, "CAT (alone)": 4}
    t = pivot(full, value, lambda g: (g.get(RATE),), method_of, ["kept rate"], "data_reduction",
              f"{study.name}: kept fraction of training images x method, {_epoch_label(epoch)}",
              col_sort=lambda m: (order.get(m, 9), m))
    t.notes = notes
    tables = [t]
    by: dict[tuple, list] = {}
    for g in full:
        by.setdefault((g.get(RATE), method_of(g)), []).extend(g.trials[value].tolist())
    rows = []
    for rate in sorted({r for r, _ in by}, key=_sortkey):
        for a, b in (("CAT-KD", "KD"), ("CAT-KD", "student alone"), ("KD", "student alone")):
            if (rate, a) in by and (rate, b) in by:
                rows.append([_fmt(rate)] + difference_row(f"{a} - {b}", by[(rate, a)], by[(rate, b)]))
    if rows:
        tables.append(Table("data_reduction_differences",
                            f"{study.name}: differences between methods at each kept rate, {_epoch_label(epoch)}",
                            ["kept rate"] + DIFF_HEADERS, rows,
                            ["95 % Welch interval over seeds; the paper gives no numbers for these differences."]))
    if fewer:
        rows = []
        for g in fewer:
            unseen = _unseen_last(study, g.trials)
            rows.append([method_of(g), f"{int(g.get(CLASSES))} of {n_classes}", _fmt(g.get(RATE)),
                         cell(g.trials[value]), cell(unseen)])
        tables.append(Table("data_reduction_unseen",
                            f"{study.name}: classes never seen in training (test_acc_unseen, last epoch)",
                            ["method", "classes kept", "kept rate", _epoch_label(epoch),
                             "top-1 % on unseen classes (last epoch)"], rows))
    return tables


def _unseen_last(study: Study, trials: pd.DataFrame) -> list[float]:
    e = study.epochs
    if e.empty or "test_acc_unseen" not in e:
        return []
    out = []
    for tid in trials["trial_id"]:
        rows = e[e["trial_id"] == tid].sort_values("epoch")
        if len(rows):
            out.append(rows["test_acc_unseen"].iloc[-1])
    return out


def pair_of(g: Group | dict) -> str:
    return f"{g.get(TEACHER)}->{g.get(STUDENT)}"


def _published(entry: Optional[dict]) -> tuple[str, Optional[float], str]:
    if not entry or "top1" not in entry:
        return "-", None, ""
    return f"{entry['top1']:.2f}", float(entry["top1"]), entry.get("source", "")


# The main table's methods, left to right, by DISTILLER.TYPE (None: the student trained alone).
MAIN_METHODS = [(None, "student alone"), ("KD", "KD"), ("DKD", "DKD"), ("CAT_KD", "CAT-KD")]


def _ours_published_gap(ours: list, entry: Optional[dict]) -> list[str]:
    """[ours as mean ± std (n), the published value, ours - published]."""
    pub, pval, _ = _published(entry)
    mean, _, n = stats(ours)
    gap = f"{mean - pval:+.2f}" if n and pval is not None else "-"
    return [cell(ours), pub, gap]


def main_results(study: Study, epoch: str, paper: dict[str, Any]) -> list[Table]:
    trials, stage, notes = rows_to_report(study)
    value = value_column(epoch)
    if study.smoke:  # synthetic data: CIFAR-100 numbers beside them would mislead
        notes.append("SYNTHETIC/SMOKE: published CIFAR-100 numbers are not joined.")
        paper = {"dataset": paper.get("dataset", "")}
    vanilla_pub, pairs_pub = paper.get("vanilla", {}), paper.get("pairs", {})
    by_pair: dict[str, dict[str, list]] = {}
    alone: dict[str, list] = {}
    for g in groups(trials):
        typ = g.get(TYPE)
        if typ in (None, "NONE"):
            alone.setdefault(str(g.get(STUDENT)), []).extend(g.trials[value].tolist())
        else:
            by_pair.setdefault(pair_of(g), {}).setdefault(str(typ), []).extend(g.trials[value].tolist())
    rows, sources = [], {}
    pair_notes: list[str] = []
    for pair in by_pair:
        teacher, student = pair.split("->", 1)
        pub = pairs_pub.get(pair, {})
        row = [pair, _published(vanilla_pub.get(teacher))[0]]
        for typ, label in MAIN_METHODS:
            entry = vanilla_pub.get(student) if typ is None else pub.get(typ)
            vals = alone.get(student, []) if typ is None else by_pair[pair].get(typ, [])
            row += _ours_published_gap(vals, entry)
            if entry and entry.get("source"):
                sources.setdefault(label, {})[entry["source"]] = True
            if entry and entry.get("note"):
                pair_notes.append(f"{label} {pair}: published {entry['top1']:.2f} — {entry['note']}.")
        rows.append(row)
    paired_students = {p.split("->", 1)[1] for p in by_pair}
    for student, vals in alone.items():
        if student not in paired_students:
            rows.append([f"(alone) {student}", "-", *_ours_published_gap(vals, vanilla_pub.get(student)),
                         *["-"] * (3 * (len(MAIN_METHODS) - 1))])
    headers = ["teacher->student", "teacher (published)"]
    for _, label in MAIN_METHODS:
        headers += [f"{label} (ours)", f"{label} (published)", f"{label} gap"]
    for label, srcs in sources.items():
        notes.append(f"{label} published numbers: {'; '.join(srcs)}.")
    notes += pair_notes
    notes.append(f"Ours: {_epoch_label(epoch)}, mean ± std (n) over seeds; gap = our mean - published; "
                 f"published: {paper.get('dataset', '')}.")
    main = Table("main_results", f"{study.name}: CIFAR-100 table ({stage})", headers, rows, notes)
    # methods compared on the same pair: difference of means with its uncertainty over seeds
    labels = dict(MAIN_METHODS)
    diff_rows = []
    for pair in by_pair:
        student = pair.split("->", 1)[1]
        pub = pairs_pub.get(pair, {})

        def vals(typ):
            return alone.get(student, []) if typ is None else by_pair[pair].get(typ, [])

        def pubval(typ):
            e = vanilla_pub.get(student) if typ is None else pub.get(typ)
            return _published(e)[1]

        for a, b in (("CAT_KD", "DKD"), ("CAT_KD", "KD"), ("CAT_KD", None), ("DKD", "KD"), ("KD", None)):
            if not vals(a) or not vals(b):
                continue
            pa, pb = pubval(a), pubval(b)
            diff_rows.append([pair] + difference_row(f"{labels[a]} - {labels[b]}", vals(a), vals(b),
                                                     None if pa is None or pb is None else pa - pb))
    tables = [main]
    if diff_rows:
        tables.append(Table("main_results_differences",
                            f"{study.name}: differences between methods on the same pair, {_epoch_label(epoch)}",
                            ["teacher->student"] + DIFF_HEADERS, diff_rows,
                            ["95 % confidence interval of the difference of means over seeds (Welch's t); "
                             "n = 1 on a side gives no interval. 'published inside our CI': does the "
                             "difference of the published numbers fall inside it."]))
    return tables


def teachers(study: Study, epoch: str, paper: dict[str, Any]) -> list[Table]:
    trials, stage, notes = rows_to_report(study)
    value = value_column(epoch)
    if study.smoke:
        notes.append("SYNTHETIC/SMOKE: published CIFAR-100 numbers are not joined.")
        paper = {}
    vanilla_pub = paper.get("vanilla", {})
    per: dict[str, list] = {}
    for g in groups(trials):
        per.setdefault(str(g.get(STUDENT)), []).extend(g.trials[value].tolist())
    rows = []
    for model, vals in per.items():
        pub, pval, src = _published(vanilla_pub.get(model))
        mean, _, n = stats(vals)
        rows.append([model, cell(vals), pub, f"{mean - pval:+.2f}" if n and pval is not None else "-", src or "-"])
    return [Table("teachers", f"{study.name}: models trained alone, {_epoch_label(epoch)}",
                  ["model", "ours", "published", "gap (ours - published)", "source"], rows, notes)]


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
    mark = marker(study)
    for t in tables:
        t.title += mark
    tables[0].notes = study.notes + status_notes(study.trials) + [_rule_note(mode)] + tables[0].notes
    return tables


def _rule_note(mode: str) -> str:
    if mode == "best-val":
        return ("Cells: test top-1 at each trial's best-validation epoch; configurations chosen on "
                "validation. Nothing here is chosen on the test set.")
    if mode == "best-test":
        return ("Cells: the best TEST epoch, the reference's and the paper's convention (the epoch is "
                "chosen on the test set, which flatters); the last epoch's tables follow.")
    return "Cells: test top-1 at the last epoch."


def _tables_for(study: Study, epoch: str, paper: dict[str, Any]) -> list[Table]:
    name = study.name
    if study.trials.empty:
        tables = [Table("empty", f"{name}: no trials yet", [], [])]
    elif name == "beta_sweep":
        tables = beta_sweep(study, epoch, paper)
    elif name == "cam_resolution":
        tables = cam_resolution(study, epoch)
    elif name == "binarization":
        tables = binarization(study, epoch)
    elif name == "partial_cams":
        tables = partial_cams(study, epoch)
    elif name == "data_reduction":
        tables = data_reduction(study, epoch)
    elif name == "main_results":
        tables = main_results(study, epoch, paper)
    elif name == "teachers":
        tables = teachers(study, epoch, paper)
    else:
        tables = generic(study, epoch)
    return tables


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
