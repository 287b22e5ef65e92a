"""Typed run configuration.

The file format is the reference's (MDistiller / yacs keys: EXPERIMENT, DISTILLER, SOLVER, DATASET,
LOG, KD, CAT_KD, ...), so a config file of the CAT-KD repository loads unchanged. Defaults live here
in code; our additions (seed, validation split, data root, device, precision, ...) are new keys with
defaults. Unknown keys and wrong types are rejected with the file and the dotted key named; keys of
the reference that we do not use are accepted with a one-line notice.
"""
from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PRESET_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the file and the dotted key."""


class _Section(BaseModel):
    # allow_inf_nan=False: an infinite β or LR is a typo, not a setting
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ExperimentCfg(_Section):
    PROJECT: str = "distill"
    NAME: str = ""
    TAG: str = "default"
    SEED: int = 0  # ours: seeds python, numpy, torch and the data order (the reference sets none)


class DistillerCfg(_Section):
    TYPE: str = "NONE"
    TEACHER: str = "ResNet50"
    STUDENT: str = "resnet32"
    # ours: explicit teacher checkpoint; default is $CATKD_TEACHERS/<arch>_vanilla/ckpt_epoch_240.pth
    TEACHER_CKPT: Optional[str] = None


class SolverCfg(_Section):
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


class TestCfg(_Section):
    BATCH_SIZE: int = Field(64, ge=1)


class SyntheticCfg(_Section):
    """The embedded offline dataset (catkd.data.synthetic); documented as synthetic wherever shown."""

    NUM_CLASSES: int = Field(10, ge=2, le=1000)
    TRAIN_PER_CLASS: int = Field(300, ge=1)
    TEST_PER_CLASS: int = Field(100, ge=1)
    IMAGE_SIZE: int = Field(32, ge=16, le=256)
    SEED: int = 0


class DatasetCfg(_Section):
    TYPE: Literal["cifar100", "imagenet", "synthetic"] = "cifar100"
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
    SYNTHETIC: SyntheticCfg = SyntheticCfg()


class LogCfg(_Section):
    TENSORBOARD_FREQ: int = 500
    SAVE_CHECKPOINT_FREQ: int = Field(40, ge=0)  # also keep epoch_<e>.pth every this many epochs (0: never)
    PREFIX: str = "./output"
    WANDB: bool = False  # catkd.train: log each epoch to Weights & Biases (project EXPERIMENT.PROJECT)


class KDLossCfg(_Section):
    CE_WEIGHT: float = Field(0.1, ge=0)
    KD_WEIGHT: float = Field(0.9, ge=0)


class KDCfg(_Section):
    TEMPERATURE: float = Field(4.0, gt=0)
    LOSS: KDLossCfg = KDLossCfg()


class DKDCfg(_Section):
    """DKD (Zhao et al., CVPR 2022) as MDistiller configures it (its section and defaults)."""

    CE_WEIGHT: float = Field(1.0, ge=0)
    ALPHA: float = Field(1.0, ge=0)  # weight of TCKD (target class)
    BETA: float = Field(8.0, ge=0)  # weight of NCKD (non-target classes)
    T: float = Field(4.0, gt=0)  # temperature
    WARMUP: int = Field(20, ge=1)  # epochs over which the DKD term ramps up linearly


class CATLossCfg(_Section):
    CE_WEIGHT: float = Field(1.0, ge=0)
    CAT_loss_weight: float = Field(400.0, ge=0)  # β
    CAM_RESOLUTION: int = Field(2, ge=1)


# CAT_KD.Strategy: the reference's integers, and the words studies may use for them
STRATEGY_WORDS = {"top": 0, "lowest": 1}


class CATKDCfg(_Section):
    LOSS: CATLossCfg = CATLossCfg()
    IF_NORMALIZE: bool = True
    onlyCAT: bool = False
    IF_BINARIZE: bool = False
    IF_OnlyTransferPartialCAMs: bool = False
    CAMs_Nums: int = Field(100, ge=1)
    Strategy: Literal[0, 1] = 0

    @field_validator("Strategy", mode="before")
    @classmethod
    def _strategy_words(cls, v: Any) -> Any:
        return STRATEGY_WORDS.get(v, v) if isinstance(v, str) else v


class RunCfg(_Section):
    """Ours: where and how the run executes."""

    DEVICE: str = "auto"  # auto | cpu | cuda | cuda:1 ...
    PRECISION: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast on GPU
    CHANNELS_LAST: bool = False
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


class Config(_Section):
    EXPERIMENT: ExperimentCfg = ExperimentCfg()
    DISTILLER: DistillerCfg = DistillerCfg()
    SOLVER: SolverCfg = SolverCfg()
    DATASET: DatasetCfg = DatasetCfg()
    LOG: LogCfg = LogCfg()
    KD: KDCfg = KDCfg()
    DKD: DKDCfg = DKDCfg()
    CAT_KD: CATKDCfg = CATKDCfg()
    RUN: RunCfg = RunCfg()

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


# Keys of the reference (MDistiller / CAT-KD) that we accept but do not use.
_NO_SUCH_PATH = "a switch of the reference's own code; catkd has no such option and ignores it"
IGNORED_KEYS = {
    "if_test": ("in the reference it switches the models to their CAM heads (bias-free 1x1 conv); "
                "catkd always uses CAM heads for CAT/CAT-KD and ordinary heads for the other methods"),
    "device": "set RUN.DEVICE instead",
    "LOG.TENSORBOARD_FREQ": "metrics are logged per epoch",
    "SOLVER.TRAINER": "one trainer serves every distiller",
    "CAT_KD.student_dir": "the reference's path for a student checkpoint; catkd trains students from scratch",
    **{key: _NO_SUCH_PATH for key in (
        "if_Augment", "if_useFactor", "if_self_train",
        "CAT_KD.if_Augment", "CAT_KD.if_useFactor", "CAT_KD.if_self_train")},
}
# Ignored keys that are noise in nearly every reference file: no notice.
_SILENT_KEYS = {"SOLVER.TRAINER"}
# MDistiller sections of distillers that catkd does not implement: accepted, ignored.
IGNORED_SECTIONS = {"AT", "RKD", "FITNET", "KDSVD", "CRD", "NST", "PKT", "SP", "VID", "REVIEWKD"}
# Spellings the reference's files use that we map onto our keys.
RENAMED_KEYS = {"CAT_KD.CE_WEIGHT": "CAT_KD.LOSS.CE_WEIGHT", "CAT_KD.teacher_dir": "DISTILLER.TEACHER_CKPT"}


def notice(msg: str) -> None:
    print(f"catkd: note: {msg}", file=sys.stderr)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = d
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{dotted}: {p!r} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def _pop_dotted(d: dict, dotted: str) -> Any:
    parts = dotted.split(".")
    node = d
    for p in parts[:-1]:
        node = node.get(p)
        if not isinstance(node, dict):
            return None
    return node.pop(parts[-1], None)


def _normalise(raw: dict, source: str, quiet: bool) -> dict:
    """Drop ignored keys (with a notice) and map renamed ones, before validation."""
    raw = copy.deepcopy(raw)
    for sec in sorted(IGNORED_SECTIONS & raw.keys()):
        raw.pop(sec)
        if not quiet:
            notice(f"{source}: section {sec} ignored (catkd implements NONE, KD, DKD and CAT_KD)")
    flat = _flatten(raw)
    for key, why in IGNORED_KEYS.items():
        if key in flat:
            _pop_dotted(raw, key)
            if not quiet and key not in _SILENT_KEYS:
                notice(f"{source}: {key} ignored ({why})")
    for old, new in RENAMED_KEYS.items():
        if old in flat:
            _pop_dotted(raw, old)
            if flat[old] not in (None, ""):  # the reference's empty default means "not given"
                _set_dotted(raw, new, flat[old])
    return raw


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        else:
            msg = e["msg"]
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
        text = path.read_text()
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
    data = _normalise(raw, source, quiet)
    for key, value in (overrides or {}).items():
        key = RENAMED_KEYS.get(key, key)
        if key in IGNORED_KEYS:
            if not quiet:
                notice(f"override {key} ignored ({IGNORED_KEYS[key]})")
            continue
        _set_dotted(data, key, value)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None
    check_names(cfg, source, quiet)
    return cfg


def load_config(
    path: str | Path, overrides: Optional[dict[str, Any]] = None, quiet: bool = False
) -> Config:
    """Read a config file (our preset or the reference's, unchanged) and apply dotted overrides."""
    p = resolve_preset(str(path))
    return build_config(read_yaml(p), str(p), overrides, quiet)


def check_names(cfg: Config, source: str, quiet: bool = True) -> None:
    """Names that refer to registries: fail at load time with the key, not deep in a run.

    Aliases (`vanilla`, `CAT-KD`, the reference's ImageNet `MobileNetV2`, ...) are replaced by the
    registered name here, so results, reports and published-number joins see one name per thing.
    """
    from catkd.distillers import DISTILLERS
    from catkd.models import canonical_model_name, model_alias_note, model_names

    family = "imagenet" if cfg.DATASET.TYPE == "imagenet" else "cifar"
    if cfg.DISTILLER.TYPE not in DISTILLERS:
        raise ConfigError(
            f"{source}: DISTILLER.TYPE: unknown distiller {cfg.DISTILLER.TYPE!r}; "
            f"known: {', '.join(DISTILLERS.names())}"
        )
    cfg.DISTILLER.TYPE = DISTILLERS.canonical(cfg.DISTILLER.TYPE)
    known = model_names(family)
    roles = ["STUDENT"] + (["TEACHER"] if DISTILLERS.get(cfg.DISTILLER.TYPE).needs_teacher else [])
    for role in roles:
        name = getattr(cfg.DISTILLER, role)
        try:
            canon = canonical_model_name(name, family)
        except KeyError:
            raise ConfigError(
                f"{source}: DISTILLER.{role}: unknown {family} model {name!r}; known: {', '.join(known)}"
            ) from None
        if canon != name:
            note = model_alias_note(name, family)
            if note and not quiet:
                notice(f"{source}: DISTILLER.{role}: {name!r} read as {canon!r} ({note})")
            setattr(cfg.DISTILLER, role, canon)
    stages = cfg.SOLVER.LR_DECAY_STAGES
    if sorted(stages) != stages:
        raise ConfigError(f"{source}: SOLVER.LR_DECAY_STAGES: must be increasing, got {stages}")
    if cfg.DATASET.REDUCTION and cfg.DATASET.TYPE == "imagenet":
        raise ConfigError(f"{source}: DATASET.REDUCTION: data reduction is defined for CIFAR-100 and synthetic only")


def data_root(cfg: Config) -> Path:
    """DATASET.ROOT, else $CATKD_DATA, else ./data (resolved to an absolute path)."""
    root = cfg.DATASET.ROOT or os.environ.get("CATKD_DATA") or "./data"
    return Path(root).expanduser().resolve()


def teacher_path(cfg: Config) -> Path:
    """DISTILLER.TEACHER_CKPT, else $CATKD_TEACHERS/<arch>_vanilla/ckpt_epoch_240.pth (reference layout)."""
    if cfg.DISTILLER.TEACHER_CKPT:
        return Path(cfg.DISTILLER.TEACHER_CKPT).expanduser().resolve()
    base = os.environ.get("CATKD_TEACHERS") or "./download_ckpts/cifar_teachers"
    return (Path(base) / f"{cfg.DISTILLER.TEACHER}_vanilla" / "ckpt_epoch_240.pth").expanduser().resolve()


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
