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
from typing import Optional, Union

import yaml

from catkd.config import flatten
from catkd.fsutil import atomic_write_json, atomic_write_text, user_cache_dir
from catkd.study import prefetch as prefetch_mod
from catkd.study import results as res
from catkd.study.preflight import absolutise, ensure_smoke_teacher, preflight
from catkd.study.smoke import smoke_data
from catkd.study.sources import ensure_smoke_students, probes_students
from catkd.study.progress import say, summary_table
from catkd.study.keys import short_name
from catkd.study.spec import SMOKE_DATA, StudyError, StudySpec, dump_study, separate_searches
from catkd.study.stages import confirm_params, run_stage, start_ray, teacher_cache_env
from catkd.storage import Location, Mirror, location, scratch_dir
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
    storage: Union[Path, Location],
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
    saved one. `storage` in object storage: the driver works on a local scratch copy of the files it
    reads (catkd.storage.Mirror), fetched from the URI first, and puts back each file it writes.
    """
    root = storage if isinstance(storage, Location) else location(storage)
    remote = root / name
    mirror = None if root.local else Mirror(scratch_dir(name), remote)
    exp_dir = Path(remote.path) if mirror is None else mirror.local
    saved = exp_dir / "study.yaml"
    try:
        if mirror is not None:
            mirror.pull(res.driver_file)  # what --resume continues from, and whether trials started
        spec, env = absolutise(spec)
        cache_named = bool(os.environ.get(ENV_DIR))  # by the user: kept even on several nodes
        if root.local:
            # the teacher cache of every trial: one store per key under the storage directory
            # (node-local when the cluster has several nodes: see stages.teacher_cache_env)
            env.setdefault(ENV_DIR, os.environ.get(ENV_DIR) or str(Path(root.path) / ".cache" / "teacher"))
        elif os.environ.get(ENV_DIR):
            env[ENV_DIR] = os.environ[ENV_DIR]
        else:
            say("teacher cache: on each node's local disk (~/.cache/catkd/teacher, or CATKD_TEACHER_CACHE): "
                "memory-mapped stores do not live in object storage")
        started = _trials_started(exp_dir)
        if remote.exists() and not resume and started:
            raise StudyError(f"{source}: {remote} already exists; use --resume to continue it or --name for a new study")
        if resume and not remote.exists():
            raise StudyError(f"{source}: --resume: no study at {remote} (nothing to resume)")
        if resume and saved.is_file():
            check_same_study(spec, saved, source)
        before = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            return _run(spec, source, root, name, resume, address, dashboard, trackers, prefetch, exp_dir, saved,
                        env, mirror, cache_named)
        finally:  # a library caller's next study must not inherit this one's data, teacher or cache paths
            for k, v in before.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        if mirror is not None:  # every file the driver wrote is in the bucket: the copy can go
            mirror.remove_local()


def _run(spec: StudySpec, source: str, root: Location, name: str, resume: bool, address: Optional[str],
         dashboard: bool, trackers: tuple[str, ...], prefetch: bool, exp_dir: Path, saved: Path,
         env: dict[str, str], mirror: Optional[Mirror], cache_named: bool = False) -> int:
    if not spec.smoke_mode:
        preflight(spec, source)
    try:
        exp_dir.mkdir(parents=True, exist_ok=True)
        probe = exp_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise StudyError(f"{source}: --storage: cannot write to {exp_dir} ({e.strerror or e})") from None
    remote = root / name
    writer = res.ResultsWriter(exp_dir, spec.model_dump(mode="json", exclude_none=True), mirror=mirror)
    if not (resume and saved.is_file()):
        atomic_write_text(saved, dump_study(spec))  # first: a kill from here on is resumable
        writer.sync()
    if spec.smoke_mode and spec.smoke.data != "synthetic":  # runtime, as the teacher: where this machine keeps it
        data = smoke_data(spec, _smoke_cache(root) / "data")
        spec = spec.model_copy(update={"fixed": {**spec.fixed, "DATASET.ROOT": str(data)}})
    if spec.smoke_mode and probes_students(spec):  # the students a smoke transfer study probes
        students = ensure_smoke_students(spec, _smoke_cache(root) / "students")
        spec = spec.model_copy(update={"fixed": {**spec.fixed, "TRANSFER.SOURCE_ROOT": str(students)}})
    if spec.smoke_mode:
        teacher = ensure_smoke_teacher(spec, _smoke_cache(root) / "teachers")
        if teacher is not None and not root.local:  # trials on other nodes fetch it from the bucket
            teacher = _put_teacher(teacher, root)
        if teacher is not None:  # where this machine keeps it: runtime, not part of the study
            spec = spec.model_copy(update={"fixed": {**spec.fixed, "DISTILLER.TEACHER_CKPT": str(teacher)}})
    state_path = exp_dir / "stage.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    stage = _StageFile(state_path, state, writer)
    smoke = (f" (SMOKE: {SMOKE_DATA[spec.smoke.data]}, small models)"
             if spec.smoke_mode else "")
    say(f"study {spec.name}{smoke}: experiment directory {remote}")
    t0 = time.time()
    prefetcher = _start_prefetch(spec, env, exp_dir, address) if prefetch else []
    try:
        _run_stages(spec, root, name, resume, address, dashboard, env, writer, trackers, stage, exp_dir, prefetcher,
                    cache_named)
    finally:
        prefetch_mod.stop(prefetcher)  # before the final results: its counts are then complete
    trials = writer.write(study_done=True)
    say(f"done in {time.time() - t0:.0f}s: " + ", ".join(
        f"{sum(1 for t in trials if t['status'] == s)} {s}" for s in res.STATUSES if any(t["status"] == s for t in trials)))
    print(summary_table(trials, spec), flush=True)
    report = Path("analysis/report.py")
    hint = f"; report: python {report} {remote}" if report.is_file() else ""
    say(f"results: {remote / 'results.parquet'} and {remote / 'trials.parquet'}{hint}")
    return 0


def _smoke_cache(root: Location) -> Path:
    """Where this machine keeps smoke teachers and smoke data: beside the experiments on a local
    --storage, else the user cache (a bucket holds a copy of the teacher for the other nodes:
    _put_teacher)."""
    return Path(root.path) / ".cache" if root.local else user_cache_dir()


def _put_teacher(path: Path, root: Location) -> str:
    """The smoke teacher's copy in the bucket (uploaded when missing or different): its URI."""
    dst = root / ".cache" / "teachers" / path.parent.name / path.name
    if not dst.is_file() or dst.fs.get_file_info(dst.path).size != path.stat().st_size:
        dst.upload(path)
    return dst.uri


class _StageFile:
    """stage.json: which stages (and searches) are done; each change written atomically, then put back."""

    def __init__(self, path: Path, state: dict[str, str], writer: res.ResultsWriter):
        self.path, self.state, self.writer = path, state, writer

    def get(self, key: str) -> Optional[str]:
        return self.state.get(key)

    def __setitem__(self, key: str, value: str) -> None:
        self.state[key] = value
        atomic_write_json(self.path, self.state)
        self.writer.sync()


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


def _run_arms(spec, study_arms, resume, env, writer, trackers, state, exp_dir, remote) -> None:
    """One search per arm, one after another, each its own Tune experiment (<study>/arms/<arm>),
    Optuna study and scheduler: every arm gets the same budget, and ASHA never stops one arm's
    trial for being behind another arm's (a method's trials compete only with that method's)."""
    base = remote / res.ARMS_DIR
    for i, arm in enumerate(study_arms, 1):
        key = f"search:{arm.label}"
        if state.get(key) == "done":
            continue
        shown = ", ".join(f"{short_name(k)}={v}" for k, v in arm.constants.items())
        say(f"[search {i}/{len(study_arms)}] {shown}: {spec.search.num_samples} trials over "
            f"{', '.join(short_name(k) for k in arm.space)}")
        state[key] = "running"
        run_stage(spec, "search", base, arm.label, resume and (base / arm.label).exists(), env, writer,
                  trackers=trackers, study_dir=exp_dir, arm=arm)
        state[key] = "done"


def _run_stages(spec, root, name, resume, address, dashboard, env, writer, trackers, state, exp_dir,
                prefetcher, cache_named=False) -> None:
    start_ray(address, dashboard)
    # (os.environ holds the study's own cache directory by now: whether the user named it was read first)
    if teacher_cache_env(env, explicit=cache_named) > 1 and prefetcher:
        say("teacher prefetch: stopped (a cluster of several nodes: trials may run elsewhere)")
        prefetch_mod.stop(prefetcher)
    remote = root / name
    if state.get("search") != "done":
        state["search"] = "running"
        study_arms = separate_searches(spec)
        if study_arms:
            _run_arms(spec, study_arms, resume, env, writer, trackers, state, exp_dir, remote)
        else:
            run_stage(spec, "search", root, name, resume, env, writer, trackers=trackers, study_dir=exp_dir)
        state["search"] = "done"
    if spec.confirm is not None and state.get("confirm") != "done":
        trials = writer.write(study_done=False)
        params = confirm_params(spec, trials, writer.local_dir)
        if params:
            each = " of each search" if separate_searches(spec) else ""
            ref = " and the preset settings" if spec.confirm.preset else ""
            say(f"[confirm] re-running the top {spec.confirm.top_k} configuration(s){each}{ref} x seeds "
                f"{spec.confirm.seeds} at full budget ({len(params)} trials), reporting test accuracy")
            state["confirm"] = "running"
            run_stage(spec, "confirm", remote, "confirm", resume and (remote / "confirm").exists(),
                      env, writer, params, trackers=trackers, study_dir=exp_dir)
        state["confirm"] = "done"


