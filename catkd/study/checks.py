"""Checks of a study before anything starts: every value a trial could receive goes through the run
config, plus the checks that need more than one key (CAM sizes, class counts, seeds)."""
from __future__ import annotations

from typing import Any, Optional

from catkd.config import Config, ConfigError, read_yaml, resolve_preset
from catkd.engine.validate import build_run_config
from catkd.study.keys import ROLE_KEY, SELECT_KEYS
from catkd.study.presets import chosen_preset
from catkd.study.spec import PRESET_KEY, StudyError, StudySpec, base_choices


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
    chosen = {k: params.pop(k) for k in SELECT_KEYS if k in params}
    params.pop(ROLE_KEY, None)
    try:
        preset = chosen_preset(spec.base, chosen)
    except ConfigError as e:
        raise StudyError(f"{source}: {where}{'/'.join(k for k in chosen if k != PRESET_KEY)}: {e}") from None
    raw, _ = base_for(spec, preset, source, f"{where}{PRESET_KEY}" if preset else "base")
    overrides = {**spec.fixed, **params}
    if "EXPERIMENT.SEED" not in overrides:
        overrides["EXPERIMENT.SEED"] = spec.seeds[0]
    try:
        return build_run_config(raw, source, overrides, quiet=True)
    except ConfigError as e:
        # each line says where in the study file the value came from: fixed.KEY, space.NAME.choice: KEY
        raise StudyError("\n".join(line.replace(f"{source}: ", f"{source}: {where}", 1) if where else line
                                   for line in str(e).splitlines())) from None


def check_study(spec: StudySpec, source: str) -> None:
    """Every problem of the study at once, in one StudyError (exit 2), before anything starts."""
    errors = study_errors(spec, source)
    if errors:
        raise StudyError("\n".join(dict.fromkeys(errors)))  # one line per problem, in file order


def study_errors(spec: StudySpec, source: str) -> list[str]:
    errors: list[str] = []
    algo, w = spec.search.algorithm, spec.written  # w: a key as the file wrote it
    if spec.confirm is not None:
        overlap = sorted(set(spec.confirm.seeds) & set(spec.seeds))
        if overlap:
            where = "smoke.confirm.seeds" if spec.smoke_mode else "confirm.seeds"
            errors.append(
                f"{source}: {where}: {overlap} also seed{'s' if len(overlap) > 1 else ''} the search "
                f"(seeds {spec.seeds}); a confirm run with a search seed replays its search trial bit for "
                "bit, so it is not an independent repeat. Use new seeds, e.g. "
                f"{[max(spec.seeds) + 1 + i for i in range(len(spec.confirm.seeds))]}"
            )
    for gloc, g in _located(spec):
        if algo != "grid" and g and all(d.grid is not None for d in g.values()):
            errors.append(f"{source}: {gloc.rstrip('.')}: nothing to search: with the {algo} searcher each "
                          "combination of grid values is one search of search.num_samples trials over the "
                          "other dimensions, and this space has none (give one a choice or a range, or use "
                          "search.algorithm: grid)")
        for name, dim in g.items():
            if algo == "grid" and dim.values is None:
                errors.append(f"{source}: {gloc}{w(name)}: grid search needs a finite list (choice/grid), got {dim.kind}")
            for cond in (dim.when or {}):
                if cond not in g:
                    errors.append(f"{source}: {gloc}{w(name)}.when.{w(cond)}: no such dimension in this space")
    # fixed alone: its schema, then the checks across keys (CAM sizes, class counts) of that config
    try:
        base_cfg = run_config(spec, {}, source, "fixed.")
    except StudyError as e:
        return errors + str(e).splitlines()  # every trial would repeat these: probing dimensions adds nothing
    fixed_errors = _semantics(base_cfg, source, "fixed")
    errors += fixed_errors
    of_fixed = {line.split(": fixed: ", 1)[1] for line in fixed_errors}  # not repeated for every dimension
    if spec.metric == "val_acc" and base_cfg.DATASET.VAL_SIZE == 0:
        errors.append(f"{source}: metric: val_acc needs a validation split; set fixed.DATASET.VAL_SIZE "
                      "(e.g. 5000) or use metric: test_acc")
    if spec.scheduler.type == "asha" and spec.scheduler.grace_period > base_cfg.SOLVER.EPOCHS:
        errors.append(f"{source}: scheduler.grace_period: {spec.scheduler.grace_period} is more than the "
                      f"{base_cfg.SOLVER.EPOCHS} epochs of a trial")
    # every combination of the dimensions that pick the base config (a method without a preset for a
    # pair is found here), then every listed value (or range end) of every other dimension, each on
    # its own over the fixed config and the sub-grid's first base
    for gloc, g in _located(spec):
        combos = base_choices(g)
        for combo in combos:
            try:
                cfg = run_config(spec, combo, source, f"{gloc}")
            except StudyError as e:
                errors += str(e).splitlines()
                continue
            where = f"{gloc}{', '.join(f'{w(k)}={v}' for k, v in combo.items())}"
            errors += [line for line in _semantics(cfg, source, where)
                       if line.split(f"{where}: ", 1)[-1] not in of_fixed]
        for name, dim in g.items():
            if combos and name in combos[0]:
                continue
            for v in dim.probe_values():
                try:
                    cfg = run_config(spec, {**(combos or [{}])[0], **(dim.when or {}), name: v}, source,
                                     f"{gloc}{w(name)}.{dim.kind}: ")
                except StudyError as e:
                    errors += str(e).splitlines()
                    continue
                errors += [line for line in _semantics(cfg, source, f"{gloc}{w(name)}")
                           if line.split(f"{gloc}{w(name)}: ", 1)[-1] not in of_fixed]
    return errors


def _located(spec: StudySpec) -> list[tuple[str, dict]]:
    """(where in the file, sub-grid) for each sub-grid of the space."""
    return [(spec.where(i), g) for i, g in enumerate(spec.subgrids)]


def _semantics(cfg: Config, source: str, where: str) -> list[str]:
    """Checks that need more than one key: the same path `catkd.train` takes (catkd.engine.validate)."""
    from catkd.engine.validate import validate_run

    try:
        validate_run(cfg)
    except ConfigError as e:
        return [f"{source}: {where}: {line}" for line in str(e).splitlines()]
    return []
