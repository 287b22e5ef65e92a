"""The ImageNet table: one row per method (the student alone, the teachers' published accuracy, then the
methods grouped as the paper groups them), per teacher -> student pair a top-1 and a top-5 column, ours
beside the published number and the gap. A tidy CSV of the same cells."""
from __future__ import annotations

from typing import Any, Optional

import pandas as pd

from analysis.cells import Table, cell, stats
from analysis.layouts.common import FAMILIES, entry_note, method_info
from analysis.layouts.main_results import ALONE, FAMILY_TITLE
from analysis.layouts.registry import layout
from analysis.load import Study
from analysis.names import STUDENT, TEACHER, TYPE
from analysis.selection import epoch_label, rows_to_report, value_column
from catkd.study.results import finite

METRICS = (("top-1", "top1"), ("top-5", "top5"))  # (header, paper.yaml key)
TEACHER_LABEL = "teacher (published)"


def _model(name: Any) -> str:
    """The registered ImageNet model behind a name (the reference's "MobileNetV2" is MobileNetV1)."""
    from catkd.models import canonical_model_name

    try:
        return canonical_model_name(str(name), "imagenet")
    except Exception:  # noqa: BLE001 - a name of another version: shown as recorded
        return str(name)


def _type(v: Any) -> str:
    return v if isinstance(v, str) and v else ALONE


def _chosen_epoch(rows: pd.DataFrame, trial: pd.Series, epoch: str) -> Optional[int]:
    """The epoch the reporting rule reads for one trial (the one its top-1 comes from): the last, the
    best validation epoch or, labelled, the best test top-1 epoch (the earliest on ties)."""
    if rows.empty:
        return None
    if epoch == "last":
        return int(rows["epoch"].max())
    if epoch == "best-val" and finite(trial.get("best_val_epoch")):
        return int(trial["best_val_epoch"])
    by = "val_acc" if epoch == "best-val" else "test_acc"
    if by not in rows:
        return None
    rows = rows[pd.to_numeric(rows[by], errors="coerce").notna()]
    if rows.empty:
        return None
    return int(rows.sort_values([by, "epoch"], ascending=[False, True])["epoch"].iloc[0])


def _top5(study: Study, trials: pd.DataFrame, epoch: str) -> dict[Any, Optional[float]]:
    """Test top-5 of each trial (by index) at the epoch its top-1 is read at: never the best top-5."""
    e = study.epochs
    out: dict[Any, Optional[float]] = {i: None for i in trials.index}
    if e.empty or "test_acc_top5" not in e or "trial_id" not in e:
        return out
    for i, t in trials.iterrows():
        rows = e[e["trial_id"] == t["trial_id"]]
        if "stage" in rows and "stage" in t:
            rows = rows[rows["stage"] == t["stage"]]
        ep = _chosen_epoch(rows, t, epoch)
        if ep is not None:
            v = rows.loc[rows["epoch"] == ep, "test_acc_top5"]
            out[i] = float(v.iloc[-1]) if len(v) and finite(v.iloc[-1]) else None
    return out


def _sources(text: Optional[str]) -> list[str]:
    """The sources an entry names, split at the "; " between them (not inside their parentheses)."""
    out, depth, start = [], 0, 0
    text = text or ""
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0 and text.startswith("; ", i):
            out.append(text[start:i])
            start = i + 2
    return [s for s in [*out, text[start:]] if s]


def _pub(entry: Optional[dict], key: str) -> Optional[float]:
    v = (entry or {}).get(key)
    return float(v) if finite(v) else None


def _cell(vals: list, pub: Optional[float]) -> tuple[str, Optional[float]]:
    """`ours / published (gap)`; no result and no published number: `-`."""
    mean, _, n = stats(vals)
    if not n and pub is None:
        return "-", None
    gap = mean - pub if n and pub is not None else None
    text = f"{cell(vals)} / {'-' if pub is None else f'{pub:.2f}'}"
    return text + (f" ({gap:+.2f})" if gap is not None else ""), gap


def _rank(typ: str) -> tuple:
    label, family = method_info(typ)
    order = ("none", *FAMILIES)
    return (order.index(family) if family in order else len(order), label.lower())


@layout("imagenet")
def imagenet(study: Study, epoch: str, paper: dict[str, Any]) -> list[Table]:
    trials, stage, notes = rows_to_report(study)
    value = value_column(epoch)
    pubs: dict[str, dict] = paper.get("imagenet") or {}
    if study.smoke:  # synthetic data: ImageNet numbers beside them would mislead
        notes.append(f"{study.smoke_label}: published ImageNet numbers are not joined.")
        pubs = {}
    top5 = _top5(study, trials, epoch)
    ours: dict[str, dict[str, list]] = {}   # pair -> distiller type -> [(top-1, top-5)] over seeds
    alone: dict[str, list] = {}             # student -> [(top-1, top-5)] of the student trained alone
    for i, t in trials.iterrows():
        typ, v = _type(t.get(TYPE)), (t.get(value), top5[i])
        if method_info(typ)[1] == "none":
            alone.setdefault(_model(t.get(STUDENT)), []).append(v)
        else:
            ours.setdefault(f"{_model(t.get(TEACHER))}->{_model(t.get(STUDENT))}", {}).setdefault(typ, []).append(v)
    student_of = {p: p.split("->", 1)[1] for p in [*pubs, *ours]}
    pairs = [p for p in pubs if p in ours or student_of[p] in alone] + [p for p in ours if p not in pubs]

    def vals(typ: str, pair: str, k: int) -> list:
        got = alone.get(student_of[pair], []) if typ == ALONE else ours.get(pair, {}).get(typ, [])
        return [x[k] for x in got]

    def entry(typ: str, pair: str) -> Optional[dict]:
        return (pubs.get(pair) or {}).get({ALONE: "student", "teacher": "teacher"}.get(typ, typ))

    methods = sorted({t for d in ours.values() for t in d}, key=_rank)
    headers = ["group", "method"] + [f"{p} {m}" for p in pairs for m, _ in METRICS]
    rows: list[list[str]] = []
    long: list[list[Any]] = []
    sources: dict[str, dict[str, bool]] = {}
    entry_notes: list[str] = []
    unpublished: dict[str, list[str]] = {}
    for typ in [ALONE, "teacher", *methods]:
        label, family = (TEACHER_LABEL, "none") if typ == "teacher" else method_info(typ)
        row = ["-" if family == "none" else FAMILY_TITLE.get(family, family), label]
        for pair in pairs:
            e = entry(typ, pair)
            for k, (metric, key) in enumerate(METRICS):
                pub = _pub(e, key)
                if typ == "teacher":  # the teachers are given (torchvision weights), not trained here
                    row.append("-" if pub is None else f"{pub:.2f}")
                    long.append([row[0], label, pair, metric, "", "", 0, _num(pub), "", (e or {}).get("source", "")])
                    continue
                v = vals(typ, pair, k)
                text, gap = _cell(v, pub)
                mean, std, n = stats(v)
                row.append(text)
                long.append([row[0], label, pair, metric, _num(mean), _num(std), n, _num(pub), _num(gap),
                             (e or {}).get("source", "")])
            for src in _sources((e or {}).get("source")):  # each source named once per method
                sources.setdefault("teacher" if typ == "teacher" else label, {})[src] = True
            if note := entry_note(label, pair, e):
                entry_notes.append(note)
            if not e and typ != "teacher" and pubs:
                unpublished.setdefault(label, []).append(pair)
        rows.append(row)
    planned = len(study.spec.get("seeds") or [])
    notes.append(f"Cells: ours as mean ± std (n) over seeds / the published number (ours - published), for "
                 f"top-1 and top-5; ours = {epoch_label(epoch)}, and top-5 at that same epoch of each trial "
                 f"(never its own best); '-' = no result (ours) or no published number. Planned seeds per "
                 f"cell: {planned}; a cell with fewer shows its n.")
    notes.append(f"{TEACHER_LABEL}: the teachers are not trained here (torchvision's pretrained weights); "
                 "the row shows their published accuracy only.")
    members: dict[str, list[str]] = {}
    for typ in methods:
        label, family = method_info(typ)
        members.setdefault(FAMILY_TITLE.get(family, family), []).append(label)
    if members:
        notes.append("Groups, as each distiller declares its own: "
                     + "; ".join(f"{g}: {', '.join(m)}" for g, m in members.items()) + ".")
    for label, srcs in sources.items():
        notes.append(f"{label} published numbers: {'; '.join(srcs)}.")
    notes += entry_notes
    if unpublished:
        notes.append("No published ImageNet number was found for: "
                     + "; ".join(f"{m} ({', '.join(p)})" for m, p in unpublished.items()) + ".")
    with5 = sorted({method_info(t)[0] for p in pubs.values() for t, e in p.items()
                    if isinstance(e, dict) and _pub(e, "top5") is not None})
    if pubs:
        notes.append(f"Published top-5 is known here only for: {', '.join(with5) or 'none'}; every other "
                     "published top-5 is unknown ('-'), not zero.")
    unpaired = sorted(s for s in alone if s not in {student_of[p] for p in pairs})
    if unpaired:
        notes.append(f"Models trained alone that are no student of a pair here (not shown): {', '.join(unpaired)}.")
    notes.append("Published: ImageNet top-1 / top-5 %, 100 epochs (analysis/paper.yaml, `imagenet`).")
    return [Table("imagenet", f"{study.name}: ImageNet top-1 / top-5, every method x pair ({stage}); "
                  f"ours = {epoch_label(epoch)}",
                  headers, rows, notes),
            Table("imagenet_cells", f"{study.name}: the same cells, one per row",
                  ["group", "method", "pair", "metric", "mean", "std", "n", "published", "gap", "source"],
                  long, [f"Ours: {epoch_label(epoch)}; top-5 at the same epoch."], formats=("csv",))]


def _num(v: Optional[float]) -> Any:
    return "" if v is None else round(float(v), 4)
