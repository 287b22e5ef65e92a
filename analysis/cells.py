"""What a report's table is and how its cells read: `Table`, `mean ± std (n)` over seeds, the Student t
interval of a mean, the Welch interval of a difference of means beside the published difference,
settings formatted and sorted."""
from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from catkd.study.results import finite


@dataclass
class Table:
    name: str          # file stem (csv) and anchor
    title: str
    headers: list[str]
    rows: list[list[Any]]
    notes: list[str] = field(default_factory=list)
    formats: tuple[str, ...] = ("md", "latex", "csv")  # a long, tidy table may be CSV only


# ----------------------------------------------------------------------------- statistics

def stats(values: Iterable[Any]) -> tuple[Optional[float], Optional[float], int]:
    """(mean, std with ddof=1 or None when n < 2, n) over the finite values."""
    vals = [float(v) for v in values if finite(v)]
    if not vals:
        return None, None, 0
    mean = statistics.fmean(vals)
    std = statistics.stdev(vals) if len(vals) > 1 else None
    return mean, std, len(vals)


def t_interval(values: Iterable[Any], level: float = 0.95) -> tuple[Optional[float], Optional[float], int]:
    """(mean, half-width of its `level` confidence interval or None, n) over the finite values: Student's t
    with n - 1 degrees of freedom, t_{(1+level)/2, n-1} * std / sqrt(n) (std with ddof=1). No interval
    when n < 2."""
    from scipy import stats as st

    mean, std, n = stats(values)
    if std is None:
        return mean, None, n
    return mean, float(st.t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n), n


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

    xa = [float(v) for v in a if finite(v)]
    xb = [float(v) for v in b if finite(v)]
    if not xa or not xb:
        return None, None, len(xa), len(xb)
    diff = statistics.fmean(xa) - statistics.fmean(xb)
    if len(xa) < 2 or len(xb) < 2 or (statistics.stdev(xa) == 0 and statistics.stdev(xb) == 0):
        return diff, None, len(xa), len(xb)
    with warnings.catch_warnings():  # near-identical values: scipy warns of precision loss, the interval stands
        warnings.simplefilter("ignore", RuntimeWarning)
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


# ----------------------------------------------------------------------------- settings

def fmt(v: Any) -> str:
    """A setting's value as a cell shows it (yes/no, 4 significant digits, '' for none)."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def sortkey(v: Any) -> tuple:
    """Numbers first, in numeric order, then everything else by its text."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, str(v))
