"""The trained students a transfer study probes (`from: <experiment dir>`), as sub-grids of its space.

A study whose base is a TRANSFER preset probes the students of another experiment: its confirm trials
when it has any (what a tuned study reports), else every finished trial (a grid such as main_results).
Each student is its run's final checkpoint, ckpt_epoch_<EPOCHS>.pth: never student_best.pth, which a
run without a validation split chooses on the test set. Under --smoke without a source experiment,
small students are made on the spot (two methods x two seeds on the synthetic data) and probed.

Each source becomes one sub-grid per sub-grid of the file: TRANSFER.SOURCE (the checkpoint),
DISTILLER.STUDENT (its architecture) and the source's method, pair and seed (TRANSFER.SOURCE_*, what
the report groups by), crossed with the file's own dimensions (the target datasets).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from catkd.study.progress import say
from catkd.study.spec import Dim, StudyError, StudySpec

SOURCE = "TRANSFER.SOURCE"
SMOKE_METHODS = ("NONE", "CAT_KD")  # the student alone and CAT-KD: the comparison the paper's table makes
SMOKE_SEEDS = (0, 1)


@dataclass(frozen=True)
class Source:
    path: str  # absolute, or relative to TRANSFER.SOURCE_ROOT (the smoke students)
    student: str
    method: str  # DISTILLER.TYPE of the source run ("CAT" for CAT without labels)
    pair: str
    seed: int
    settings: str = ""  # the source study's other settings that tell this student's group apart

    def dims(self) -> dict[str, Dim]:
        values = {SOURCE: self.path, "DISTILLER.STUDENT": self.student, "TRANSFER.SOURCE_METHOD": self.method,
                  "TRANSFER.SOURCE_PAIR": self.pair, "TRANSFER.SOURCE_SEED": self.seed,
                  "TRANSFER.SOURCE_SETTINGS": self.settings}
        return {k: Dim(grid=[v]) for k, v in values.items()}


def probes_students(spec: StudySpec) -> bool:
    """Is the study's method the probe (its fixed settings, else its base)? Read from the files alone, so
    that the other mistakes of a study do not hide this one."""
    from catkd.config import ConfigError, read_yaml, resolve_preset

    typ = spec.fixed.get("DISTILLER.TYPE")
    if typ is None:
        try:
            typ = (read_yaml(resolve_preset(spec.base)).get("DISTILLER") or {}).get("TYPE")
        except (ConfigError, AttributeError):
            return False
    return typ in ("TRANSFER", "transfer")


def expand_sources(spec: StudySpec, source: str, smoke: bool) -> list[str]:
    """Put the sources into `spec.space` (in place); the errors found, each naming the file and `from`."""
    if not probes_students(spec):
        return [f"{source}: from: only a study whose base is a TRANSFER preset probes students"] if spec.from_ else []
    if smoke:
        found = smoke_students(spec)
    elif not spec.from_:
        return [f"{source}: from: a transfer study probes the students of another experiment; name its directory "
                "(from: results/main_results, or --set from=...); --smoke makes small students of its own"]
    else:
        try:
            found = experiment_students(Path(spec.from_))
        except StudyError as e:
            return [f"{source}: from: {e} (probe another experiment with --set from=<experiment dir>)"]
    grids = []
    origin = spec._origin or list(range(len(spec.subgrids)))
    for s in found:
        dims = s.dims()
        for i, g in enumerate(spec.subgrids):
            grids.append(({**{k: v for k, v in g.items() if k not in dims}, **dims}, origin[i]))
    spec.space = [g for g, _ in grids]
    spec._origin = [i for _, i in grids]
    return []


def experiment_students(exp_dir: Path) -> list[Source]:
    """The students of a finished catkd experiment (see the module's docstring)."""
    import pandas as pd

    trials_pq = exp_dir / "trials.parquet"
    if not trials_pq.is_file():
        what = "no such directory" if not exp_dir.is_dir() else "no trials.parquet in it: not a catkd experiment"
        raise StudyError(f"{exp_dir}: {what}")
    t = pd.read_parquet(trials_pq)
    if "stage" in t and (t["stage"] == "confirm").any():
        t = t[t["stage"] == "confirm"]
    t = t[t["status"] == "finished"] if "status" in t else t.iloc[:0]
    out, problems, rows = [], [], []
    for _, row in t.iterrows():
        run = _trial_dir(exp_dir, str(row.get("trial_dir", ""))) / "run"
        try:
            cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            problems.append(f"{run}: no readable config.yaml")
            continue
        d, epochs = cfg.get("DISTILLER", {}), cfg.get("SOLVER", {}).get("EPOCHS")
        if d.get("TYPE") in ("TRANSFER", "transfer"):
            continue  # a probe is not a student
        ckpt = run / f"ckpt_epoch_{epochs}.pth"
        if not ckpt.is_file():
            problems.append(f"{ckpt} is missing")
            continue
        out.append(_source(str(ckpt), cfg))
        rows.append(row)
    if not out:
        why = f" ({'; '.join(problems[:3])})" if problems else ""
        raise StudyError(f"{exp_dir}: holds no finished students to probe{why}")
    for p in problems:
        say(f"from: {p}; that trial is left out")
    return _told_apart(out, pd.DataFrame(rows))


# a source's identity besides its settings: what every student of a study differs in anyway
_IDENTITY = {"EXPERIMENT.SEED", "DISTILLER.TYPE", "DISTILLER.TEACHER", "DISTILLER.STUDENT", "DISTILLER.TEACHER_CKPT"}


def _plain(v: Any) -> Any:
    """12.0 as 12 (a column of whole numbers with gaps is stored as floats)."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _told_apart(sources: list[Source], rows) -> list[Source]:
    """Students of one method and pair that differ in another setting of their study (teacher_epoch,
    β, ...) are not repeats of one another: name those settings, so that only seeds are pooled."""
    from catkd.study.keys import short_name

    keys = [c for c in rows.columns if "." in c and c not in _IDENTITY and c.split(".")[0].isupper()]
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(sources):
        groups.setdefault((s.method, s.pair), []).append(i)
    out = list(sources)
    for members in groups.values():
        sub = rows.iloc[members]
        varying = [k for k in keys if sub[k].astype(str).nunique() > 1]
        for i in members:
            words = " ".join(f"{short_name(k)}={_plain(rows.iloc[i][k])}" for k in varying)
            out[i] = Source(**{**sources[i].__dict__, "settings": words})
    return out


def _trial_dir(exp_dir: Path, recorded: str) -> Path:
    """A trial's directory: as recorded, else found by name under the experiment (a moved experiment)."""
    p = Path(recorded)
    if p.is_dir() or not recorded:
        return p
    return next((q for q in exp_dir.rglob(p.name) if q.is_dir()), p)


def _source(path: str, cfg: dict[str, Any]) -> Source:
    from catkd.distillers import DISTILLERS

    d = cfg.get("DISTILLER", {})
    typ = str(d.get("TYPE", "NONE"))
    needs_teacher = DISTILLERS.get(typ).needs_teacher
    if typ in ("CAT_KD", "CAT-KD") and (cfg.get("CAT_KD") or {}).get("onlyCAT"):
        typ = "CAT"  # the reference's name for CAT trained on CAMs alone
    pair = f"{d.get('TEACHER')}->{d.get('STUDENT')}" if needs_teacher else f"{d.get('STUDENT')} alone"
    return Source(path, str(d.get("STUDENT")), typ, pair, int((cfg.get("EXPERIMENT") or {}).get("SEED", 0)))


# ---- --smoke: small students made on the spot -------------------------------------------------------
def _smoke_cfg(spec: StudySpec, method: str, seed: int, teacher: Optional[Path]):
    from catkd.config import resolve_preset, read_yaml
    from catkd.engine.validate import build_run_config

    sm = spec.smoke
    raw = read_yaml(resolve_preset("cifar100/CAT_KD/res56_res20")) if method == "CAT_KD" else {}
    over = {
        "DISTILLER.TYPE": method, "DISTILLER.STUDENT": sm.student, "DISTILLER.TEACHER": sm.teacher,
        "DATASET.TYPE": "synthetic", "DATASET.SYNTHETIC.NUM_CLASSES": 10, "DATASET.SYNTHETIC.TRAIN_PER_CLASS": 100,
        "DATASET.SYNTHETIC.TEST_PER_CLASS": 30, "SOLVER.EPOCHS": sm.epochs, "SOLVER.BATCH_SIZE": 64,
        "SOLVER.LR": 0.05, "SOLVER.LR_DECAY_STAGES": [max(1, int(sm.epochs * 0.75))], "EXPERIMENT.SEED": seed,
        "LOG.SAVE_CHECKPOINT_FREQ": 0, "RUN.PROGRESS": "none",
    }
    if teacher is not None:
        over["DISTILLER.TEACHER_CKPT"] = str(teacher)
    return build_run_config(raw, "<smoke student>", over, quiet=True)


def smoke_students(spec: StudySpec) -> list[Source]:
    """The smoke students' identities, paths relative to the directory ensure_smoke_students fills."""
    sm = spec.smoke
    return [Source(f"{m}-seed{s}/ckpt_epoch_{sm.epochs}.pth", sm.student, m,
                   f"{sm.teacher}->{sm.student}" if m != "NONE" else f"{sm.student} alone", s)
            for m in SMOKE_METHODS for s in SMOKE_SEEDS]


def ensure_smoke_students(spec: StudySpec, cache: Path) -> Path:
    """Train the smoke students once (the CAT-KD ones from a small teacher trained first) and cache them;
    returns the directory their relative paths are under (TRANSFER.SOURCE_ROOT)."""
    from catkd.study.preflight import train_once

    teacher_cfg = _smoke_cfg(spec, "NONE", 0, None)
    teacher_cfg = teacher_cfg.model_validate({**teacher_cfg.to_dict(), "DISTILLER": {
        "TYPE": "NONE", "STUDENT": spec.smoke.teacher, "TEACHER": spec.smoke.teacher},
        "SOLVER": {**teacher_cfg.SOLVER.model_dump(), "EPOCHS": spec.smoke.teacher_epochs,
                   "LR_DECAY_STAGES": [max(1, int(spec.smoke.teacher_epochs * 0.75))]}})
    key = hashlib.sha1(json.dumps([teacher_cfg.to_dict(), spec.smoke.student, spec.smoke.epochs, SMOKE_METHODS,
                                   SMOKE_SEEDS], sort_keys=True, default=str).encode()).hexdigest()[:12]
    root = cache / f"students-{key}"
    teacher = train_once(teacher_cfg, root / "teacher", f"smoke teacher {spec.smoke.teacher}")
    for s in smoke_students(spec):
        cfg = _smoke_cfg(spec, s.method, s.seed, teacher if s.method != "NONE" else None)
        train_once(cfg, (root / s.path).parent, f"smoke student {s.method} seed {s.seed}")
    return root
