"""Run a validated study on Ray Tune: pre-flight checks, Tuner (or restore), live progress, Parquet.

Stages: `search` (the study's searcher and scheduler) then, when the study asks for it, `confirm`
(the top-k configurations re-run at full budget with several seeds, reporting test accuracy).
Everything the trials need is resolved here first (absolute data and teacher paths, the smoke
teacher), so a trial never depends on the driver's working directory.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from catkd.config import Config, data_root, teacher_path
from catkd.fsutil import atomic_write_json, atomic_write_text
from catkd.study import results as res
from catkd.study.spec import (
    ALIASES,
    PRESET_KEY,
    StudyError,
    StudySpec,
    canonical,
    dump_study,
    expand_grid,
    run_config,
)

def say(msg: str) -> None:
    print(f"catkd.study: {msg}", flush=True)


# ---- pre-flight (no Ray yet) --------------------------------------------------------------------
def probe_configs(spec: StudySpec) -> list[Config]:
    """Run configs that cover every finite choice (teachers, presets, datasets) of the study."""
    if spec.search.algorithm == "grid":
        params = expand_grid(spec)
    else:
        params = [{}]
        for name, dim in spec.subgrids[0].items():
            if dim.values is not None and canonical(name) in (PRESET_KEY, "DISTILLER.TEACHER", "DISTILLER.TYPE", "DATASET.TYPE"):
                params = [{**p, name: v} for p in params for v in dim.values]
    return [run_config(spec, p) for p in params]


def preflight(spec: StudySpec, source: str) -> None:
    """Dataset and teacher checkpoints must be there before Ray starts (exit 2 otherwise)."""
    from catkd.distillers import DISTILLERS

    seen: set[str] = set()
    for cfg in probe_configs(spec):
        if cfg.DATASET.TYPE == "cifar100" and not cfg.DATASET.DOWNLOAD:
            d = data_root(cfg) / "cifar-100-python"
            if not (d / "train").is_file():
                raise StudyError(
                    f"{source}: CIFAR-100 not found: looked at {d}. Put the python version there "
                    "(set CATKD_DATA or fixed.DATASET.ROOT), or set fixed.DATASET.DOWNLOAD: true "
                    "where the network allows; --smoke runs on the embedded synthetic data"
                )
        if cfg.DATASET.TYPE == "imagenet":
            d = data_root(cfg) / "imagenet"
            if not (d / "train").is_dir():
                raise StudyError(f"{source}: ImageNet not found: looked at {d}/train and {d}/val (ImageFolder)")
        if DISTILLERS.get(cfg.DISTILLER.TYPE).needs_teacher:
            t = teacher_path(cfg)
            if str(t) not in seen and not t.is_file():
                raise StudyError(
                    f"{source}: teacher {cfg.DISTILLER.TEACHER} not found: looked at {t}. Untar MDistiller's "
                    "cifar_teachers.tar into $CATKD_TEACHERS (default ./download_ckpts/cifar_teachers), "
                    "or run studies/teachers.yaml first"
                )
            seen.add(str(t))


def absolutise(spec: StudySpec) -> tuple[StudySpec, dict[str, str]]:
    """Resolve relative paths against the driver's directory (trials run in their own)."""
    fixed = {canonical(k): v for k, v in spec.fixed.items()}
    for key in ("DATASET.ROOT", "DISTILLER.TEACHER_CKPT"):
        if fixed.get(key):
            fixed[key] = str(Path(fixed[key]).expanduser().resolve())
    env = {
        "CATKD_DATA": str(Path(os.environ.get("CATKD_DATA") or "./data").expanduser().resolve()),
        "CATKD_TEACHERS": str(
            Path(os.environ.get("CATKD_TEACHERS") or "./download_ckpts/cifar_teachers").expanduser().resolve()
        ),
    }
    env.update({k: v for k, v in os.environ.items() if k.startswith("CATKD_INJECT_")})
    base = spec.base
    if Path(base).is_file():
        base = str(Path(base).resolve())
    return spec.model_copy(update={"fixed": fixed, "base": base}), env


def ensure_smoke_teacher(spec: StudySpec, cache: Path) -> Optional[Path]:
    """--smoke: train the small teacher once on the synthetic data and cache it."""
    from catkd.distillers import DISTILLERS
    from catkd.engine import Trainer

    if not any(DISTILLERS.get(c.DISTILLER.TYPE).needs_teacher for c in probe_configs(spec)):
        return None
    cfg = run_config(spec, {}).model_copy(deep=True)
    cfg = cfg.model_validate({
        **cfg.to_dict(),
        "DISTILLER": {"TYPE": "NONE", "STUDENT": spec.smoke.teacher, "TEACHER": spec.smoke.teacher},
        "SOLVER": {**cfg.SOLVER.model_dump(), "EPOCHS": spec.smoke.teacher_epochs, "LR": 0.05,
                   "LR_DECAY_STAGES": [max(1, int(spec.smoke.teacher_epochs * 0.75))]},
        "EXPERIMENT": {**cfg.EXPERIMENT.model_dump(), "SEED": 0},
        "DATASET": {**cfg.DATASET.model_dump(), "REDUCTION": False},
        "CAT_KD": {},
        "RUN": {**cfg.RUN.model_dump(), "PROGRESS": "none"},
    })
    key = hashlib.sha1(json.dumps([cfg.DATASET.model_dump(), cfg.SOLVER.model_dump(), spec.smoke.teacher],
                                  sort_keys=True).encode()).hexdigest()[:12]
    out = cache / f"{spec.smoke.teacher}-{key}"
    path = out / f"ckpt_epoch_{spec.smoke.teacher_epochs}.pth"
    if path.is_file():
        say(f"smoke teacher {spec.smoke.teacher}: cached at {path}")
        return path
    say(f"smoke teacher {spec.smoke.teacher}: training {spec.smoke.teacher_epochs} epochs on the SYNTHETIC data "
        "(once; cached)")
    t0 = time.time()
    result = Trainer(cfg, out_dir=out, log=lambda s: say(f"  teacher {s}")).fit()
    if result.status != "finished":
        raise RuntimeError(f"smoke teacher training {result.status}")
    say(f"smoke teacher: test top-1 {result.last_test_acc:.2f} in {time.time() - t0:.0f}s -> {path}")
    return path


class ResultsWriter:
    """Rebuilds results.parquet / trials.parquet from Tune's trial files; throttled while running."""

    def __init__(self, exp_dir: Path, spec: StudySpec, every_s: float = 5.0):
        self.exp_dir, self.spec, self.every_s = exp_dir, spec, every_s
        self.spec_dict = spec.model_dump(mode="json", exclude_none=True)
        self.last = 0.0

    def write(self, study_done: bool = False, force: bool = True) -> list[dict[str, Any]]:
        now = time.time()
        if not force and now - self.last < self.every_s:
            return []
        self.last = now
        return res.write(self.exp_dir, self.spec_dict, study_done)


# ---- live progress ------------------------------------------------------------------------------
def _short(params: dict[str, Any]) -> str:
    from catkd.study.space import trial_params

    out = []
    for k, v in trial_params(params).items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        if k == PRESET_KEY:
            v = str(v).split("/")[-2] + "/" + str(v).split("/")[-1] if "/" in str(v) else v
        out.append(f"{k}={v}")
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
            say(f"[{stage}] trial {trial.trial_id} FAILED (worker or node lost, failure {trial.num_failures}); "
                "retrying from its last checkpoint")

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


def progress_table(trials, last: dict[str, dict], metric: str, max_rows: int = 12) -> str:
    from tabulate import tabulate

    counts: dict[str, int] = {}
    for t in trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    running = [t for t in trials if t.status == "RUNNING"]
    rest = sorted((t for t in trials if t.status != "RUNNING"),
                  key=lambda t: -(last.get(t.trial_id, {}).get(metric) or -1))
    shown = (running + rest)[:max_rows]
    rows = []
    for t in shown:
        r = last.get(t.trial_id, {})
        v = r.get(metric)
        rows.append([t.trial_id, t.status.lower(), _short(t.config)[:60], r.get("epoch", ""),
                     f"{v:.2f}" if isinstance(v, float) and not math.isnan(v) else ""])
    head = " ".join(f"{k.lower()} {v}" for k, v in sorted(counts.items()))
    more = f"\n  ... {len(trials) - len(shown)} more" if len(trials) > len(shown) else ""
    return f"-- {head} --\n" + tabulate(rows, headers=["trial", "status", "settings", "epoch", metric]) + more


# ---- Ray ----------------------------------------------------------------------------------------
def start_ray(address: Optional[str], dashboard: bool) -> Any:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if ray.is_initialized():
        return None
    kw: dict[str, Any] = {"log_to_driver": False}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ctx = ray.init(address=address, **kw)
    else:
        ctx = ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1", **kw)
    url = getattr(ctx, "dashboard_url", None)
    if url:
        url = url if url.startswith("http") else f"http://{url}"
        say(f"Ray dashboard: {url}")
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "disabled" and not address:
            say("  Ray's token authentication is on: the page asks for the token in "
                f"{Path.home() / '.ray' / 'auth_token'} (API clients send 'Authorization: Bearer <token>')")
    return ctx


def run_stage(
    spec: StudySpec,
    stage: str,
    storage: Path,
    name: str,
    resume: bool,
    env: dict[str, str],
    writer: ResultsWriter,
    params_list: Optional[list[dict[str, Any]]] = None,
) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from catkd.study.search import make_searcher
    from catkd.study.space import param_space
    from catkd.study.trainable import train_trial

    import ray

    metric = spec.metric if stage == "search" else "test_acc"
    gpu = spec.resources.gpu
    if gpu and not ray.cluster_resources().get("GPU"):
        say(f"no GPU in this Ray cluster: trials run on CPU only ({spec.resources.cpu:g} CPU each)")
        gpu = 0
    resources = {"cpu": spec.resources.cpu, "gpu": gpu}
    exp_path = storage / name
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, study=spec.model_dump(mode="json"), env=env, cpus=spec.resources.cpu,
                             exp_path=str(exp_path)),
        resources,
    )
    if resume and tune.Tuner.can_restore(str(exp_path)):
        say(f"[{stage}] resuming {exp_path}")
        tuner = tune.Tuner.restore(str(exp_path), trainable=trainable, resume_errored=True)
    else:
        if stage == "search":
            searcher = make_searcher(spec, metric, spec.mode)
            space = param_space(spec)
            num_samples = spec.search.num_samples if searcher is not None else 1
            if spec.scheduler.type == "asha":
                scheduler = ASHAScheduler(
                    time_attr="epoch",
                    max_t=run_config(spec, {}).SOLVER.EPOCHS,
                    grace_period=spec.scheduler.grace_period,
                    reduction_factor=spec.scheduler.reduction_factor,
                    brackets=spec.scheduler.brackets,
                )
            else:
                scheduler = FIFOScheduler()
        else:  # confirm: explicit grid, full budget, no early stopping
            searcher, scheduler, num_samples = None, FIFOScheduler(), 1
            space = {"grid": tune.grid_search(params_list)}
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=num_samples,
                max_concurrent_trials=spec.max_concurrent,
                metric=metric,
                mode=spec.mode,
                reuse_actors=True,  # a new trial reuses a finished one's worker: no process start or torch import
                trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(storage),
                callbacks=[make_callback(writer, metric, stage)],
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=0,
            ),
        )
    return tuner.fit()


def confirm_params(spec: StudySpec, trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Top-k search configurations (by the study metric at their best epoch) x the confirm seeds."""
    assert spec.confirm is not None
    key = "best_val_acc" if spec.metric == "val_acc" else "best_test_acc"
    pool = [t for t in trials if t["stage"] == "search" and t.get(key) is not None]
    finished = [t for t in pool if t["status"] == "finished"]
    pool = finished if len(finished) >= spec.confirm.top_k else pool
    pool.sort(key=lambda t: t[key], reverse=spec.mode == "max")
    out: list[dict[str, Any]] = []
    seen: list[dict[str, Any]] = []
    for t in pool:
        params = _params_of(Path(t["trial_dir"]))
        params.pop("seed", None)
        if params in seen:
            continue
        seen.append(params)
        for s in spec.confirm.seeds:
            out.append({**params, "seed": s})
        if len(seen) == spec.confirm.top_k:
            break
    return out


def _trials_started(exp_dir: Path) -> bool:
    """Has any trial of this experiment started (Tune wrote its files)?"""
    return bool(res.trial_dirs(exp_dir)) or any(exp_dir.glob("experiment_state-*.json"))


# keys of a saved study.yaml that are not the study: where this machine keeps the smoke teacher
_RUNTIME_KEYS = {"fixed.DISTILLER.TEACHER_CKPT"}


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def check_same_study(spec: StudySpec, saved: Path, source: str) -> None:
    """--resume continues the study that was started, or nothing: compare with the saved study.yaml."""
    try:
        old = yaml.safe_load(saved.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise StudyError(f"{source}: --resume: cannot read the saved {saved} ({e})") from None
    new = yaml.safe_load(dump_study(spec)) or {}
    a, b = _flat(old), _flat(new)
    keys = sorted(k for k in set(a) | set(b) if k not in _RUNTIME_KEYS and a.get(k, "<absent>") != b.get(k, "<absent>"))
    if keys:
        shown = "; ".join(f"{k}: saved {a.get(k, '<absent>')!r}, now {b.get(k, '<absent>')!r}" for k in keys[:8])
        more = f" (and {len(keys) - 8} more)" if len(keys) > 8 else ""
        raise StudyError(
            f"{source}: --resume: this study differs from the one saved in {saved} at {', '.join(keys)}: "
            f"{shown}{more}. Resume with the same file, --set and --smoke, or start a new study with --name"
        )


def _params_of(trial_dir: Path) -> dict[str, Any]:
    from catkd.study.space import trial_params

    return trial_params(json.loads((trial_dir / "params.json").read_text()))


def run_study(
    spec: StudySpec,
    source: str,
    storage: Path,
    name: str,
    resume: bool = False,
    address: Optional[str] = None,
    dashboard: bool = True,
) -> int:
    """Run (or resume) the study; returns the process exit code.

    `study.yaml` is written before anything slow (the smoke teacher, Ray), so a study killed at any
    moment leaves a directory `--resume` accepts; one killed before its first trial started may also
    be started afresh. `--resume` refuses (exit 2, nothing written) a study that differs from the
    saved one.
    """
    storage = storage.expanduser().resolve()
    exp_dir = storage / name
    saved = exp_dir / "study.yaml"
    spec, env = absolutise(spec)
    started = _trials_started(exp_dir)
    if exp_dir.exists() and not resume and started:
        raise StudyError(f"{source}: {exp_dir} already exists; use --resume to continue it or --name for a new study")
    if resume and not exp_dir.exists():
        raise StudyError(f"{source}: --resume: no study at {exp_dir} (nothing to resume)")
    if resume and saved.is_file():
        check_same_study(spec, saved, source)
    os.environ.update(env)
    if not spec.smoke_mode:
        preflight(spec, source)
    try:
        exp_dir.mkdir(parents=True, exist_ok=True)
        probe = exp_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise StudyError(f"{source}: --storage: cannot write to {exp_dir} ({e.strerror or e})") from None
    if not (resume and saved.is_file()):
        atomic_write_text(saved, dump_study(spec))  # first: a kill from here on is resumable
    if spec.smoke_mode:
        teacher = ensure_smoke_teacher(spec, storage / ".cache" / "teachers")
        if teacher is not None:  # where this machine keeps it: runtime, not part of the study
            spec = spec.model_copy(update={"fixed": {**spec.fixed, "DISTILLER.TEACHER_CKPT": str(teacher)}})
    state_path = exp_dir / "stage.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    writer = ResultsWriter(exp_dir, spec)
    smoke = " (SMOKE: synthetic data, small models)" if spec.smoke_mode else ""
    say(f"study {spec.name}{smoke}: experiment directory {exp_dir}")
    t0 = time.time()
    start_ray(address, dashboard)
    if state.get("search") != "done":
        atomic_write_json(state_path, {**state, "search": "running"})
        run_stage(spec, "search", storage, name, resume, env, writer)
        state["search"] = "done"
        atomic_write_json(state_path, state)
    if spec.confirm is not None and state.get("confirm") != "done":
        trials = writer.write(study_done=False)
        params = confirm_params(spec, trials)
        if params:
            say(f"[confirm] re-running the top {spec.confirm.top_k} configurations x seeds "
                f"{spec.confirm.seeds} at full budget ({len(params)} trials), reporting test accuracy")
            state["confirm"] = "running"
            atomic_write_json(state_path, state)
            run_stage(spec, "confirm", exp_dir, "confirm", resume and (exp_dir / "confirm").exists(),
                      env, writer, params)
        state["confirm"] = "done"
        atomic_write_json(state_path, state)
    trials = writer.write(study_done=True)
    say(f"done in {time.time() - t0:.0f}s: " + ", ".join(
        f"{sum(1 for t in trials if t['status'] == s)} {s}" for s in res.STATUSES if any(t["status"] == s for t in trials)))
    print(summary_table(trials, spec), flush=True)
    report = Path("analysis/report.py")
    hint = f"; report: python {report} {exp_dir}" if report.is_file() else ""
    say(f"results: {exp_dir / 'results.parquet'} and {exp_dir / 'trials.parquet'}{hint}")
    return 0


def summary_table(trials: list[dict[str, Any]], spec: StudySpec, top: int = 10) -> str:
    """The best trials by the study metric (validation when tuned on it: nothing picked on test)."""
    from tabulate import tabulate

    key = "best_val_acc" if spec.metric == "val_acc" else "best_test_acc"
    shown = ["best_val_acc", "test_acc_at_best_val", "last_test_acc"] if spec.metric == "val_acc" else \
        ["best_test_acc", "last_test_acc"]
    dims = [canonical(d) for d in spec.dimension_names] + ["EXPERIMENT.SEED"]
    rows = sorted(trials, key=lambda t: (t["stage"] != "confirm", -(t.get(key) or -1)))[:top]
    inv = {v: k for k, v in ALIASES.items()}
    headers = ["stage", "trial", "status", *[inv.get(d, d) for d in dims], "epochs", *shown]
    body = [[t["stage"], t["trial_id"], t["status"], *[t.get(d) for d in dims], t["epochs_done"],
             *[t.get(c) for c in shown]] for t in rows]
    title = (f"{spec.name}{' [SMOKE, synthetic data]' if spec.smoke_mode else ''}: top {len(rows)} of "
             f"{len(trials)} trials by {key}")
    return title + "\n" + tabulate(body, headers=headers, floatfmt=".2f")
