"""Building blocks the layouts share: the pivot table, a group's method and pair, a published number."""
from __future__ import annotations

from typing import Any, Callable, Optional

import pandas as pd

from analysis.cells import Table, cell, fmt, sortkey
from analysis.names import BETA, DISPLAY, ONLY_CAT, RES, STUDENT, TEACHER, TYPE
from analysis.selection import Group


B, R = DISPLAY[BETA], DISPLAY[RES]  # how the tables show β and the CAM resolution


def pivot(gs: list[Group], value: str, row_of: Callable[[Group], tuple], col_of: Callable[[Group], Any],
          row_headers: list[str], name: str, title: str, col_sort: Optional[Callable] = None) -> Table:
    """Rows x columns of `mean ± std (n)` cells (several groups landing in one cell are pooled)."""
    long = pd.DataFrame([{"row": row_of(g), "col": col_of(g), "v": v}
                         for g in gs for v in g.trials[value].tolist()], columns=["row", "col", "v"])
    if long.empty:
        return Table(name, title, row_headers, [])
    wide = long.pivot_table(index="row", columns="col", values="v", aggfunc=lambda v: cell(v),
                            dropna=False, sort=False)
    cols = sorted(wide.columns, key=col_sort or sortkey)
    index = sorted(wide.index, key=lambda r: tuple(sortkey(x) for x in r))
    present = set(zip(long["row"], long["col"]))
    rows = [[fmt(x) for x in r] + [wide.at[r, c] if (r, c) in present else "-" for c in cols] for r in index]
    return Table(name, title, row_headers + [fmt(c) for c in cols], rows)


def method_of(g: Group | dict) -> str:
    """How a table names a group's method: the distiller's label (CAT without CE: "CAT (alone)")."""
    typ = g.get(TYPE)
    if typ == "CAT_KD" and g.get(ONLY_CAT):
        return "CAT (alone)"
    return method_info(typ)[0]


FAMILIES = ("feature", "logit", "attention/CAM")  # the paper's groups of methods, in its order


def method_info(typ: Any) -> tuple[str, str]:
    """(label, family) a distiller declares (catkd.distillers: FITNET -> FitNet, feature); an unknown
    type is its own label, family "other"."""
    from catkd.distillers import DISTILLERS

    if typ is None or (isinstance(typ, float) and typ != typ):
        typ = "NONE"
    try:
        cls = DISTILLERS.get(str(typ))
    except KeyError:
        return str(typ), "other"
    return cls.label or str(typ), cls.family


def pair_of(g: Group | dict) -> str:
    return f"{g.get(TEACHER)}->{g.get(STUDENT)}"


def published(entry: Optional[dict]) -> tuple[str, Optional[float], str]:
    if not entry or "top1" not in entry:
        return "-", None, ""
    return f"{entry['top1']:.2f}", float(entry["top1"]), entry.get("source", "")


def entry_note(label: str, pair: str, entry: Optional[dict]) -> Optional[str]:
    """A table's note on one published number: its `note`, and where two sources disagree (`disagree`)
    both numbers with their sources, the one shown first."""
    if not entry or "top1" not in entry:
        return None
    shown, other, note = float(entry["top1"]), entry.get("disagree"), entry.get("note")
    head = f"{label} {pair}: published {shown:.2f}"
    if other:
        sides = [f"{name} {float(entry[key]):.2f} from {entry.get('source', '')} vs {float(other[key]):.2f} "
                 f"from {other.get('source', '')}" for key, name in (("top1", "top-1"), ("top5", "top-5"))
                 if other.get(key) is not None and entry.get(key) is not None]
        return f"{head} — sources disagree: {'; '.join(sides)}; {note or f'the table shows {shown:.2f}'}."
    return f"{head} — {note}." if note else None


def ablation_note(paper: dict[str, Any], name: str, smoke: bool = False) -> str:
    """What the paper says of an ablation, and why no published number stands beside ours."""
    entry = (paper.get("ablations") or {}).get(name) or {}
    if smoke:
        return "SYNTHETIC/SMOKE: the paper's CIFAR-100 ablation is not compared."
    if not entry:
        return "Published: analysis/paper.yaml has no entry for this ablation."
    return (f"Published: the paper's numbers for this ablation are unknown here (they could not be read), so no "
            f"published column; its finding: {entry.get('finding', '-')} ({entry.get('source', '')}).")
