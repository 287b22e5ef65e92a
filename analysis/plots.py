"""Plots of a study (matplotlib, Agg backend, PNG files)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.load import Study  # noqa: E402
from analysis.cells import stats  # noqa: E402
from analysis.names import AXIS, BETA, RES, UNLABELLED, display, display_in_search  # noqa: E402
from analysis.selection import epoch_label, groups, marker, resolve_epoch, value_column  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _title(study: Study, text: str) -> str:
    return f"{study.name}: {text}{marker(study)}"


def accuracy_vs(study: Study, key: str, label: str, out: Path, epoch: str, log: bool) -> Optional[Path]:
    """Mean ± std of top-1 per value of `key` (search and confirm trials, grouped over seeds)."""
    value = value_column(epoch)
    t = study.trials
    if key not in t or t.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    stage = t["stage"] if "stage" in t else pd.Series(["search"] * len(t), index=t.index)
    status = t["status"] if "status" in t else pd.Series(["finished"] * len(t), index=t.index)
    search = t[stage != "confirm"]
    parts = [("search, finished", search[status[search.index] != "stopped"], "o"),
             ("search, stopped early by ASHA", search[status[search.index] == "stopped"], "x"),
             ("confirm (new seeds)", t[stage == "confirm"], "s")]
    for name, sub, fmt in parts:
        if sub.empty:
            continue
        pts = []
        for g in groups(sub):
            mean, std, n = stats(g.trials[value])
            if n and g.get(key) is not None:
                pts.append((float(g.get(key)), mean, std or 0.0))
        if not pts:
            continue
        pts.sort()
        x, y, e = map(np.array, zip(*pts))
        ax.errorbar(x, y, yerr=e, fmt=fmt, capsize=3, label=name)
    if log:
        ax.set_xscale("log")
    else:  # R and the like are whole numbers: no 2.25 ticks
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(label)
    ax.set_ylabel(epoch_label(epoch), fontsize=8)
    ax.set_title(_title(study, f"top-1 vs {label}"), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out)


def learning_curves(study: Study, out: Path, epoch: str, top: int = 5) -> Optional[Path]:
    """test_acc per epoch of the `top` best trials (by the reported top-1)."""
    e, t = study.epochs, study.trials
    if e.empty or "test_acc" not in e:
        return None
    value = value_column(epoch)
    best = t.sort_values(value, ascending=False).head(top)
    fig, ax = plt.subplots(figsize=(6, 4))
    for _, row in best.iterrows():
        c = e[e["trial_id"] == row["trial_id"]].sort_values("epoch")
        if len(c):
            ax.plot(c["epoch"], c["test_acc"], marker=".", label=f"{_settings_label(study, row)} ({row.get('stage', '')})")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("test top-1 %")
    ax.set_title(_title(study, f"learning curves, best {len(best)} trials"), fontsize=9)
    ax.grid(alpha=0.3)
    _legend(ax, fig)
    return _save(fig, out)


def _search(study: Study) -> pd.DataFrame:
    t = study.trials
    return t[t["stage"] != "confirm"] if "stage" in t else t


def _active(study: Study, key: str, row) -> bool:
    """Does the trial's sub-grid sample `key`? (cam_count only when partial_cams is on, ...): a
    setting its `when:` turns off holds a default the study never varied for that trial."""
    from catkd.study.keys import subgrids

    dims = [g[key] for g in subgrids(study.spec.get("space")) if isinstance(g, dict) and isinstance(g.get(key), dict)]
    return not dims or any(all(row.get(k) == v for k, v in (d.get("when") or {}).items()) for d in dims)


def _settings_label(study: Study, row) -> str:
    """A trial named by its searched settings (β=12.5 R=2), not by its id; in a study of several
    searches, by its search's constants (the method) and that search's settings."""
    parts, keys = [], study.space_keys()
    searches = study.searches()
    if len(searches) > 1:
        for _, constants, space in searches:
            if all(str(row.get(k)) == str(v) for k, v in constants.items()):
                parts = [str(v) for v in constants.values()]
                keys = list(space)
                break
    for key in keys:
        v = row.get(key)
        if v is None or (isinstance(v, float) and np.isnan(v)) or key in UNLABELLED or not _active(study, key, row):
            continue
        parts.append(f"{display(key)}={v:.3g}" if isinstance(v, float) else f"{display(key)}={v}")
    return " ".join(parts) or str(row.get("trial_id"))[-5:]


def _legend(ax, fig) -> None:
    """The legend inside the axes, or below them when its labels are long (they would hide the lines)."""
    labels = ax.get_legend_handles_labels()[1]
    if max((len(x) for x in labels), default=0) <= 40:
        ax.legend(fontsize=7)
        return
    fig.set_size_inches(max(6.0, 0.055 * max(len(x) for x in labels)), 4 + 0.16 * len(labels))
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), frameon=False)


def asha_picture(study: Study, out: Path) -> Optional[Path]:
    """Epochs each search trial ran (bar per trial, colour by status), budget as a dashed line."""
    t = _search(study)
    if t.empty or "epochs_done" not in t:
        return None
    t = t.reset_index(drop=True)
    colours = {"finished": "tab:green", "stopped": "tab:orange", "diverged": "tab:red",
               "error": "black", "running": "tab:blue"}
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(t) + 2), 4))
    ax.bar(range(len(t)), t["epochs_done"], color=[colours.get(s, "grey") for s in t.get("status", [])])
    if "epochs_budget" in t and t["epochs_budget"].notna().any():
        ax.axhline(float(t["epochs_budget"].max()), ls="--", color="grey", lw=1, label="budget")
    ax.set_xticks(range(len(t)))
    ax.set_xticklabels([_settings_label(study, row) for _, row in t.iterrows()], rotation=90, fontsize=7)
    ax.set_ylabel("epochs run")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for s, c in colours.items():
        if "status" in t and (t["status"] == s).any():
            ax.bar([0], [0], color=c, label=s)
    ax.legend(fontsize=7)
    asha = (study.spec.get("scheduler") or {}).get("type") == "asha"
    ax.set_title(_title(study, "epochs each trial ran" + (" (ASHA)" if asha else "")), fontsize=9)
    return _save(fig, out)


def parallel_coordinates(study: Study, out: Path, dims: list[str], epoch: str) -> Optional[Path]:
    """Searched dimensions and the metric on normalised [0, 1] axes, one line per search trial."""
    t = _search(study)
    value = value_column(epoch)
    dims = [d for d in dims if d in t]
    if t.empty or not dims:
        return None
    cols = dims + [value]
    data = []
    for c in cols:
        s = t[c]
        if c == BETA or (s.dtype.kind == "f" and (s > 0).all() and s.max() / max(s.min(), 1e-12) > 100):
            s = np.log10(s.astype(float))
        elif s.dtype.kind not in "fiu":
            s = pd.Series(pd.Categorical(s.astype(str)).codes, index=s.index).astype(float)
        s = s.astype(float)
        lo, hi = s.min(), s.max()
        data.append((s - lo) / (hi - lo) if hi > lo else s * 0 + 0.5)
    m = np.vstack([d.to_numpy() for d in data]).T
    acc = t[value].astype(float).to_numpy()
    norm = plt.Normalize(np.nanmin(acc), np.nanmax(acc))
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(cols)), 4))
    for row, a in zip(m, acc):
        ax.plot(range(len(cols)), row, color=plt.cm.viridis(norm(a)), alpha=0.8)
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([display(c) + (" (log)" if c == BETA else "") for c in cols], fontsize=8)
    ax.set_ylabel("normalised")
    ax.set_title(_title(study, "parallel coordinates (search trials)"), fontsize=8)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=ax, label="top-1 %")
    return _save(fig, out)


def importance_bar(importances: dict[str, float], study: Study, out: Path) -> Optional[Path]:
    if not importances:
        return None
    names = list(importances)
    fig, ax = plt.subplots(figsize=(6, 1 + 0.5 * len(names)))
    ax.barh([display_in_search(n) for n in names][::-1], [importances[n] for n in names][::-1])
    ax.set_xlabel("importance (fANOVA, optuna)")
    ax.set_title(_title(study, "parameter importance"), fontsize=9)
    return _save(fig, out)


def all_plots(study: Study, out_dir: Path, epoch: str = "auto") -> list[Path]:
    """Every plot of a study; values as the tables show them (the same epoch mode)."""
    epoch = resolve_epoch(study, epoch)
    out_dir = Path(out_dir)
    made: list[Optional[Path]] = []
    from analysis.layouts import layout_of

    if layout_of(study) == "beta_sweep":
        made.append(accuracy_vs(study, BETA, AXIS[BETA], out_dir / "accuracy_vs_beta.png", epoch, True))
    if layout_of(study) in ("cam_resolution", "beta_sweep"):
        made.append(accuracy_vs(study, RES, AXIS[RES], out_dir / "accuracy_vs_R.png", epoch, False))
    made.append(learning_curves(study, out_dir / "learning_curves.png", epoch))
    made.append(asha_picture(study, out_dir / "epochs_per_trial.png"))
    # one picture of every searched dimension: for one search (a study of several searches, one per
    # method, searches different settings in each: their axes would mix)
    if (study.spec.get("search") or {}).get("algorithm") in ("optuna", "random") and len(study.searches()) <= 1:
        made.append(parallel_coordinates(study, out_dir / "parallel_coordinates.png", study.space_keys(), epoch))
    if layout_of(study) == "tuned_baselines":
        made.append(preset_vs_tuned(study, out_dir / "preset_vs_tuned.png", epoch))
    if layout_of(study) == "partial_cams":
        made.append(partial_cams_plot(study, out_dir / "accuracy_vs_n.png", epoch))
    from analysis.layouts import FIGURES

    made += [fig(study, out_dir, epoch) for fig in FIGURES.get(layout_of(study), [])]
    return [p for p in made if p is not None]


def preset_vs_tuned(study: Study, out: Path, epoch: str) -> Optional[Path]:
    """Per method: the preset's and the tuned configuration's test top-1 over the confirm seeds
    (mean, with each seed as a dot), side by side."""
    from analysis.layouts.common import method_info

    value = value_column(epoch)
    t = study.trials
    if "stage" not in t or "role" not in t:
        return None
    c = t[t["stage"] == "confirm"]
    if c.empty:
        return None
    types = list(dict.fromkeys(c["DISTILLER.TYPE"].astype(str)))
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(types) + 2), 4))
    for j, (role, colour, dx) in enumerate((("preset", "tab:grey", -0.15), ("tuned", "tab:blue", 0.15))):
        for i, typ in enumerate(types):
            vals = pd.to_numeric(c[(c["DISTILLER.TYPE"].astype(str) == typ) & (c["role"] == role)][value],
                                 errors="coerce").dropna()
            if vals.empty:
                continue
            ax.scatter([i + dx] * len(vals), vals, s=12, color=colour, alpha=0.5)
            ax.plot([i + dx - 0.1, i + dx + 0.1], [vals.mean()] * 2, color=colour, lw=2,
                    label=role if i == 0 else None)
    ax.set_xticks(range(len(types)))
    ax.set_xticklabels([method_info(x)[0] for x in types], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(epoch_label(epoch), fontsize=8)
    ax.legend(fontsize=8)
    ax.set_title(_title(study, "preset vs tuned at the same budget (confirm seeds; line = mean)"), fontsize=9)
    return _save(fig, out)


def _seeds(points) -> str:
    """How many seeds a line's points hold, for its legend: "3 seeds", "1-3 seeds", "1 seed (n=1)"."""
    counts = sorted({p.seeds for p in points})
    if counts == [1]:
        return "1 seed (n=1): no interval"
    return (f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}") + " seeds"


def partial_cams_plot(study: Study, out: Path, epoch: str) -> Optional[Path]:
    """The paper's partial-CAM figure: top-1 against n, the number of classes whose CAMs are transferred,
    the n top-scoring and the n lowest-scoring classes as two lines (mean over seeds, 95 % Student t
    interval), the run with every class's CAMs as a horizontal line with its 95 % band shaded."""
    import textwrap

    from analysis.layouts.partial_cams import figure_data

    data = figure_data(study, epoch)
    if not data.lines and data.reference is None:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    ref = data.reference
    if ref is not None:
        ax.axhline(ref.mean, color="tab:grey", ls="--", lw=1.5,
                   label=f"all {data.classes} classes ({_seeds([ref])})" + ("; shaded: its 95 % CI" if ref.half else ""))
        if ref.half is not None:
            ax.axhspan(ref.mean - ref.half, ref.mean + ref.half, color="tab:grey", alpha=0.2, lw=0)
    styles = {"top-n": ("tab:blue", "o", "the n top-scoring classes"),
              "lowest-n": ("tab:orange", "s", "the n lowest-scoring classes")}
    ns = sorted({n for pts in data.lines.values() for n, _ in pts})
    # the lines share their x: each is nudged sideways a little so that its intervals do not hide the other's
    step = 0.012 * ((ns[-1] - ns[0]) if len(ns) > 1 else 10)
    for i, (label, pts) in enumerate(data.lines.items()):
        colour, mark, what = styles.get(label, (None, "^", label))
        dx = (i - (len(data.lines) - 1) / 2) * step
        ax.errorbar([n + dx for n, _ in pts], [p.mean for _, p in pts], yerr=[p.half or 0.0 for _, p in pts],
                    color=colour, marker=mark, capsize=4, lw=1.5,
                    label=f"{label}: {what} ({_seeds([p for _, p in pts])})")
    if ns:
        ax.set_xticks(ns)
        pad = max(1.0, 0.06 * (ns[-1] - ns[0]))
        ax.set_xlim(ns[0] - pad, ns[-1] + pad)
    ax.set_xlabel(f"n: classes whose CAMs are transferred (of {data.classes})")
    ax.set_ylabel("top-1 %")
    ax.set_title(_title(study, "top-1 vs the number of transferred CAMs") + "\n"
                 + textwrap.fill(epoch_label(epoch), 100), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False,
              title="mean over seeds ± 95 % Student t interval; a point of 1 seed (n=1) has none",
              title_fontsize=8)
    return _save(fig, out)
