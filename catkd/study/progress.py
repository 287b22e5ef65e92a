"""What a running study prints: one line per trial event, a throttled live table, the final summary."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catkd.study.keys import short_name
from catkd.study.results import PRESET_KEY, SEED_KEY

if TYPE_CHECKING:
    from catkd.study.results import ResultsWriter
    from catkd.study.spec import StudySpec


def say(msg: str) -> None:
    print(f"catkd.study: {msg}", flush=True)


# ---- live progress ------------------------------------------------------------------------------
def _short(params: dict[str, Any]) -> str:
    from catkd.study.space import trial_params

    out = []
    for k, v in trial_params(params).items():
        if v == "":  # a label with nothing to say (a transfer source without other settings)
            continue
        if isinstance(v, float):
            v = f"{v:.4g}"
        if k == PRESET_KEY:
            v = str(v).split("/")[-2] + "/" + str(v).split("/")[-1] if "/" in str(v) else v
        out.append(f"{short_name(k)}={v}")
    return " ".join(out)


def make_callback(writer: ResultsWriter, metric: str, stage: str, table_every_s: float = 30.0):
    from ray.tune import Callback

    class StudyProgress(Callback):
        """One line per trial event, a compact table now and then, Parquet kept current."""

        def __init__(self):
            self.last_table = time.time()
            self.last_result: dict[str, dict] = {}

        def on_trial_start(self, iteration, trials, trial, **info):
            say(f"[{stage}] trial {trial.trial_id} started: {_short(trial.config)}")

        def on_trial_restore(self, iteration, trials, trial, **info):
            say(f"[{stage}] trial {trial.trial_id} restored from its checkpoint")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.last_result[trial.trial_id] = result
            writer.write(force=False)
            self._maybe_table(trials)

        def on_trial_complete(self, iteration, trials, trial, **info):
            r = self.last_result.get(trial.trial_id, {})
            ep, budget = r.get("epoch"), r.get("epochs_budget")
            value = r.get(metric)
            if r.get("status") == "diverged":
                what = f"DIVERGED (non-finite loss) after epoch {ep}; not retried"
            elif ep is not None and budget is not None and ep < budget:
                what = f"stopped early by the scheduler at epoch {ep}/{budget} ({metric} {value:.2f})"
            else:
                what = f"finished {ep} epochs ({metric} {value:.2f})" if value is not None else "finished"
            say(f"[{stage}] trial {trial.trial_id} {what}")
            writer.write()

        def on_trial_recover(self, iteration, trials, trial, **info):
            say(f"[{stage}] trial {trial.trial_id} FAILED ({failure_reason(trial.error_file)}, failure "
                f"{trial.num_failures}); retrying from its last checkpoint")

        def on_trial_error(self, iteration, trials, trial, **info):
            say(f"[{stage}] trial {trial.trial_id} ERROR (failure {trial.num_failures}); see {trial.path}/error.txt")
            writer.write()

        def on_experiment_end(self, trials, **info):
            writer.write()

        def _maybe_table(self, trials):
            if time.time() - self.last_table < table_every_s:
                return
            self.last_table = time.time()
            print(progress_table(trials, self.last_result, metric), flush=True)

    return StudyProgress()


_LOST = ("ActorDiedError", "RayActorError", "NodeDiedError", "WorkerCrashedError", "actor died", "died unexpectedly")


def failure_reason(error_file: Any) -> str:
    """The last failure in Tune's error.txt in a few words: "worker or node lost" when Ray lost the
    trial's process or node (or the file says nothing), else the exception's own last line."""
    try:
        last = Path(error_file).read_text(errors="replace").rsplit("Failure # ", 1)[-1]
    except (OSError, TypeError):
        return "worker or node lost"
    lines = [line.strip() for line in last.splitlines()[1:] if line.strip()]  # [0]: "<n> (occurred at ...)"
    if not lines or any(w in last for w in _LOST):
        return "worker or node lost"
    return lines[-1] if len(lines[-1]) <= 160 else lines[-1][:157] + "..."


def _asks_gpu(trial) -> bool:
    """Whether Ray was asked for a GPU for this trial (the study's resources, as the trial holds them)."""
    pgf = getattr(trial, "placement_group_factory", None)
    return bool(getattr(pgf, "required_resources", {}).get("GPU"))


def progress_table(trials, last: dict[str, dict], metric: str, max_rows: int = 12) -> str:
    """Running trials first, then the best. A study that asks for GPUs gets a `gpu` column: the ids
    Ray gave each trial, as it reported them (blank before its first report)."""
    from tabulate import tabulate

    counts: dict[str, int] = {}
    for t in trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    running = [t for t in trials if t.status == "RUNNING"]
    rest = sorted((t for t in trials if t.status != "RUNNING"),
                  key=lambda t: -(last.get(t.trial_id, {}).get(metric) or -1))
    shown = (running + rest)[:max_rows]
    gpus = any(_asks_gpu(t) for t in trials)
    rows = []
    for t in shown:
        r = last.get(t.trial_id, {})
        v = r.get(metric)
        rows.append([t.trial_id, t.status.lower(), _short(t.config)[:60], *([r.get("gpu_ids", "")] if gpus else []),
                     r.get("epoch", ""), f"{v:.2f}" if isinstance(v, float) and not math.isnan(v) else ""])
    head = " ".join(f"{k.lower()} {v}" for k, v in sorted(counts.items()))
    more = f"\n  ... {len(trials) - len(shown)} more" if len(trials) > len(shown) else ""
    headers = ["trial", "status", "settings", *(["gpu"] if gpus else []), "epoch", metric]
    # the gpu column is text ("0,1" lists ids; it is no number)
    return f"-- {head} --\n" + tabulate(rows, headers=headers, disable_numparse=[3] if gpus else False) + more


def _word(key: str, v: Any) -> Any:
    """A recorded setting in the study's words (CAT_KD.Strategy 0/1 -> top/lowest)."""
    from catkd.distillers.cat_kd import STRATEGY_WORDS

    if key == "CAT_KD.Strategy":
        return {i: w for w, i in STRATEGY_WORDS.items()}.get(v, v)
    return v


def _settings(t: dict[str, Any], spec: StudySpec) -> list[Any]:
    """The trial's value of each study dimension, or "-" where the sub-grid the trial comes from
    lacks that dimension or its `when:` is not met: its config then holds a default the study never
    varied for it."""
    rec = {d: _word(d, t.get(d)) for g in spec.subgrids for d in g}

    def met(g, d) -> bool:
        return all(rec.get(k) == _word(k, v) for k, v in (g[d].when or {}).items())

    def holds(g) -> bool:  # every listed value the trial has fits this sub-grid (ranges always do)
        return all(g[d].values is None or rec[d] is None or rec[d] in [_word(d, v) for v in g[d].values]
                   for d in g if met(g, d))

    mine = [g for g in spec.subgrids if holds(g)]
    return [rec[n] if any(n in g and met(g, n) for g in mine) else "-" for n in spec.dimension_names]


def summary_table(trials: list[dict[str, Any]], spec: StudySpec, top: int = 10) -> str:
    """The best trials by the study metric (validation when tuned on it: nothing picked on test)."""
    from tabulate import tabulate

    key = "best_val_acc" if spec.metric == "val_acc" else "best_test_acc"
    shown = ["best_val_acc", "test_acc_at_best_val", "last_test_acc"] if spec.metric == "val_acc" else \
        ["best_test_acc", "last_test_acc"]
    dims = [*spec.dimension_names, SEED_KEY]
    rows = sorted(trials, key=lambda t: (t["stage"] != "confirm", -(t.get(key) or -1)))[:top]
    if len(spec.dimension_names) > 6:  # one search per method: each trial's own settings in one column
        headers = ["stage", "trial", "status", "settings", "seed", "epochs", *shown]
        body = [[t["stage"], t["trial_id"], t["status"], _compact(t, spec), t.get("EXPERIMENT.SEED"),
                 t["epochs_done"], *[t.get(c) for c in shown]] for t in rows]
    else:
        headers = ["stage", "trial", "status", *[short_name(d) for d in dims], "epochs", *shown]
        body = [[t["stage"], t["trial_id"], t["status"],
                 *_settings(t, spec), t.get("EXPERIMENT.SEED"), t["epochs_done"],
                 *[t.get(c) for c in shown]] for t in rows]
    from catkd.study.spec import SMOKE_DATA

    data = SMOKE_DATA[spec.smoke.data]
    title = (f"{spec.name}{f' [SMOKE, {data}]' if spec.smoke_mode else ''}: top {len(rows)} of "
             f"{len(trials)} trials by {key}")
    return title + "\n" + tabulate(body, headers=headers, floatfmt=".2f")


def _compact(t: dict[str, Any], spec: StudySpec) -> str:
    """`method=KD KD.TEMPERATURE=4.81`: the study dimensions this trial has (and its role)."""
    parts = []
    for name, v in zip(spec.dimension_names, _settings(t, spec)):
        if v not in ("-", None, ""):
            parts.append(f"{short_name(name)}={v:.4g}" if isinstance(v, float) else f"{short_name(name)}={v}")
    if t.get("role"):
        parts.append(f"role={t['role']}")
    return " ".join(parts)
