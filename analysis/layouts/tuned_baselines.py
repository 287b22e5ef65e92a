"""Every method tuned at the same budget: per method the preset's accuracy, the tuned one, the published
one and tuned - preset with its interval, the settings found; then CAT-KD against each method, both
at their presets and both tuned."""
from __future__ import annotations

from typing import Any

import pandas as pd

from analysis.cells import Table, cell, difference_row, fmt, stats
from analysis.layouts.common import FAMILIES, entry_note, method_info, published
from analysis.layouts.registry import layout
from analysis.load import Study, settings_columns
from analysis.names import STUDENT, TEACHER, TYPE, display
from analysis.selection import epoch_label, select_metric, value_column
from catkd.study.keys import ROLE_KEY, SELECT_KEYS, SEED_KEY

ORDER = ("none", *FAMILIES)


def _role(t: pd.DataFrame) -> pd.Series:
    return t[ROLE_KEY].fillna("tuned") if ROLE_KEY in t else pd.Series(["tuned"] * len(t), index=t.index)


def _searched(search: pd.DataFrame) -> list[str]:
    """The settings a method's search varied (its searched dimensions)."""
    skip = {SEED_KEY, ROLE_KEY, *SELECT_KEYS}
    return [c for c in settings_columns(search) if c not in skip and search[c].astype(str).nunique() > 1]


def _settings(rows: pd.DataFrame, keys: list[str]) -> str:
    if rows.empty:
        return "-"
    first = rows.iloc[0]
    return ", ".join(f"{display(k)} {fmt(first[k])}" for k in keys if k in rows)


@layout("tuned_baselines")
def tuned_baselines(study: Study, epoch: str, paper: dict[str, Any]) -> list[Table]:
    value, select = value_column(epoch), select_metric(study)
    t = study.trials
    stage = t["stage"] if "stage" in t else pd.Series(["search"] * len(t), index=t.index)
    search, confirm = t[stage != "confirm"], t[stage == "confirm"]
    role = _role(confirm)
    pairs_pub = {} if study.smoke else paper.get("pairs", {})
    notes: list[str] = []
    if study.smoke:
        notes.append("SYNTHETIC/SMOKE: published CIFAR-100 numbers are not joined.")
    if confirm.empty:
        notes.append("No confirm rows yet: the preset and tuned columns fill when the confirm stage runs; "
                     "the search columns show what the searches found so far.")
    keyed = t.assign(_pair=t[TEACHER].astype(str) + "->" + t[STUDENT].astype(str), _type=t[TYPE].astype(str))
    rows, diffs, by, entry_notes = [], [], {}, []
    for (pair, typ), sub in keyed.groupby(["_pair", "_type"], sort=False):
        s = sub[stage.loc[sub.index] != "confirm"]
        c = sub[stage.loc[sub.index] == "confirm"]
        r = role.reindex(c.index)
        tuned, preset = c[r == "tuned"], c[r == "preset"]
        by[(pair, typ)] = (tuned[value].tolist(), preset[value].tolist())
        keys = _searched(s) or _searched(c)
        label, family = method_info(typ)
        pub, _, src = published(pairs_pub.get(pair, {}).get(typ))
        if note := entry_note(label, pair, pairs_pub.get(pair, {}).get(typ)):
            entry_notes.append(note)
        diff = difference_row("", tuned[value], preset[value])
        budget = f"{len(s)} trials, {int(s['epochs_done'].sum()):,} epochs" if len(s) else "-"
        best_search = s.sort_values(select, ascending=False).head(1) if len(s) and select in s else s.head(0)
        rows.append((ORDER.index(family) if family in ORDER else len(ORDER), label.lower(), [
            pair, label, budget, cell(preset[value]), cell(tuned[value]), pub,
            "-" if diff[1] == "-" else f"{diff[1]} {diff[2]}" if diff[2].startswith("[") else f"{diff[1]} (no interval)",
            diff[3], _settings(tuned if len(tuned) else best_search, keys), _settings(preset, keys)]))
    rows.sort(key=lambda r: (r[2][0], r[0], r[1]))
    table = Table("tuned_baselines", f"{study.name}: each method at its preset and tuned at the same budget",
                  ["teacher->student", "method", "search budget", "preset (ours)", "tuned (ours)",
                   "published", "tuned - preset [95 % CI]", "n", "settings found", "preset settings"],
                  [r[2] for r in rows],
                  notes + [
                      f"Preset and tuned: the confirm runs (new seeds, the same training/validation split), "
                      f"{epoch_label(epoch)}, mean ± std (n). The tuned settings are the best of each method's "
                      f"search by {select} (validation); nothing is chosen on the test set.",
                      "tuned - preset: difference of means with its 95 % Welch interval over seeds; n = 1 on a "
                      "side gives no interval. Both are trained without the validation images, so they sit a "
                      "little below full-data numbers, and below the published column for that reason too.",
                      "Search budget: every method gets the same number of trials under its own scheduler; "
                      "the epochs column shows what early stopping left of it."] + entry_notes)
    for (pair, typ), (tuned, preset) in by.items():
        if typ == "CAT_KD" or (pair, "CAT_KD") not in by:
            continue
        cat_tuned, cat_preset = by[(pair, "CAT_KD")]
        label = method_info(typ)[0]
        pub = pairs_pub.get(pair, {})
        pa, pb = published(pub.get("CAT_KD"))[1], published(pub.get(typ))[1]
        pub_diff = None if pa is None or pb is None else pa - pb
        diffs.append([pair] + difference_row(f"CAT-KD - {label}, both preset", cat_preset, preset, pub_diff))
        diffs.append([pair] + difference_row(f"CAT-KD - {label}, both tuned", cat_tuned, tuned))
    tables = [table]
    if diffs:
        tables.append(Table("tuned_baselines_differences",
                            f"{study.name}: CAT-KD minus each method, at the presets and tuned alike",
                            ["teacher->student", "comparison", "difference of means", "95 % CI (Welch)", "n",
                             "published difference", "published inside our CI"], diffs,
                            ["The question this study asks: is CAT-KD's lead over a method the same when both "
                             "are tuned with the same budget as when both use their authors' presets? The "
                             "published difference (presets, full training set) is beside the preset rows."]))
    if stats(search[select])[2]:
        tables.append(_search_table(study, search, select))
    return tables


def _search_table(study: Study, search: pd.DataFrame, select: str) -> Table:
    """Per method: how its search went (trials, finished, best and median validation top-1)."""
    rows = []
    for typ, s in search.groupby(search[TYPE].astype(str), sort=False):
        vals = pd.to_numeric(s[select], errors="coerce").dropna()
        rows.append([method_info(typ)[0], len(s), int((s["status"] == "finished").sum()),
                     f"{vals.max():.2f}" if len(vals) else "-", f"{vals.median():.2f}" if len(vals) else "-"])
    return Table("tuned_baselines_search", f"{study.name}: the searches",
                 ["method", "trials", "run to the end", f"best ({select})", f"median ({select})"], rows,
                 ["Each method's own search (its own Optuna study and early stopping): trials stopped early "
                  "by the scheduler count in the budget."])
