"""β sweep: β vs top-1 for the search trials, the confirm stage, and the best β against the advised range of β·L_CAT."""
from __future__ import annotations

from typing import Any, Optional

import pandas as pd

from analysis.cells import Table, cell, fmt, sortkey, stats
from analysis.layouts.registry import layout
from analysis.layouts.common import B, R
from analysis.load import Study
from analysis.names import BETA, RES
from analysis.selection import epoch_label, groups, select_metric, value_column


@layout("beta_sweep")
def beta_sweep(study: Study, epoch: str, paper: dict[str, Any]) -> list[Table]:
    value = value_column(epoch)
    t = study.trials
    stage = t["stage"] if "stage" in t else pd.Series(["search"] * len(t), index=t.index)
    search, confirm = t[stage != "confirm"], t[stage == "confirm"]
    gs = groups(search)
    gs.sort(key=lambda g: (sortkey(g.get(BETA)), sortkey(g.get(RES))))
    rows = []
    for g in gs:
        rows.append([fmt(g.get(BETA)), fmt(g.get(RES)), ", ".join(sorted(set(g.trials["status"]))),
                     int(g.trials["epochs_done"].max()), cell(g.trials["best_val_acc"]), cell(g.trials[value]),
                     fmt(_loss_cat_epoch1(study, g.trials))])
    headers = [B, R, "status", "epochs", "val top-1 % (best)", epoch_label(epoch), "β·L_CAT epoch 1"]
    tables = [Table("beta_sweep_search", f"{study.name}: β vs top-1, search trials (sorted by β)", headers, rows)]
    notes: list[str] = []
    select = select_metric(study)
    if len(confirm):
        cg = groups(confirm)
        # the configuration is chosen by validation (never by the test accuracy it reports)
        best = max(cg, key=lambda g: stats(g.trials[select])[0] or -1)
        crow = [[fmt(g.get(BETA)), fmt(g.get(RES)), cell(g.trials[select]), cell(g.trials[value])]
                for g in sorted(cg, key=lambda g: -(stats(g.trials[select])[0] or -1))]
        tables.append(Table("beta_sweep_confirm", f"{study.name}: confirm stage (new seeds; sorted by {select})",
                            [B, R, "val top-1 % (best)" if select == "best_val_acc" else select,
                             epoch_label(epoch)], crow))
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
                            [B, R, epoch_label(epoch), "mean β·L_CAT at epoch 1",
                             f"inside advised {lo}..{hi} ({src})"],
                            [[fmt(best.get(BETA)), fmt(best.get(RES)), cell(best_trials[value]),
                              fmt(lc), inside]], notes))
    return tables


def _loss_cat_epoch1(study: Study, trials: pd.DataFrame) -> Optional[float]:
    e = study.epochs
    if e.empty or "loss_cat" not in e or "trial_id" not in e:
        return None
    sel = e[(e["trial_id"].isin(trials["trial_id"])) & (e["epoch"] == 1)]
    mean, _, n = stats(sel["loss_cat"])
    return mean if n else None
