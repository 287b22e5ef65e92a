"""Parameter importance of a searched (optuna / random) study, from trials.parquet rows.

An Optuna study is rebuilt in memory (distributions from study.yaml's space) and
`optuna.importance.get_param_importances` is asked; nothing of Ray is needed.
"""
from __future__ import annotations

import math
from typing import Any, Optional

from analysis.cells import Table
from analysis.load import Study
from analysis.names import display_in_search
from analysis.selection import marker

MIN_TRIALS = 3


def distributions(spec: dict[str, Any]):
    """{dotted key: optuna distribution} for the space of study.yaml (sub-grids merged)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from catkd.study.keys import subgrids

    dims: dict[str, Any] = {}
    for grid in subgrids(spec.get("space")):
        for key, dim in (grid or {}).items():
            dim = dim or {}
            if "loguniform" in dim:
                lo, hi = dim["loguniform"]
                dims[key] = FloatDistribution(float(lo), float(hi), log=True)
            elif "uniform" in dim:
                lo, hi = dim["uniform"]
                dims[key] = FloatDistribution(float(lo), float(hi))
            elif "randint" in dim:
                lo, hi = dim["randint"]
                dims[key] = IntDistribution(int(lo), int(hi))
            elif "choice" in dim or "grid" in dim:
                dims[key] = CategoricalDistribution(list(dim.get("choice") or dim.get("grid")))
    return dims


def _cast(dist, v: Any) -> Any:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if hasattr(v, "item"):
        v = v.item()
    if isinstance(dist, IntDistribution):
        return int(v)
    if isinstance(dist, CategoricalDistribution):
        for c in dist.choices:  # match the choice's own type (parquet may store 2 as 2.0)
            if c == v or str(c) == str(v):
                return c
        return v
    return float(v)


def importances(study: Study) -> tuple[dict[str, float], list[str]]:
    """({dotted key: importance}, notes). Empty when not searched or fewer than MIN_TRIALS values.
    A study of several searches (one per method) is read search by search: {"<arm> / <key>": ...}."""
    algo = (study.spec.get("search") or {}).get("algorithm")
    if algo not in ("optuna", "random"):
        return {}, [f"no parameter importance: search algorithm is {algo!r}, not optuna/random"]
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    metric = "val_acc" if study.spec.get("metric") == "val_acc" else "test_acc"
    t = study.trials
    if "stage" in t:
        t = t[t["stage"] != "confirm"]
    t = t[t["epochs_done"] > 0] if "epochs_done" in t else t
    e = study.epochs
    if t.empty or e.empty or metric not in e:
        return {}, [f"no parameter importance: no per-epoch {metric} rows"]
    e = e[e["stage"] != "confirm"] if "stage" in e else e
    searches = study.searches()
    if len(searches) <= 1:
        return _fanova(study, t, e, distributions(study.spec), metric)
    out: dict[str, float] = {}
    notes = ["one importance table row per search (each method's own search; a search over one "
             "dimension has importance 1 by definition and is not listed)"]
    for label, constants, space in searches:
        if len(space) < 2:
            continue
        mine = t
        for k, v in constants.items():
            mine = mine[mine[k].astype(str) == str(v)] if k in mine else mine.iloc[0:0]
        imp, why = _fanova(study, mine, e, distributions({"space": space}), metric)
        out.update({f"{label} / {k}": v for k, v in imp.items()})
        notes += [f"{label}: {n}" for n in why]
    return out, notes


def _fanova(study: Study, t, e, dists: dict[str, Any], metric: str) -> tuple[dict[str, float], list[str]]:
    import optuna

    if t.empty:
        return {}, ["no parameter importance: no search trials"]
    # every search trial at one budget: the last epoch all of them reached (ASHA: its first rung), so
    # stopped trials count with the value they had, not only the few that finished
    at = int(t["epochs_done"].min())
    value_at = dict(zip(e.loc[e["epoch"] == at, "trial_id"], e.loc[e["epoch"] == at, metric]))
    direction = "minimize" if study.spec.get("mode") == "min" else "maximize"
    ostudy = optuna.create_study(direction=direction)
    used = 0
    for _, row in t.iterrows():
        value = value_at.get(row["trial_id"])
        if value is None or not math.isfinite(float(value)):
            continue
        params, pdists = {}, {}
        for key, dist in dists.items():
            v = row.get(key)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue  # a conditional dimension that was not active
            try:
                params[key] = _cast(dist, v)
            except (ValueError, TypeError):
                continue
            pdists[key] = dist
        try:
            ostudy.add_trial(optuna.trial.create_trial(params=params, distributions=pdists, value=float(value)))
        except ValueError:
            continue  # a value outside its distribution (e.g. --set changed the space)
        used += 1
    if used < MIN_TRIALS:
        return {}, [f"no parameter importance: {used} search trial(s) with {metric} at epoch {at}, need {MIN_TRIALS}"]
    try:
        imp = optuna.importance.get_param_importances(ostudy)
    except (ValueError, RuntimeError) as exc:
        return {}, [f"no parameter importance: {exc}"]
    return dict(imp), [f"from all {used} search trials, value = {metric} at epoch {at} (the last epoch "
                       f"every search trial reached; ASHA-stopped trials included)"]


def table(study: Study, imp: dict[str, float], notes: list[str]) -> Optional[Table]:
    if not imp and not notes:
        return None
    rows = [[f"{display_in_search(k)} ({k.rpartition(' / ')[2]})", f"{v:.3f}"] for k, v in imp.items()]
    at = next((n.split(" at epoch ")[1].split(" ")[0] for n in notes if n.startswith("from all ")), None)
    when = f", at epoch {at}" if at else ""
    return Table("importance", f"{study.name}: parameter importance (optuna fANOVA{when}){marker(study)}",
                 ["parameter", "importance"], rows, notes)
