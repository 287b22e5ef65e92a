"""Which packaged preset a trial starts from: the study's `base`, or the one its `preset`, `method`
and `pair` choose.

A packaged preset is named `<dataset>/<method>/<pair>` (cifar100/KD/res32x4_res8x4), and the student
trained alone is `<dataset>/vanilla/<student>`. `method` swaps the method and keeps the pair (the
same pair's preset of another method), `pair` swaps the pair and keeps the method; `method: vanilla`
is the pair's student trained alone. So a study of every method on one pair names the pair once, in
`base`, and `--set base=...` moves all of it to another pair.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from catkd.config import PRESET_DIR, ConfigError, read_yaml
from catkd.study.keys import METHOD_KEY, PAIR_KEY, PRESET_KEY

VANILLA = "vanilla"


def _parts(name: str) -> Optional[tuple[str, str, str]]:
    """(dataset, method, pair) of a packaged preset name or of a path inside the packaged presets."""
    p = Path(name)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(PRESET_DIR.resolve())
        except ValueError:
            return None
    parts = p.with_suffix("").parts if p.suffix == ".yaml" else p.parts
    return tuple(parts) if len(parts) == 3 else None  # type: ignore[return-value]


def _norm(s: str) -> str:
    return s.lower().replace("-", "_")


@lru_cache(maxsize=None)
def methods(dataset: str) -> dict[str, str]:
    """{normalised name: preset folder} of the dataset's methods (CAT-KD, cat_kd -> CAT_KD)."""
    d = PRESET_DIR / dataset
    return {_norm(q.name): q.name for q in sorted(d.iterdir()) if q.is_dir()} if d.is_dir() else {}


@lru_cache(maxsize=None)
def _student_of(dataset: str, pair: str) -> Optional[str]:
    for folder in methods(dataset).values():
        f = PRESET_DIR / dataset / folder / f"{pair}.yaml"
        if f.is_file() and folder != VANILLA:
            return (read_yaml(f).get("DISTILLER") or {}).get("STUDENT")
    return None


def pairs_of(dataset: str, method: str) -> list[str]:
    folder = methods(dataset).get(_norm(method))
    return sorted(q.stem for q in (PRESET_DIR / dataset / folder).glob("*.yaml")) if folder else []


def chosen_preset(base: str, params: dict[str, Any]) -> Optional[str]:
    """The preset a trial's parameters choose (None: the study's base). ConfigError names what is
    missing: the method, the pair, or this method's preset for this pair."""
    preset, method, pair = params.get(PRESET_KEY), params.get(METHOD_KEY), params.get(PAIR_KEY)
    if method is None and pair is None:
        return preset
    parts = _parts(preset or base)
    if parts is None or parts[1] == VANILLA:
        raise ConfigError(f"{METHOD_KEY}/{PAIR_KEY} choose a packaged preset <dataset>/<method>/<pair>, and "
                          f"{preset or base!r} is not one; use a base such as cifar100/CAT_KD/res32x4_res8x4")
    dataset, method, pair = parts[0], method or parts[1], pair or parts[2]
    known = methods(dataset)
    if not isinstance(method, str) or _norm(method) not in known:
        raise ConfigError(f"{METHOD_KEY} {method!r}: no presets of that method for {dataset}; methods: "
                          f"{', '.join(known.values())}")
    folder = known[_norm(method)]
    if folder == VANILLA:
        student = _student_of(dataset, str(pair))
        if student is None or not (PRESET_DIR / dataset / VANILLA / f"{student}.yaml").is_file():
            raise ConfigError(f"{METHOD_KEY} {VANILLA}, {PAIR_KEY} {pair!r}: no preset of that pair's student "
                              f"trained alone in {dataset}/{VANILLA}")
        return f"{dataset}/{VANILLA}/{student}"
    if not (PRESET_DIR / dataset / folder / f"{pair}.yaml").is_file():
        raise ConfigError(f"{PAIR_KEY} {pair!r}: {folder} has no preset for it in {dataset}; its pairs: "
                          f"{', '.join(pairs_of(dataset, folder))}")
    return f"{dataset}/{folder}/{pair}"
