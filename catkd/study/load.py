"""Reading a study file before Ray starts: yaml (safe_load only), --set, every setting's name
resolved to its dotted key (catkd.study.keys), the schema (catkd.study.spec), then --smoke and every
check (catkd.study.checks): all of a file's problems in one StudyError, naming file and key.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import ValidationError

from catkd.config import ConfigError, notice, notices_once, read_yaml
from catkd.study.checks import run_config, study_errors
from catkd.study.keys import SELECT_KEYS, resolve_keys
from catkd.study.presets import chosen_preset
from catkd.study.smoke import apply_smoke
from catkd.study.sources import expand_sources
from catkd.study.spec import Dim, StudyError, StudySpec, base_choices


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
        node: Any = raw
        parts = key.split(".")
        for i, p in enumerate(parts):
            if isinstance(node, list):  # a sub-grid of a list space by its index: space.13.cam_resolution
                if not p.isdigit() or int(p) >= len(node):
                    raise StudyError(f"--set {key}: {p!r} is not an index of that list (0..{len(node) - 1})")
                p = int(p)
            elif not isinstance(node, dict):
                raise StudyError(f"--set {key}: {parts[i - 1]!r} is not a section")
            if i == len(parts) - 1:
                node[p] = value
            else:
                node = node[p] if isinstance(node, list) else node.setdefault(p, {})


def load_study(path: str | Path, smoke: bool = False, sets: Optional[dict[str, Any]] = None) -> StudySpec:
    """Read, schema-check, apply --set and --smoke, then check every value against the run config."""
    with notices_once():  # the checks build each preset's config many times: its notes are said once
        return _load_study(path, smoke, sets)


def _load_study(path: str | Path, smoke: bool, sets: Optional[dict[str, Any]]) -> StudySpec:
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
    # settings named once: every alias becomes its dotted key here, before anything else reads them
    written: dict[str, str] = {}
    resolved, errors = resolve_keys(raw, source, written=written)
    try:
        spec = StudySpec.model_validate(resolved)
    except ValidationError:
        try:  # the same schema errors, named as the file names them
            StudySpec.model_validate(raw)
        except ValidationError as e:
            errors = _schema_errors(e, source, raw).splitlines() + errors
    if errors:
        # the checks of the settings that are well-formed still run: every problem in one message
        valid = _valid_part(resolved)
        if valid is not None:
            valid.written_names = written
            errors += [e for e in study_errors(valid, source) if e not in errors]
        raise StudyError("\n".join(dict.fromkeys(errors)))
    spec.written_names = written
    if spec.from_:  # the source experiment as an absolute path: what study.yaml records
        spec.from_ = str(Path(spec.from_).expanduser().resolve())
    unresolved = spec.model_copy(deep=True)  # before the ranges that follow a preset are resolved
    _skip_missing(spec, source)
    errors = _around(spec, source) + expand_sources(spec, source, smoke)
    if smoke:
        # a green smoke must mean the real study will start: check the real one first
        try:
            _check(spec, source, errors)
        except StudyError as e:
            raise StudyError(f"{e}\n(--smoke checks the real study before its smoke version)") from None
        try:  # from the file's own space: smoke.base may choose other presets, so other ranges
            spec = apply_smoke(unresolved)
        except ValueError as e:
            raise StudyError(f"{source}: {e}") from None
        spec.written_names = written
        _skip_missing(spec, source)
        errors = _around(spec, source) + expand_sources(spec, source, smoke)
    _check(spec, source, errors)
    return spec


def _check(spec: StudySpec, source: str, errors: list[str]) -> None:
    """Every problem at once: the `around` ranges that could not be resolved, then the checks."""
    errors = errors + [e for e in study_errors(spec, source) if e not in errors]
    if errors:
        raise StudyError("\n".join(dict.fromkeys(errors)))


def _skip_missing(spec: StudySpec, source: str) -> None:
    """missing_presets: skip: leave out each sub-grid none of whose method/pair values has a preset."""
    if spec.missing_presets != "skip" or not isinstance(spec.space, list):
        return
    kept = []
    for i, g in enumerate(spec.space):
        combos = base_choices(g)
        missing = []
        for c in combos:
            try:
                chosen_preset(spec.base, c)
            except ConfigError as e:
                missing.append(str(e))
        if combos and len(missing) == len(combos):
            notice(f"{source}: {', '.join(f'{k}={v}' for k, v in combos[0].items())} left out "
                   f"(missing_presets: skip): {missing[0]}")
            continue
        kept.append(i)
    spec.keep_subgrids(kept)


def _around(spec: StudySpec, source: str) -> list[str]:
    """Each `around: [low, high]` dimension becomes `loguniform` over [its preset value x low, x high]:
    the preset its sub-grid chooses (one preset per sub-grid), or the base."""
    errors = []
    for i, g in enumerate(spec.subgrids):
        where = spec.where(i)
        choices = base_choices(g)
        for name, dim in g.items():
            if dim.around is None:
                continue
            loc = f"{source}: {where}{spec.written(name)}.around"
            if len(choices) > 1:
                errors.append(f"{loc}: needs one preset in its sub-grid ({', '.join(choices[0])} with one value); "
                              "give each method its own sub-grid")
                continue
            try:
                value = run_config(spec, (choices or [{}])[0], source).get(name)
            except (StudyError, AttributeError, KeyError) as e:
                errors.append(f"{loc}: cannot read the preset's value ({e})")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                errors.append(f"{loc}: the preset's value is {value!r}; around needs a positive number")
                continue
            lo, hi = dim.around
            g[name] = Dim(loguniform=(value * lo, value * hi), when=dim.when)
    return errors


def _valid_part(resolved: dict[str, Any]) -> Optional[StudySpec]:
    """The well-formed part of a study that has errors: its known settings, its valid dimensions
    (and those whose conditions they name), defaults where a section is wrong. None without a base."""
    def known(k: Any) -> bool:
        return isinstance(k, str) and ("." in k or k in SELECT_KEYS)

    def dims(g: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in (g.items() if isinstance(g, dict) else ()):
            try:
                if known(k):
                    Dim.model_validate(v)
                    out[k] = v
            except ValidationError:
                pass
        return {k: v for k, v in out.items() if set((v.get("when") or {}) if isinstance(v, dict) else ()) <= set(out)}

    d = dict(resolved)
    if isinstance(d.get("fixed"), dict):
        d["fixed"] = {k: v for k, v in d["fixed"].items() if known(k)}
    if "space" in d:
        d["space"] = [dims(g) for g in d["space"]] if isinstance(d["space"], list) else dims(d["space"])
    for _ in range(2):  # then without the sections that are still wrong (their defaults)
        try:
            return StudySpec.model_validate(d)
        except ValidationError as e:
            for key in {str(x["loc"][0]) for x in e.errors()} - {"name", "base"}:
                d.pop(key, None)
    return None
