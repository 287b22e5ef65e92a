"""Study files (docs/contracts.md, C7): the schema, --set, and load_study (schema, then --smoke and
the checks of catkd.study.smoke / catkd.study.checks) before Ray starts.

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

from catkd.config import ConfigError, read_yaml


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
    # the report's table layout (default: the layout named like the study, else a generic table)
    report: Optional[Literal["beta_sweep", "cam_resolution", "binarization", "partial_cams", "data_reduction",
                             "main_results", "teachers", "generic"]] = None
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
    from catkd.study.checks import check_study
    from catkd.study.smoke import apply_smoke

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
