"""CAM resolution: top-1 at each R."""
from __future__ import annotations

from typing import Any, Optional

from analysis.cells import Table
from analysis.layouts.registry import layout
from analysis.layouts.common import R, ablation_note, pivot
from analysis.load import Study
from analysis.names import RES
from analysis.selection import epoch_label, groups, rows_to_report, value_column


@layout("cam_resolution")
def cam_resolution(study: Study, epoch: str, paper: Optional[dict[str, Any]] = None) -> list[Table]:
    trials, stage, notes = rows_to_report(study)
    value = value_column(epoch)
    t = pivot(groups(trials), value, lambda g: (), lambda g: g.get(RES), [],
              "cam_resolution", f"{study.name}: CAM resolution R vs {epoch_label(epoch)}")
    t.headers = [f"{R} = {h}" for h in t.headers]
    t.notes = notes + [ablation_note(paper or {}, "cam_resolution", study.smoke)]
    return [t]
