"""The tables each study answers with: mean ± std (n) over seeds, published numbers beside ours.

`build` takes a loaded `analysis.load.Study` and returns its `Table`s in the study's layout
(analysis.layouts); `render` turns them into Markdown or LaTeX (booktabs), `csv_text` into CSV.
Published numbers come only from `analysis/paper.yaml`. The cells' statistics live in
analysis.cells, which epoch and which trials a table reads in analysis.selection.
"""
from __future__ import annotations

import csv
import io
from typing import Any, Optional

from tabulate import tabulate

from analysis.cells import Table, cell, stats, welch  # noqa: F401  (the tables' API too: tables.cell, ...)
from analysis.layouts import LAYOUTS, layout_of
from analysis.load import Study, load_paper
from analysis.selection import marker, resolve_epoch, status_notes


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
    from catkd.teacher_cache.prefetch import totals  # here: the teacher cache package imports torch

    ahead = totals(study.path)  # the study driver's prefetch from idle CPU time (catkd.study.prefetch)
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
    if study.trials.empty:
        return [Table("empty", f"{study.name}: no trials yet", [], [])]
    tables = LAYOUTS[layout_of(study)](study, epoch, paper)
    chosen = study.spec.get("report")
    if chosen and chosen not in LAYOUTS and tables:
        tables[0].notes.append(f"report: {chosen!r} is no layout of analysis/layouts/ (known: "
                               f"{', '.join(sorted(LAYOUTS))}); the generic table is shown")
    return tables


# ----------------------------------------------------------------------------- rendering

# symbols the cells use that pdfLaTeX's default fonts lack
LATEX_SYMBOLS = {"±": r"$\pm$", "★": r"$\star$", "β": r"$\beta$", "·": r"$\cdot$"}


def render(tables: list[Table], fmt: str) -> str:
    """Markdown or LaTeX text of all tables (CSV: `csv_text`)."""
    parts = []
    for t in tables:
        if fmt not in t.formats:
            continue
        if fmt == "md":
            body = tabulate(t.rows, headers=t.headers, tablefmt="github", disable_numparse=True)
            notes = "".join(f"\n- {n}" for n in t.notes)
            parts.append(f"## {t.title}\n\n{body}\n{notes}\n")
        elif fmt == "latex":
            body = tabulate(t.rows, headers=t.headers, tablefmt="latex_booktabs", disable_numparse=True)
            for char, tex in LATEX_SYMBOLS.items():  # after tabulate's escaping, so its $ and \ survive
                body = body.replace(char, tex)
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
