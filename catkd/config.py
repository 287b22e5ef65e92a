"""Typed run configuration.

The file format is the reference's (MDistiller / yacs keys: EXPERIMENT, DISTILLER, SOLVER, DATASET,
LOG, KD, CAT_KD, ...), so a config file of the CAT-KD repository loads unchanged. Defaults live here
in code; our additions (seed, validation split, data root, device, precision, ...) are new keys with
defaults. Unknown keys and wrong types are rejected with the file and the dotted key named; keys of
the reference that we do not use are accepted with a one-line notice.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from catkd.dotted import DottedKeyError, flatten, pop_dotted, set_dotted  # noqa: F401 (flatten: re-exported)

PRESET_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the file and the dotted key."""


class Section(BaseModel):
    """A config section: unknown keys and infinite numbers rejected, assignments validated.

    A distiller's section also declares the reference's spellings of its keys (class variables):
    `renamed_keys` {reference dotted key: our dotted key} and `ignored_keys` {dotted key: why}."""

    # allow_inf_nan=False: an infinite β or LR is a typo, not a setting
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    renamed_keys: ClassVar[dict[str, str]] = {}
    ignored_keys: ClassVar[dict[str, str]] = {}



# Sections declared by the methods (each distiller module declares its own: `@config_section("KD")`).
SECTIONS: dict[str, type[Section]] = {}


def config_section(name: str) -> Callable[[type[Section]], type[Section]]:
    """Register a method's config section under its top-level name (MDistiller's section name)."""

    def deco(cls: type[Section]) -> type[Section]:
        if name in SECTIONS and SECTIONS[name] is not cls:
            raise ValueError(f"config section {name!r} registered twice")
        if name in _FRAME:
            raise ValueError(f"config section {name!r} is part of the run config's frame")
        SECTIONS[name] = cls
        return cls

    return deco


class ExperimentCfg(Section):
    PROJECT: str = "distill"
    NAME: str = ""
    TAG: str = "default"
    SEED: int = 0  # ours: seeds python, numpy, torch and the data order (the reference sets none)


class DistillerCfg(Section):
    TYPE: str = "NONE"
    TEACHER: str = "ResNet50"
    STUDENT: str = "resnet32"
    # ours: explicit teacher checkpoint; default is $CATKD_TEACHERS/<arch>_vanilla/ckpt_epoch_240.pth
    TEACHER_CKPT: Optional[str] = None
    # ours: the teacher's checkpoint of this epoch of its own training, beside the default (or TEACHER_CKPT)
    # file: ckpt_epoch_<E>.pth; a teacher of another strength (the weak-teachers study)
    TEACHER_EPOCH: Optional[int] = Field(None, ge=1)


class SolverCfg(Section):
    TRAINER: str = "base"
    BATCH_SIZE: int = Field(64, ge=1)
    EPOCHS: int = Field(240, ge=1)
    LR: float = Field(0.05, gt=0)
    LR_DECAY_STAGES: list[int] = [150, 180, 210]
    LR_DECAY_RATE: float = Field(0.1, gt=0)
    WEIGHT_DECAY: float = Field(1e-4, ge=0)
    MOMENTUM: float = Field(0.9, ge=0)
    NESTEROV: bool = False
    TYPE: Literal["SGD"] = "SGD"

    @field_validator("LR_DECAY_STAGES")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if sorted(v) != v:
            raise ValueError("must be increasing")
        return v


class TestCfg(Section):
    BATCH_SIZE: int = Field(64, ge=1)


class SyntheticCfg(Section):
    """The embedded offline dataset (catkd.data.synthetic); documented as synthetic wherever shown."""

    NUM_CLASSES: int = Field(10, ge=2, le=1000)
    TRAIN_PER_CLASS: int = Field(300, ge=1)
    TEST_PER_CLASS: int = Field(100, ge=1)
    IMAGE_SIZE: int = Field(32, ge=16, le=256)
    SEED: int = 0


class DatasetCfg(Section):
    TYPE: Literal["cifar100", "imagenet", "synthetic", "stl10", "tiny_imagenet"] = "cifar100"
    NUM_WORKERS: int = Field(2, ge=0)
    TEST: TestCfg = TestCfg()
    # data reduction (reference keys), training set only
    REDUCTION: bool = False
    RESERVED_CLASS_NUM: int = Field(100, ge=1)
    RESERVED_RATE: float = Field(1.0, gt=0, le=1)
    # ours
    ROOT: Optional[str] = None  # default: $CATKD_DATA, else ./data
    DOWNLOAD: bool = False  # explicit opt-in (CIFAR-100 only)
    VAL_SIZE: int = Field(0, ge=0)  # images held out of the training set for validation
    SPLIT_SEED: int = 0  # seeds the reduction subset and the validation split (fixed across run seeds)
    # ImageNet's input: RandomResizedCrop(CROP_SIZE) to train, Resize(CROP_SIZE x 256/224) + CenterCrop to
    # evaluate; None: 224, the recipe (the other datasets' sizes are their own)
    CROP_SIZE: Optional[int] = Field(None, ge=32, le=512)
    SYNTHETIC: SyntheticCfg = SyntheticCfg()

    @model_validator(mode="after")
    def _reduction(self) -> "DatasetCfg":
        if self.REDUCTION and self.TYPE == "imagenet":
            raise ValueError("REDUCTION: data reduction is defined for CIFAR-100 and synthetic only")
        if self.CROP_SIZE is not None and self.TYPE != "imagenet":
            raise ValueError(f"CROP_SIZE: the input crop is set for ImageNet only ({self.TYPE}'s size is its own)")
        return self


class LogCfg(Section):
    TENSORBOARD_FREQ: int = 500
    SAVE_CHECKPOINT_FREQ: int = Field(40, ge=0)  # also keep epoch_<e>.pth every this many epochs (0: never)
    PREFIX: str = "./output"
    WANDB: bool = False  # catkd.train: log each epoch to Weights & Biases (project EXPERIMENT.PROJECT)


class RunCfg(Section):
    """Ours: where and how the run executes."""

    DEVICE: str = "auto"  # auto | cpu | cuda | cuda:1 ...
    PRECISION: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast on GPU
    # auto: channels-last on a CPU (oneDNN's convolutions are faster in it: `python -m catkd.bench step`),
    # the default format on a GPU (where channels-last pays with bf16); engine.device.channels_last
    CHANNELS_LAST: Union[Literal["auto"], bool] = "auto"
    THREADS: int = Field(0, ge=0)  # torch intra-op threads; 0 = leave torch's default
    PROGRESS: Literal["auto", "bar", "line", "none"] = "auto"
    CHECK_FINITE_EVERY: int = Field(20, ge=1)  # steps between (synchronising) divergence checks
    RESUME: bool = False  # continue from <output dir>/checkpoint.pth if present
    # teacher cache (README, "Teacher cache"): auto | off | a directory
    TEACHER_CACHE: str = "auto"
    TEACHER_CACHE_MAX_GB: float = Field(32.0, ge=0)  # a larger store: the live teacher, with a notice

    @field_validator("TEACHER_CACHE", mode="before")
    @classmethod
    def _cache_mode(cls, v: Any) -> Any:
        # yaml reads a bare off / on as a boolean: they mean the switch, not a directory called "False"
        if isinstance(v, bool):
            return "auto" if v else "off"
        if isinstance(v, str) and not v.strip():
            raise ValueError("expected auto, off or a directory, got an empty string")
        return v


class Config(Section):
    """The run config: the frame's sections below plus every registered method section (SECTIONS),
    held as extra attributes (`cfg.CAT_KD`) and validated by their own models."""

    model_config = ConfigDict(extra="allow", validate_assignment=True, allow_inf_nan=False)
    EXPERIMENT: ExperimentCfg = ExperimentCfg()
    DISTILLER: DistillerCfg = DistillerCfg()
    SOLVER: SolverCfg = SolverCfg()
    DATASET: DatasetCfg = DatasetCfg()
    LOG: LogCfg = LogCfg()
    RUN: RunCfg = RunCfg()

    @model_validator(mode="wrap")
    @classmethod
    def _method_sections(cls, data: Any, handler: Any) -> Any:
        # each method section by its own model; the frame's and the sections' errors reported together
        if not isinstance(data, dict):
            return handler(data)
        data, errors = dict(data), []
        for name in [k for k in data if k not in cls.model_fields]:
            if name not in SECTIONS:
                errors.append({"type": "extra_forbidden", "loc": (name,), "input": data.pop(name)})
            elif not isinstance(data[name], SECTIONS[name]):
                try:
                    data[name] = SECTIONS[name].model_validate(data[name])
                except ValidationError as e:
                    data.pop(name)
                    errors += _relocated(e, (name,))
        for name, section in SECTIONS.items():
            data.setdefault(name, section())
        try:
            cfg = handler(data)
        except ValidationError as e:
            errors = _relocated(e, ()) + errors
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return cfg

    @property
    def experiment_name(self) -> str:
        return self.EXPERIMENT.NAME or self.EXPERIMENT.TAG

    @property
    def output_dir(self) -> Path:
        return Path(self.LOG.PREFIX) / self.experiment_name

    def get(self, dotted: str) -> Any:
        node: Any = self
        for part in dotted.split("."):
            node = getattr(node, part)
        return node

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


# Keys of the reference (MDistiller / CAT-KD) outside any method's section that we accept but do not use
# (a method's own section declares its ignored and renamed keys: Section.ignored_keys / renamed_keys).
_NO_SUCH_PATH = "a switch of the reference's own code; catkd has no such option and ignores it"
_FRAME_IGNORED_KEYS = {
    "if_test": ("in the reference it switches the models to their CAM heads (bias-free 1x1 conv); "
                "catkd always uses CAM heads for CAT/CAT-KD and ordinary heads for the other methods"),
    "device": "set RUN.DEVICE instead",
    "LOG.TENSORBOARD_FREQ": "metrics are logged per epoch",
    "SOLVER.TRAINER": "one trainer serves every distiller",
    **{key: _NO_SUCH_PATH for key in ("if_Augment", "if_useFactor", "if_self_train")},
}
# Ignored keys that are noise in nearly every reference file: no notice.
_SILENT_KEYS = {"SOLVER.TRAINER"}
_FRAME = {"EXPERIMENT", "DISTILLER", "SOLVER", "DATASET", "LOG", "RUN"}


def _relocated(err: ValidationError, prefix: tuple) -> list[dict]:
    """A ValidationError's line errors under `prefix`, ready for ValidationError.from_exception_data."""
    return [{"type": x["type"], "loc": (*prefix, *x["loc"]), "input": x.get("input"),
             **({"ctx": x["ctx"]} if "ctx" in x else {})} for x in err.errors()]


def ignored_keys() -> dict[str, str]:
    """Every key of the reference that catkd accepts and ignores, with why (frame and sections)."""
    out = dict(_FRAME_IGNORED_KEYS)
    for section in SECTIONS.values():
        out.update(section.ignored_keys)
    return out


def renamed_keys() -> dict[str, str]:
    """The reference's spellings that catkd maps onto its own dotted keys (declared by the sections)."""
    out: dict[str, str] = {}
    for section in SECTIONS.values():
        out.update(section.renamed_keys)
    return out


_ONCE: list[set[str]] = []  # inside `notices_once()`: the notes already said


def notice(msg: str) -> None:
    if _ONCE:
        if msg in _ONCE[-1]:
            return
        _ONCE[-1].add(msg)
    print(f"catkd: note: {msg}", file=sys.stderr)


@contextlib.contextmanager
def notices_once() -> Iterator[None]:
    """Each note said once inside the block (a study's checks build the same config many times)."""
    _ONCE.append(set())
    try:
        yield
    finally:
        _ONCE.pop()


def _normalise(raw: dict, source: str, quiet: bool) -> dict:
    """Drop ignored keys (with a notice) and map renamed ones, before validation."""
    raw = copy.deepcopy(raw)
    flat = flatten(raw)
    for key, why in ignored_keys().items():
        if key in flat:
            pop_dotted(raw, key)
            if not quiet and key not in _SILENT_KEYS:
                notice(f"{source}: {key} ignored ({why})")
    for old, new in renamed_keys().items():
        if old in flat:
            pop_dotted(raw, old)
            if flat[old] not in (None, ""):  # the reference's empty default means "not given"
                set_dotted(raw, new, flat[old])
    return raw


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden" and len(e["loc"]) == 1:
            msg = f"unknown section; known: {', '.join([*Config.model_fields, *sorted(SECTIONS)])}"
            if not SECTIONS:  # catkd.config alone: the methods' sections are declared a floor up
                msg += " (no method section is registered: load a run's config with catkd.train.load_config)"
        elif e["type"] == "extra_forbidden":
            msg = "unknown key"
        else:
            msg = e["msg"]
            if e["type"] == "value_error":  # a validator's own message may start with the key it is about
                msg = msg.removeprefix("Value error, ")
                head, sep, rest = msg.partition(": ")
                if sep and head.replace("_", "").isalnum() and " " not in head:
                    key, msg = f"{key}.{head}" if key else head, rest
            if "input" in e and not isinstance(e["input"], dict):
                msg += f" (got {e['input']!r})"
        lines.append(f"{source}: {key}: {msg}")
    return "\n".join(lines)


def parse_value(text: str) -> Any:
    """Parse a command-line override value the way yaml would read it ("0.1" -> 0.1, "True" -> True)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def resolve_preset(name: str) -> Path:
    """A path to a yaml file, or a packaged preset name like `cifar100/CAT_KD/res32x4_shuv1`."""
    p = Path(name)
    if p.is_file():
        return p
    for cand in (PRESET_DIR / name, PRESET_DIR / f"{name}.yaml"):
        if cand.is_file():
            return cand
    known = sorted(str(q.relative_to(PRESET_DIR).with_suffix("")) for q in PRESET_DIR.rglob("*.yaml"))
    raise ConfigError(f"{name}: no such file or packaged preset; presets: {', '.join(known)}")


def read_yaml(path: Path) -> dict:
    try:
        st = path.stat()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    # a study's checks read each preset once per setting they try (hundreds for main_results): parse once
    # per file version, and hand out a copy, since callers modify what they get
    return copy.deepcopy(_parsed_yaml(str(path), st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=512)
def _parsed_yaml(path: str, mtime_ns: int, size: int) -> dict:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid yaml (safe loader): {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def build_config(
    raw: dict,
    source: str = "<config>",
    overrides: Optional[dict[str, Any]] = None,
    quiet: bool = False,
) -> Config:
    """Validate a nested dict (reference format) plus dotted overrides into a Config."""
    """Validate a nested dict (reference format) plus dotted overrides into a Config; every wrong key
    is named in one ConfigError. Names of models and distillers are checked a floor up
    (catkd.engine.validate.check_names), where the registries are."""
    try:
        data = _normalise(raw, source, quiet)
        renamed, ignored = renamed_keys(), ignored_keys()
        for key, value in (overrides or {}).items():
            key = renamed.get(key, key)
            if key in ignored:
                if not quiet:
                    notice(f"override {key} ignored ({ignored[key]})")
                continue
            set_dotted(data, key, value)
    except DottedKeyError as e:
        raise ConfigError(f"{source}: {e}") from None
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def load_config(
    path: str | Path, overrides: Optional[dict[str, Any]] = None, quiet: bool = False
) -> Config:
    """Read a config file (our preset or the reference's, unchanged) and apply dotted overrides."""
    p = resolve_preset(str(path))
    return build_config(read_yaml(p), str(p), overrides, quiet)


def data_root(cfg: Config) -> Path:
    """DATASET.ROOT, else $CATKD_DATA, else ./data (resolved to an absolute path)."""
    root = cfg.DATASET.ROOT or os.environ.get("CATKD_DATA") or "./data"
    return Path(root).expanduser().resolve()


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
