"""Checks of a study before anything starts: every value a trial could receive goes through the run
config, plus the checks that need more than one key (CAM sizes, class counts, seeds)."""
from __future__ import annotations

from typing import Any, Optional

from catkd.config import Config, ConfigError, read_yaml, resolve_preset
from catkd.engine.validate import build_run_config
from catkd.study.spec import ALIASES, PRESET_KEY, StudyError, StudySpec, canonical


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
        return build_run_config(raw, source, overrides, quiet=True)
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
    """Checks that need more than one key: the same path `catkd.train` takes (catkd.engine.validate)."""
    from catkd.engine.validate import validate_run

    try:
        validate_run(cfg)
    except ConfigError as e:
        raise StudyError(f"{source}: {where}: {e}") from None
