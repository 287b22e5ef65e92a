"""The names of a study's settings and where they sit in a study file.

The friendly names (beta, cam_resolution, student, ...) are resolved in one place: `resolve_keys`
turns a study file's settings into dotted config keys when the file is loaded, so the searcher, the
trainable, the results and the analysis see one name per setting. `subgrids` is the one reading of
"a space is one mapping or a list of sub-grids".
"""
from __future__ import annotations

from typing import Any, Optional

SEED_KEY = "EXPERIMENT.SEED"
PRESET_KEY = "preset"  # a dimension that swaps the whole base config (e.g. the pairs of main_results)
# a packaged preset is <dataset>/<method>/<pair>: these two dimensions choose the method's preset for
# the base's pair, the pair's preset of the base's method, or both (catkd.study.presets)
METHOD_KEY = "method"
PAIR_KEY = "pair"
# what a confirm run re-runs: "tuned" (a configuration the search found) or "preset" (the arm's
# preset settings, the reference a tuned configuration is measured against)
ROLE_KEY = "role"
SELECT_KEYS = (PRESET_KEY, METHOD_KEY, PAIR_KEY)  # study keys that pick the base config, not config keys

# Each friendly name maps to the reference's dotted key.
ALIASES: dict[str, str] = {
    "beta": "CAT_KD.LOSS.CAT_loss_weight",
    "cam_resolution": "CAT_KD.LOSS.CAM_RESOLUTION",
    "normalize": "CAT_KD.IF_NORMALIZE",
    "binarize": "CAT_KD.IF_BINARIZE",
    "only_cat": "CAT_KD.onlyCAT",
    "ce_weight": "CAT_KD.LOSS.CE_WEIGHT",
    "partial_cams": "CAT_KD.IF_OnlyTransferPartialCAMs",
    "cam_count": "CAT_KD.CAMs_Nums",
    "cam_strategy": "CAT_KD.Strategy",
    "reduction": "DATASET.REDUCTION",
    "reserved_classes": "DATASET.RESERVED_CLASS_NUM",
    "reserved_rate": "DATASET.RESERVED_RATE",
    "lr": "SOLVER.LR",
    "epochs": "SOLVER.EPOCHS",
    "teacher": "DISTILLER.TEACHER",
    "teacher_epoch": "DISTILLER.TEACHER_EPOCH",
    "student": "DISTILLER.STUDENT",
    "distiller": "DISTILLER.TYPE",
    "seed": SEED_KEY,
    "val_size": "DATASET.VAL_SIZE",
}
SHORT_NAMES = {key: alias for alias, key in ALIASES.items()}  # dotted key -> the study's word for it


def short_name(key: str) -> str:
    """The study's word for a dotted key (the key itself when it has none): for live tables."""
    return SHORT_NAMES.get(key, key)


def subgrids(space: Any) -> list[dict[str, Any]]:
    """A space (one mapping of dimensions, or a list of sub-grids) as its list of sub-grids."""
    if space is None:
        return [{}]
    return list(space) if isinstance(space, list) else [space]


def _resolve(name: Any, where: str, errors: list[str], strict: bool, written: Optional[dict] = None) -> Any:
    if not isinstance(name, str) or name in SELECT_KEYS or "." in name:
        return name
    if name in ALIASES:
        if written is not None:
            written[ALIASES[name]] = name
        return ALIASES[name]
    if strict:
        errors.append(f"{where}{name}: unknown setting; use a dotted config key (e.g. CAT_KD.LOSS.CAT_loss_weight) "
                      f"or one of {', '.join(sorted([*ALIASES, *SELECT_KEYS]))}")
    return name


def resolve_names(d: dict[str, Any]) -> dict[str, Any]:
    """{name: value} with aliases replaced by dotted keys, unknown names kept (files of older versions)."""
    return _mapping(d, "", [], strict=False)


def _mapping(d: Any, where: str, errors: list[str], strict: bool, written: Optional[dict] = None) -> Any:
    """{name: value} with every name resolved; a setting given twice (alias and key) is an error."""
    if not isinstance(d, dict):
        return d
    out: dict[Any, Any] = {}
    first: dict[Any, Any] = {}  # key -> the name it was first given under
    for name, value in d.items():
        key = _resolve(name, where, errors, strict, written)
        if key in out:
            errors.append(f"{where}{name}: the same setting as {first[key]!r} ({key}), given twice")
        first.setdefault(key, name)
        out[key] = value
    return out


def _space(space: Any, where: str, errors: list[str], strict: bool, written: Optional[dict] = None) -> Any:
    out = []
    for i, g in enumerate(subgrids(space)):
        gwhere = f"{where}[{i}]." if isinstance(space, list) else f"{where}."
        g = _mapping(g, gwhere, errors, strict, written)
        if isinstance(g, dict):
            for key, dim in g.items():
                if isinstance(dim, dict) and isinstance(dim.get("when"), dict):
                    g[key] = {**dim, "when": _mapping(dim["when"], f"{gwhere}{key}.when.", errors, strict, written)}
        out.append(g)
    return out if isinstance(space, list) else out[0]


def resolve_keys(raw: dict[str, Any], source: str = "<study>", strict: bool = True,
                 written: Optional[dict[str, str]] = None) -> tuple[dict[str, Any], list[str]]:
    """A study file's dict with every setting name as its dotted key (fixed, space and its `when:`
    conditions, smoke.fixed, smoke.space) and the errors found (unknown names, a setting given
    twice), each naming file and key. strict=False: leave unknown names as they are (old files).
    `written` collects {dotted key: the name the file used}, for messages in the file's words."""
    errors: list[str] = []
    out = dict(raw)
    if "fixed" in out:
        out["fixed"] = _mapping(out["fixed"], "fixed.", errors, strict, written)
    if "space" in out:
        out["space"] = _space(out["space"], "space", errors, strict, written)
    smoke = out.get("smoke")
    if isinstance(smoke, dict):
        smoke = dict(smoke)
        if "fixed" in smoke:
            smoke["fixed"] = _mapping(smoke["fixed"], "smoke.fixed.", errors, strict, written)
        if "space" in smoke:
            smoke["space"] = _space(smoke["space"], "smoke.space", errors, strict, written)
        out["smoke"] = smoke
    return out, [f"{source}: {e}" for e in errors]
