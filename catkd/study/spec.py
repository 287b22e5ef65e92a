"""Study files (docs/contracts.md, C7): the schema. Reading a file (names resolved, --set, --smoke,
every check) is catkd.study.load.

A study file is declarative yaml (safe_load only). By the time a StudySpec exists, every setting is
named by its dotted config key (catkd.study.keys).
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator


class StudyError(ValueError):
    """The study file is wrong; the message names the file, the key and what was expected."""


from catkd.study.keys import PRESET_KEY, SEED_KEY, SELECT_KEYS, subgrids  # noqa: E402,F401


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


KINDS = ("choice", "grid", "uniform", "loguniform", "randint", "around")


class Dim(_Strict):
    """One searched dimension: exactly one of choice / grid / uniform / loguniform / randint / around."""

    choice: Optional[list[Any]] = None
    grid: Optional[list[Any]] = None
    uniform: Optional[tuple[float, float]] = None
    loguniform: Optional[tuple[float, float]] = None
    randint: Optional[tuple[int, int]] = None  # inclusive bounds
    # log-uniform between the preset's own value x low and x high: a range that follows the preset
    # (CAT-KD's beta is 0.7 on one pair, 600 on another); the loader turns it into `loguniform`
    around: Optional[tuple[float, float]] = None
    when: Optional[dict[str, Any]] = None  # conditional: only sampled when these dims take these values

    @model_validator(mode="after")
    def _one_kind(self) -> "Dim":
        kinds = [k for k in KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of {', '.join(KINDS)}")
        for k in ("choice", "grid"):
            v = getattr(self, k)
            if v is not None and not v:
                raise ValueError(f"{k} must list at least one value")
        for k in ("uniform", "loguniform", "randint", "around"):
            v = getattr(self, k)
            if v is not None and not v[0] < v[1]:
                raise ValueError(f"{k} needs [low, high] with low < high")
        for k in ("loguniform", "around"):
            if getattr(self, k) is not None and getattr(self, k)[0] <= 0:
                raise ValueError(f"{k} needs a positive low bound")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def values(self) -> Optional[list[Any]]:
        """The finite list of values, or None for a continuous range."""
        return self.choice if self.choice is not None else self.grid

    def probe_values(self) -> list[Any]:
        """Values that validation puts through the run config: every listed value or both bounds."""
        if self.values is not None:
            return list(self.values)
        if self.around is not None:  # factors of a preset value, not values: resolved when loading
            return []
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
    # also re-run each arm's preset settings (its grid values, nothing searched) with the same seeds:
    # the reference a tuned configuration is measured against, trained on the same split
    preset: bool = False


class Resources(_Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)

    @field_validator("gpu")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if v > 1 and not float(v).is_integer():
            raise ValueError("more than one GPU must be a whole number")
        return v


# how messages and tables name each kind of smoke data
SMOKE_DATA = {"synthetic": "synthetic data", "jpeg": "a small JPEG folder",
              "files": "small STL-10 and TinyImageNet files"}


class SmokeSpec(_Strict):
    """What --smoke changes: the embedded synthetic data, small models, few epochs and samples."""

    # synthetic: the embedded synthetic dataset; jpeg: a small folder of real JPEG files in ImageNet's
    # layout, written once per machine, read through the study's own (ImageNet) data path; files: the
    # transfer datasets (STL-10's binaries, TinyImageNet's folder) as small files in their own formats
    data: Literal["synthetic", "jpeg", "files"] = "synthetic"
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
    # the base under --smoke: a pair whose presets suit the small smoke models (a preset's loss weight is
    # tuned to its own pair's feature and CAM magnitudes)
    base: Optional[str] = None


class StudySpec(_Strict):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)
    name: str
    description: str = ""
    base: str
    # a transfer study: the experiment whose trained students it probes (catkd.study.sources)
    from_: Optional[str] = Field(None, alias="from")
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
    # the report's table layout: a layout registered in analysis/layouts/ (default: the layout named like
    # the study, else a generic table; an unknown name gets the generic table and a note in the report)
    report: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9_]+$")
    # a sub-grid whose method has no preset for the pair (KDSVD across architecture families): an error,
    # or left out with a note (a study of every method that `--set base=` moves to any pair)
    missing_presets: Literal["error", "skip"] = "error"
    smoke_mode: bool = False  # set by --smoke (recorded in study.yaml)
    _written: dict[str, str] = PrivateAttr(default_factory=dict)
    _origin: list[int] = PrivateAttr(default_factory=list)  # each sub-grid's index in the file (some left out)

    @property
    def written_names(self) -> dict[str, str]:
        """{dotted key: the name the study file used for it}: messages speak the file's words."""
        return self._written

    @written_names.setter
    def written_names(self, value: dict[str, str]) -> None:
        self._written = dict(value)

    def written(self, key: str) -> str:
        return self._written.get(key, key)

    def where(self, i: int) -> str:
        """Where the i-th sub-grid is in the study file: `space[k].` (k as the file counts) or `space.`."""
        if not isinstance(self.space, list):
            return "space."
        return f"space[{self._origin[i] if i < len(self._origin) else i}]."

    def keep_subgrids(self, indices: list[int]) -> None:
        """Keep only these sub-grids of a list space; messages still use the file's indices."""
        assert isinstance(self.space, list)
        origin = self._origin or list(range(len(self.space)))
        self.space = [self.space[i] for i in indices]
        self._origin = [origin[i] for i in indices]

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
            raise ValueError("use letters, digits, '_', '.', '-' only (it names a directory)")
        return v

    @property
    def subgrids(self) -> list[dict[str, Dim]]:
        return subgrids(self.space)

    @property
    def dimension_names(self) -> list[str]:
        names: list[str] = []
        for g in self.subgrids:
            names += [k for k in g if k not in names]
        return names


def expand_grid(spec: StudySpec) -> list[dict[str, Any]]:
    """Grid: every combination of every sub-grid, crossed with the seeds (conditional dims honoured)."""
    out: list[dict[str, Any]] = []
    seen: set = set()
    for g in spec.subgrids:
        names = list(g)
        for combo in itertools.product(*(g[n].values for n in names)):
            params = dict(zip(names, combo))
            params = {n: v for n, v in params.items() if active(g[n], params)}
            for seed in spec.seeds:
                p = {**params, SEED_KEY: seed}
                key = _same_run(spec.base, p)
                if key not in seen:  # once per run: `method: vanilla` of two pairs with one student is one run
                    seen.add(key)
                    out.append(p)
    return out


def _same_run(base: str, params: dict[str, Any]) -> str:
    """What makes two grid points one run: the preset they choose and the other parameters."""
    from catkd.config import ConfigError
    from catkd.study.presets import chosen_preset

    rest = {k: v for k, v in params.items() if k not in SELECT_KEYS}
    try:
        chosen = chosen_preset(base, params) if any(k in params for k in SELECT_KEYS) else None
    except ConfigError:  # the checks name it
        chosen = repr({k: params[k] for k in SELECT_KEYS if k in params})
    return repr((chosen, sorted(rest.items(), key=lambda kv: kv[0])))


@dataclass(frozen=True)
class Arm:
    """One independent search of a searcher-driven study: its constants (the values of the study's
    grid dimensions) and the dimensions it searches. Every arm gets the study's whole budget
    (search.num_samples under its own scheduler), so arms compared with each other, such as methods,
    were tuned alike. A study without grid dimensions is one arm, labelled ""."""

    label: str
    constants: dict[str, Any]
    space: dict[str, Dim]


def arms(spec: StudySpec) -> list[Arm]:
    """The arms of a searcher-driven study: each sub-grid x each combination of its grid dimensions."""
    out: list[Arm] = []
    for g in spec.subgrids:
        fixed = {n: d for n, d in g.items() if d.grid is not None}
        searched = {n: d for n, d in g.items() if d.grid is None}
        for combo in itertools.product(*(d.grid for d in fixed.values())):
            constants = dict(zip(fixed, combo))
            constants = {n: v for n, v in constants.items() if active(fixed[n], constants)}
            out.append(Arm("", constants, searched))
    if len(out) == 1 and not out[0].constants:
        return out
    width = len(str(len(out) - 1))
    return [Arm(f"{i:0{width}d}-{_label(a.constants)}", a.constants, a.space) for i, a in enumerate(out)]


def separate_searches(spec: StudySpec) -> list[Arm]:
    """The arms that run as searches of their own (<study>/arms/<arm>): those of a searcher-driven
    study with more than one; [] for a grid, or a single search (it runs in <study> itself)."""
    if spec.search.algorithm == "grid":
        return []
    found = arms(spec)
    return found if len(found) > 1 else []


def base_choices(g: dict[str, Dim]) -> list[dict[str, Any]]:
    """Every combination of a sub-grid's listed values of the dimensions that choose the base config
    (preset, method, pair); [] when it has none. The last dimension outermost: a method grid x a pair
    grid visits every method of a pair in turn (the checks' untrained models are then reused)."""
    select = {n: d.values for n, d in g.items() if n in SELECT_KEYS and d.values is not None}
    names = list(select)[::-1]
    return [dict(zip(names, c)) for c in itertools.product(*(select[n] for n in names))] if select else []


def _label(constants: dict[str, Any]) -> str:
    """A directory-safe name for an arm's constants (a preset path by its last two parts)."""
    words = ["-".join(str(v).split("/")[-2:]) if isinstance(v, str) else str(v) for v in constants.values()]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(words))[:60] or "arm"


def active(dim: Dim, params: dict[str, Any]) -> bool:
    return all(params.get(k) == v for k, v in (dim.when or {}).items())


def dump_study(spec: StudySpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True, by_alias=True), sort_keys=False)
