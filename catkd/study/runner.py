"""Run a validated study on Ray Tune: the experiment directory, resume, the stages in order, Parquet.

Pre-flight lives in catkd.study.preflight, the Tuners in catkd.study.stages, what is printed in
catkd.study.progress.

Stages: `search` (the study's searcher and scheduler) then, when the study asks for it, `confirm`
(the top-k configurations re-run at full budget with several seeds, reporting test accuracy).
Everything the trials need is resolved here first (absolute data and teacher paths, the smoke
teacher), so a trial never depends on the driver's working directory.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

import yaml

from catkd.config import flatten
from catkd.fsutil import atomic_write_json, atomic_write_text
from catkd.study import prefetch as prefetch_mod
from catkd.study import results as res
from catkd.study.preflight import absolutise, ensure_smoke_teacher, preflight
from catkd.study.progress import say, summary_table
from catkd.study.keys import short_name
from catkd.study.spec import StudyError, StudySpec, dump_study, separate_searches
from catkd.study.stages import confirm_params, run_stage, start_ray, teacher_cache_env
from catkd.teacher_cache.provider import ENV_DIR


def _trials_started(exp_dir: Path) -> bool:
    """Has any trial of this experiment started (Tune wrote its files)?"""
    return bool(res.trial_dirs(exp_dir)) or any(exp_dir.glob("experiment_state-*.json"))


# keys of a saved study.yaml that are not the study: where this machine keeps the smoke teacher
_RUNTIME_KEYS = {"fixed.DISTILLER.TEACHER_CKPT"}


def check_same_study(spec: StudySpec, saved: Path, source: str) -> None:
    """--resume continues the study that was started, or nothing: compare with the saved study.yaml."""
    try:
        old = yaml.safe_load(saved.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise StudyError(f"{source}: --resume: cannot read the saved {saved} ({e})") from None
    new = yaml.safe_load(dump_study(spec)) or {}
    a, b = flatten(old), flatten(new)
    keys = sorted(k for k in set(a) | set(b) if k not in _RUNTIME_KEYS and a.get(k, "<absent>") != b.get(k, "<absent>"))
    if keys:
        shown = "; ".join(f"{k}: saved {a.get(k, '<absent>')!r}, now {b.get(k, '<absent>')!r}" for k in keys[:8])
        more = f" (and {len(keys) - 8} more)" if len(keys) > 8 else ""
        raise StudyError(
            f"{source}: --resume: this study differs from the one saved in {saved} at {', '.join(keys)}: "
            f"{shown}{more}. Resume with the same file, --set and --smoke, or start a new study with --name"
        )


def run_study(
    spec: StudySpec,
    source: str,
    storage: Path,
    name: str,
    resume: bool = False,
    address: Optional[str] = None,
    dashboard: bool = True,
    trackers: tuple[str, ...] = (),
    prefetch: bool = True,
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
    # the teacher cache of every trial: one store per key under the storage directory (node-local
    # when the cluster has several nodes: see stages.teacher_cache_env)
    env.setdefault(ENV_DIR, os.environ.get(ENV_DIR) or str(storage / ".cache" / "teacher"))
    started = _trials_started(exp_dir)
    if exp_dir.exists() and not resume and started:
        raise StudyError(f"{source}: {exp_dir} already exists; use --resume to continue it or --name for a new study")
    if resume and not exp_dir.exists():
        raise StudyError(f"{source}: --resume: no study at {exp_dir} (nothing to resume)")
    if resume and saved.is_file():
        check_same_study(spec, saved, source)
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return _run(spec, source, storage, name, resume, address, dashboard, trackers, prefetch, exp_dir, saved,
                    env)
    finally:  # a library caller's next study must not inherit this one's data, teacher or cache paths
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run(spec: StudySpec, source: str, storage: Path, name: str, resume: bool, address: Optional[str],
         dashboard: bool, trackers: tuple[str, ...], prefetch: bool, exp_dir: Path, saved: Path,
         env: dict[str, str]) -> int:
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
    writer = res.ResultsWriter(exp_dir, spec.model_dump(mode="json", exclude_none=True))
    smoke = " (SMOKE: synthetic data, small models)" if spec.smoke_mode else ""
    say(f"study {spec.name}{smoke}: experiment directory {exp_dir}")
    t0 = time.time()
    prefetcher = _start_prefetch(spec, env, exp_dir, address) if prefetch else []
    try:
        _run_stages(spec, storage, name, resume, address, dashboard, env, writer, trackers, state, state_path,
                    exp_dir, prefetcher)
    finally:
        prefetch_mod.stop(prefetcher)  # before the final results: its counts are then complete
    trials = writer.write(study_done=True)
    say(f"done in {time.time() - t0:.0f}s: " + ", ".join(
        f"{sum(1 for t in trials if t['status'] == s)} {s}" for s in res.STATUSES if any(t["status"] == s for t in trials)))
    print(summary_table(trials, spec), flush=True)
    report = Path("analysis/report.py")
    hint = f"; report: python {report} {exp_dir}" if report.is_file() else ""
    say(f"results: {exp_dir / 'results.parquet'} and {exp_dir / 'trials.parquet'}{hint}")
    return 0


def _start_prefetch(spec: StudySpec, env: dict[str, str], exp_dir: Path, address: Optional[str]):
    """The teacher prefetch process where it can help: a local, CPU-only study with the cache on."""
    import torch

    if address or os.environ.get("RAY_ADDRESS"):
        say("teacher prefetch: off (an existing Ray cluster: its trials may run on other machines)")
        return []
    if spec.resources.gpu and torch.cuda.is_available():
        say("teacher prefetch: off (trials run on the GPU, where the teacher is cheap)")
        return []
    return prefetch_mod.start(spec, env, exp_dir)


def _run_arms(spec, study_arms, resume, env, writer, trackers, state, state_path, exp_dir) -> None:
    """One search per arm, one after another, each its own Tune experiment (<study>/arms/<arm>),
    Optuna study and scheduler: every arm gets the same budget, and ASHA never stops one arm's
    trial for being behind another arm's (a method's trials compete only with that method's)."""
    base = exp_dir / res.ARMS_DIR
    for i, arm in enumerate(study_arms, 1):
        key = f"search:{arm.label}"
        if state.get(key) == "done":
            continue
        shown = ", ".join(f"{short_name(k)}={v}" for k, v in arm.constants.items())
        say(f"[search {i}/{len(study_arms)}] {shown}: {spec.search.num_samples} trials over "
            f"{', '.join(short_name(k) for k in arm.space)}")
        state[key] = "running"
        atomic_write_json(state_path, state)
        run_stage(spec, "search", base, arm.label, resume and (base / arm.label).exists(), env, writer,
                  trackers=trackers, study_dir=exp_dir, arm=arm)
        state[key] = "done"
        atomic_write_json(state_path, state)


def _run_stages(spec, storage, name, resume, address, dashboard, env, writer, trackers, state, state_path,
                exp_dir, prefetcher) -> None:
    start_ray(address, dashboard)
    if teacher_cache_env(env, explicit=bool(os.environ.get(ENV_DIR))) > 1 and prefetcher:
        say("teacher prefetch: stopped (a cluster of several nodes: trials may run elsewhere)")
        prefetch_mod.stop(prefetcher)
    if state.get("search") != "done":
        state["search"] = "running"
        atomic_write_json(state_path, state)
        study_arms = separate_searches(spec)
        if study_arms:
            _run_arms(spec, study_arms, resume, env, writer, trackers, state, state_path, exp_dir)
        else:
            run_stage(spec, "search", storage, name, resume, env, writer, trackers=trackers)
        state["search"] = "done"
        atomic_write_json(state_path, state)
    if spec.confirm is not None and state.get("confirm") != "done":
        trials = writer.write(study_done=False)
        params = confirm_params(spec, trials)
        if params:
            each = " of each search" if separate_searches(spec) else ""
            ref = " and the preset settings" if spec.confirm.preset else ""
            say(f"[confirm] re-running the top {spec.confirm.top_k} configuration(s){each}{ref} x seeds "
                f"{spec.confirm.seeds} at full budget ({len(params)} trials), reporting test accuracy")
            state["confirm"] = "running"
            atomic_write_json(state_path, state)
            run_stage(spec, "confirm", exp_dir, "confirm", resume and (exp_dir / "confirm").exists(),
                      env, writer, params, trackers=trackers, study_dir=exp_dir)
        state["confirm"] = "done"
        atomic_write_json(state_path, state)


