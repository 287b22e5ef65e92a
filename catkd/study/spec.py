"""Study files (docs/contracts.md, C7): schema, friendly aliases, --smoke and validation before Ray starts.

A study file is declarative yaml (safe_load only). Validation happens in full before anything is
started or written: the schema (pydantic), then every value a trial could receive is put through
the run-config validator, so a bad β or an unknown model fails here, naming file and key.
"""
from __future__ import annotations

import copy
import itertools
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from catkd.config import (
    Config,
    ConfigError,
    build_config,
    read_yaml,
    resolve_preset,
)


class StudyError(ValueError):
    """The study file is wrong; the message names the file, the key and what was expected."""


# The study aliases and the results schema live with the trial record (catkd.study.results).
from catkd.study.results import ALIASES, PRESET_KEY, canonical  # noqa: E402,F401


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Dim(_Strict):
    """One searched dimension: exactly one of choice / grid / uniform / loguniform / randint."""

    choice: Optional[list[Any]] = None
    grid: Optional[list[Any]] = None
    uniform: Optional[tuple[float, float]] = None
    loguniform: Optional[tuple[float, float]] = None
    randint: Optional[tuple[int, int]] = None  # inclusive bounds
    when: Optional[dict[str, Any]] = None  # conditional: only sampled when these dims take these values

    @model_validator(mode="after")
    def _one_kind(self) -> "Dim":
        kinds = [k for k in ("choice", "grid", "uniform", "loguniform", "randint") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of choice, grid, uniform, loguniform, randint")
        for k in ("choice", "grid"):
            v = getattr(self, k)
            if v is not None and not v:
                raise ValueError(f"{k} must list at least one value")
        for k in ("uniform", "loguniform", "randint"):
            v = getattr(self, k)
            if v is not None and not v[0] < v[1]:
                raise ValueError(f"{k} needs [low, high] with low < high")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform needs a positive low bound")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("choice", "grid", "uniform", "loguniform", "randint") if getattr(self, k) is not None)

    @property
    def values(self) -> Optional[list[Any]]:
        """The finite list of values, or None for a continuous range."""
        return self.choice if self.choice is not None else self.grid

    def probe_values(self) -> list[Any]:
        """Values that validation puts through the run config: every listed value or both bounds."""
        if self.values is not None:
            return list(self.values)
        lo, hi = getattr(self, self.kind)
        return [lo, hi]


class SearchSpec(_Strict):
    algorithm: Literal["optuna", "grid", "random"] = "optuna"
    num_samples: int = Field(1, ge=1)
    seed: int = 0


class SchedulerSpec(_Strict):
    type: Literal["asha", "fifo"] = "fifo"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3.0, gt=1)
    brackets: int = Field(1, ge=1)


class ConfirmSpec(_Strict):
    top_k: int = Field(3, ge=1)
    # disjoint from the search seeds (checked): a search seed would replay its search trial bit for bit
    seeds: list[int] = Field([1, 2, 3], min_length=1)
    metric: Literal["test_acc"] = "test_acc"  # what the confirmed runs report


class Resources(_Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)

    @field_validator("gpu")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if v > 1 and not float(v).is_integer():
            raise ValueError("more than one GPU must be a whole number")
        return v


class SmokeSpec(_Strict):
    """What --smoke changes: the embedded synthetic data, small models, few epochs and samples."""

    epochs: int = Field(6, ge=1)
    num_samples: int = Field(4, ge=1)
    teacher: str = "resnet20"
    student: str = "resnet8"
    teacher_epochs: int = Field(12, ge=1)
    grace_period: int = Field(2, ge=1)
    seeds: Optional[list[int]] = None
    max_concurrent: int = Field(2, ge=1)
    resources: Resources = Resources(cpu=1, gpu=0)
    fixed: dict[str, Any] = {}  # extra overrides under --smoke
    space: dict[str, Dim] = {}  # dimensions replaced under --smoke (same names)
    confirm: Optional[ConfirmSpec] = None
    dataset: dict[str, Any] = {"NUM_CLASSES": 10, "TRAIN_PER_CLASS": 250, "TEST_PER_CLASS": 60}
    val_size: int = Field(300, ge=0)


class StudySpec(_Strict):
    name: str
    description: str = ""
    base: str
    fixed: dict[str, Any] = {}
    space: Union[dict[str, Dim], list[dict[str, Dim]]] = {}
    search: SearchSpec = SearchSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    metric: Literal["val_acc", "test_acc"] = "val_acc"
    mode: Literal["max", "min"] = "max"
    seeds: list[int] = Field([0], min_length=1)
    confirm: Optional[ConfirmSpec] = None
    resources: Resources = Resources()
    max_concurrent: int = Field(4, ge=1)
    max_failures: int = Field(2, ge=0)
    smoke: SmokeSpec = SmokeSpec()
    smoke_mode: bool = False  # set by --smoke (recorded in study.yaml)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
            raise ValueError("use letters, digits, '_', '.', '-' only (it names a directory)")
        return v

    @property
    def subgrids(self) -> list[dict[str, Dim]]:
        return self.space if isinstance(self.space, list) else [self.space]

    @property
    def dimension_names(self) -> list[str]:
        names: list[str] = []
        for g in self.subgrids:
            names += [k for k in g if k not in names]
        return names


def _loc(e: dict) -> str:
    parts = []
    for p in e["loc"]:
        p = str(p)
        if "[" in p and not p.startswith("space["):  # pydantic's union-branch tags
            continue
        parts.append(p)
    return ".".join(parts)


def _schema_errors(err: ValidationError, source: str, raw: dict) -> str:
    out = []
    # a space is a mapping or a list of sub-grids: report only the branch the file uses
    skip = "list[" if isinstance(raw.get("space"), dict) else "dict["
    for e in err.errors():
        if len(e["loc"]) > 1 and e["loc"][0] == "space" and str(e["loc"][1]).startswith(skip):
            continue
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        if e["type"] not in ("extra_forbidden", "missing") and not isinstance(e.get("input"), dict):
            msg += f" (got {e.get('input')!r})"
        out.append(f"{source}: {_loc(e)}: {msg}")
    return "\n".join(out)


def parse_set(pairs: list[str]) -> dict[str, Any]:
    """--set KEY=VALUE (dotted study keys, e.g. search.num_samples=4, fixed.SOLVER.EPOCHS=2)."""
    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise StudyError(f"--set {p!r}: expected KEY=VALUE")
        k, v = p.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _apply_set(raw: dict, sets: dict[str, Any]) -> None:
    for key, value in sets.items():
        # fixed.<dotted config key> keeps the config key whole
        if key.startswith("fixed."):
            raw.setdefault("fixed", {})[key[len("fixed."):]] = value
            continue
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise StudyError(f"--set {key}: {p!r} is not a section")
        node[parts[-1]] = value


def apply_smoke(spec: StudySpec) -> StudySpec:
    """The same study, shrunk for a 2-core CPU: synthetic data, small models, few epochs/samples."""
    sm = spec.smoke
    d = spec.model_dump()
    fixed = {canonical(k): v for k, v in d["fixed"].items()}
    fixed.update({
        "DATASET.TYPE": "synthetic",
        "SOLVER.EPOCHS": sm.epochs,
        "SOLVER.LR_DECAY_STAGES": [max(1, int(sm.epochs * 0.75))],
        "DATASET.VAL_SIZE": sm.val_size,
        "DISTILLER.TEACHER": sm.teacher,
        "DISTILLER.STUDENT": sm.student,
        "SOLVER.BATCH_SIZE": 64,
    })
    for k, v in sm.dataset.items():
        fixed[f"DATASET.SYNTHETIC.{k}"] = v
    # "all classes" of the real data means all classes of the synthetic set
    k = sm.dataset.get("NUM_CLASSES", 10)
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise ValueError(f"smoke.dataset.NUM_CLASSES: expected an integer >= 2, got {k!r}")
    per_class = sm.dataset.get("TRAIN_PER_CLASS", 300)
    if isinstance(per_class, int) and not isinstance(per_class, bool) and sm.val_size >= k * per_class:
        raise ValueError(f"smoke.val_size: {sm.val_size} leaves no training images "
                         f"({k} classes x {per_class} per class)")
    fixed.setdefault("DATASET.RESERVED_CLASS_NUM", k)
    fixed.setdefault("CAT_KD.CAMs_Nums", k)
    # keys of the real data that do not apply to the synthetic set
    for k in ("DATASET.ROOT", "DISTILLER.TEACHER_CKPT"):
        fixed.pop(k, None)
    fixed.update({canonical(k): v for k, v in sm.fixed.items()})
    d["fixed"] = fixed
    space = d["space"]
    grids = space if isinstance(space, list) else [space]
    for g in grids:
        for k, v in sm.space.items():
            if k in g:
                g[k] = v.model_dump(exclude_none=True)
        for k in list(g):
            if canonical(k) in ("DISTILLER.TEACHER", "DISTILLER.STUDENT") and k not in sm.space:
                g.pop(k)  # the smoke models replace the real ones
    d["search"]["num_samples"] = min(spec.search.num_samples, sm.num_samples)
    d["scheduler"]["grace_period"] = min(sm.grace_period, sm.epochs)
    d["seeds"] = sm.seeds or spec.seeds[:2]
    d["max_concurrent"] = sm.max_concurrent
    d["resources"] = sm.resources.model_dump()
    if spec.confirm is not None:
        # new seeds, disjoint from the smoke search seeds
        default = ConfirmSpec(top_k=1, seeds=[s for s in range(max(d["seeds"]) + 1, max(d["seeds"]) + 3)])
        d["confirm"] = (sm.confirm or default).model_dump()
    d["smoke_mode"] = True
    return StudySpec.model_validate(d)


def load_study(path: str | Path, smoke: bool = False, sets: Optional[dict[str, Any]] = None) -> StudySpec:
    """Read, schema-check, apply --set and --smoke, then check every value against the run config."""
    path = Path(path)
    source = str(path)
    try:
        raw = read_yaml(path)
    except ConfigError as e:
        raise StudyError(str(e)) from None
    raw = copy.deepcopy(raw)
    if sets:
        _apply_set(raw, sets)
    base = raw.get("base")
    if isinstance(base, str) and not Path(base).is_absolute() and (path.parent / base).is_file():
        raw["base"] = str((path.parent / base).resolve())  # a path relative to the study file
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as e:
        raise StudyError(_schema_errors(e, source, raw)) from None
    if smoke:
        # a green smoke must mean the real study will start: check the real one first
        try:
            check_study(spec, source)
        except StudyError as e:
            raise StudyError(f"{e}\n(--smoke checks the real study before its smoke version)") from None
        try:
            spec = apply_smoke(spec)
        except ValueError as e:
            raise StudyError(f"{source}: {e}") from None
    check_study(spec, source)
    return spec


# ---- semantic checks ----------------------------------------------------------------------------
def base_for(spec: StudySpec, preset: Optional[str], source: str, key: str = "base") -> tuple[dict, str]:
    if preset is not None and not isinstance(preset, str):
        raise StudyError(f"{source}: {key}: expected a preset name or a path, got {preset!r}")
    try:
        p = resolve_preset(preset or spec.base)
        return read_yaml(p), str(p)
    except ConfigError as e:
        raise StudyError(f"{source}: {key}: {e}") from None


def run_config(spec: StudySpec, params: dict[str, Any], source: str = "<study>", where: str = "") -> Config:
    """The run config of one trial: base (or the trial's preset) + fixed + the trial's parameters."""
    params = dict(params)
    preset = params.pop(PRESET_KEY, None)
    raw, _ = base_for(spec, preset, source, f"{where}{PRESET_KEY}" if preset else "base")
    overrides = {canonical(k): v for k, v in spec.fixed.items()}
    overrides.update({canonical(k): v for k, v in params.items()})
    if "EXPERIMENT.SEED" not in overrides:
        overrides["EXPERIMENT.SEED"] = spec.seeds[0]
    try:
        return build_config(raw, source, overrides, quiet=True)
    except ConfigError as e:
        raise StudyError(f"{e}" + (f" (from {where.rstrip('.')})" if where else "")) from None


def check_study(spec: StudySpec, source: str) -> None:
    algo = spec.search.algorithm
    if spec.confirm is not None:
        overlap = sorted(set(spec.confirm.seeds) & set(spec.seeds))
        if overlap:
            where = "smoke.confirm.seeds" if spec.smoke_mode else "confirm.seeds"
            raise StudyError(
                f"{source}: {where}: {overlap} also seed{'s' if len(overlap) > 1 else ''} the search "
                f"(seeds {spec.seeds}); a confirm run with a search seed replays its search trial bit for "
                "bit, so it is not an independent repeat. Use new seeds, e.g. "
                f"{[max(spec.seeds) + 1 + i for i in range(len(spec.confirm.seeds))]}"
            )
    for gi, g in enumerate(spec.subgrids):
        gloc = f"space[{gi}]." if isinstance(spec.space, list) else "space."
        for name, dim in g.items():
            if algo == "grid" and dim.values is None:
                raise StudyError(
                    f"{source}: {gloc}{name}: grid search needs a finite list (choice/grid), got {dim.kind}"
                )
            if algo != "grid" and dim.grid is not None:
                raise StudyError(
                    f"{source}: {gloc}{name}.grid: a grid dimension cannot go to the {algo} searcher "
                    "(use choice, or search.algorithm: grid)"
                )
            for cond in (dim.when or {}):
                if cond not in g:
                    raise StudyError(f"{source}: {gloc}{name}.when.{cond}: no such dimension in this space")
    if isinstance(spec.space, list) and algo != "grid":
        raise StudyError(f"{source}: space: a list of sub-grids needs search.algorithm: grid")
    # fixed alone
    base_cfg = run_config(spec, {}, source, "fixed.")
    if spec.metric == "val_acc" and base_cfg.DATASET.VAL_SIZE == 0:
        raise StudyError(
            f"{source}: metric: val_acc needs a validation split; set fixed.DATASET.VAL_SIZE "
            "(e.g. 5000) or use metric: test_acc"
        )
    if spec.scheduler.type == "asha" and spec.scheduler.grace_period > base_cfg.SOLVER.EPOCHS:
        raise StudyError(
            f"{source}: scheduler.grace_period: {spec.scheduler.grace_period} is more than the "
            f"{base_cfg.SOLVER.EPOCHS} epochs of a trial"
        )
    # every listed value (or range end) of every dimension, each on its own over the fixed config
    for gi, g in enumerate(spec.subgrids):
        gloc = f"space[{gi}]." if isinstance(spec.space, list) else "space."
        for name, dim in g.items():
            if name != PRESET_KEY and canonical(name) == name and "." not in name:
                raise StudyError(
                    f"{source}: {gloc}{name}: unknown dimension; use a dotted config key or one of "
                    f"{', '.join(sorted([*ALIASES, PRESET_KEY]))}"
                )
            for v in dim.probe_values():
                cfg = run_config(spec, {**(dim.when or {}), name: v}, source, f"{gloc}{name}.{dim.kind}: ")
                _check_trial_semantics(cfg, source, f"{gloc}{name}")


def _check_trial_semantics(cfg: Config, source: str, where: str) -> None:
    """Checks that need more than one key (beyond the run-config schema)."""
    c = cfg.CAT_KD
    if cfg.DATASET.TYPE == "synthetic":
        k = cfg.DATASET.SYNTHETIC.NUM_CLASSES
    elif cfg.DATASET.TYPE == "imagenet":
        k = 1000
    else:
        k = 100
    if c.IF_OnlyTransferPartialCAMs and c.CAMs_Nums > k:
        raise StudyError(f"{source}: {where}: CAT_KD.CAMs_Nums {c.CAMs_Nums} is more than the {k} classes")
    if cfg.DATASET.REDUCTION and cfg.DATASET.RESERVED_CLASS_NUM > k:
        raise StudyError(
            f"{source}: {where}: DATASET.RESERVED_CLASS_NUM {cfg.DATASET.RESERVED_CLASS_NUM} is more than the {k} classes"
        )
    from catkd.models import build_model

    if cfg.DISTILLER.TYPE == "CAT_KD":  # names are canonical once a config is built
        res = c.LOSS.CAM_RESOLUTION
        smallest = _cam_size(cfg, build_model)
        if res > smallest:
            raise StudyError(
                f"{source}: {where}: CAT_KD.LOSS.CAM_RESOLUTION {res} is larger than the CAMs "
                f"({smallest}x{smallest}) of {cfg.DISTILLER.TEACHER}/{cfg.DISTILLER.STUDENT}"
            )


_CAM_CACHE: dict[tuple, int] = {}


def _cam_size(cfg: Config, build_model) -> int:
    import torch

    family = "imagenet" if cfg.DATASET.TYPE == "imagenet" else "cifar"
    size = {"imagenet": 224, "cifar100": 32}.get(cfg.DATASET.TYPE, cfg.DATASET.SYNTHETIC.IMAGE_SIZE)
    out = []
    for name in (cfg.DISTILLER.TEACHER, cfg.DISTILLER.STUDENT):
        key = (family, name, size)
        if key not in _CAM_CACHE:
            m = build_model(name, num_classes=2, family=family).eval()
            with torch.no_grad():
                _CAM_CACHE[key] = min(m(torch.zeros(1, 3, size, size))[1]["cams"].shape[-2:])
        out.append(_CAM_CACHE[key])
    return min(out)


def expand_grid(spec: StudySpec) -> list[dict[str, Any]]:
    """Grid: every combination of every sub-grid, crossed with the seeds (conditional dims honoured)."""
    out: list[dict[str, Any]] = []
    for g in spec.subgrids:
        names = list(g)
        for combo in itertools.product(*(g[n].values for n in names)):
            params = dict(zip(names, combo))
            params = {n: v for n, v in params.items() if _active(g[n], params)}
            for seed in spec.seeds:
                p = {**params, "seed": seed}
                if p not in out:
                    out.append(p)
    return out


def _active(dim: Dim, params: dict[str, Any]) -> bool:
    return all(params.get(k) == v for k, v in (dim.when or {}).items())


def dump_study(spec: StudySpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=False)
