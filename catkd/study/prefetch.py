"""A study's teacher prefetch: which stores and seeds to fill ahead of its trials (the process that
fills them is catkd.teacher_cache.prefetch).

Every configuration the study can run is known before its trials start (the probe configs and one
per value of each setting that changes the teacher targets), and so are its seeds: the search seeds
first, then the confirm seeds (new seeds, whose views the search never draws). The prefetch fills
from idle CPU time -- Ray starting, a lone trial at the end of a stage, the barrier between the
search and the confirm stage. Its job and counts go in the experiment directory (`prefetch-<k>.json`,
summed by `catkd.teacher_cache.prefetch.totals`), its output in `<experiment>/prefetch.log`.

Started by the driver on CPU-only, single-node studies with the cache on (`--no-prefetch` turns it off).
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Optional

from catkd.study.preflight import probe_configs, target_variant_configs
from catkd.study.progress import say

from catkd.teacher_cache.prefetch import start as start_processes
from catkd.teacher_cache.prefetch import stop

__all__ = ["plan", "prefetch_configs", "start", "stop"]


def _signature(cfg) -> str:
    """What the teacher targets depend on, to skip configs that cannot need another store (β, the
    student and the schedule do not; a duplicate only costs a Trainer, never a missing store)."""
    cat = cfg.CAT_KD.model_dump(mode="json")
    cat.get("LOSS", {}).pop("CAT_loss_weight", None)
    cat.get("LOSS", {}).pop("CE_loss_weight", None)
    return json.dumps({"distiller": cfg.DISTILLER.TYPE, "teacher": cfg.DISTILLER.TEACHER,
                       "ckpt": cfg.DISTILLER.TEACHER_CKPT, "data": cfg.DATASET.model_dump(mode="json"),
                       "precision": cfg.RUN.PRECISION, "channels_last": cfg.RUN.CHANNELS_LAST,
                       "cache": cfg.RUN.TEACHER_CACHE, "cat": cat}, sort_keys=True)


def prefetch_configs(spec) -> tuple[list, Optional[str]]:
    """(configs whose stores to fill, or why there is nothing to prefetch)."""
    from catkd.distillers import DISTILLERS

    names = [n for g in spec.subgrids for n in g]
    if spec.search.algorithm != "grid" and any(n.startswith("DATASET.") for n in names):
        return [], "the study samples data settings, so the views its trials draw are not known ahead"
    cfgs = list(probe_configs(spec)) + target_variant_configs(spec)
    out, seen = [], set()
    for c in cfgs:
        if not DISTILLERS.get(c.DISTILLER.TYPE).needs_teacher or c.RUN.TEACHER_CACHE == "off":
            continue
        sig = _signature(c)
        if sig not in seen:
            seen.add(sig)
            out.append(c)
    return out, (None if out else "no trial uses the teacher cache")


def plan(spec, cfgs: Optional[list] = None) -> dict[str, Any]:
    """The prefetch job of the study: its configs, and its seeds by stage (search, then confirm)."""
    if cfgs is None:
        cfgs, _ = prefetch_configs(spec)
    search = list(dict.fromkeys(spec.seeds))
    confirm = [s for s in dict.fromkeys(spec.confirm.seeds if spec.confirm is not None else []) if s not in search]
    return {"configs": [c.model_dump(mode="json") for c in cfgs], "seeds": search + confirm,
            "stages": [g for g in (search, confirm) if g]}


def start(spec, env: dict[str, str], exp_dir: Path) -> list[subprocess.Popen]:
    """Start the study's prefetch process(es) ([] with a line saying why where they cannot help)."""
    cfgs, why = prefetch_configs(spec)
    if why:
        say(f"teacher prefetch: off ({why})")
        return []
    job, log = plan(spec, cfgs), exp_dir / "prefetch.log"
    procs = start_processes(job, exp_dir, env, log)
    say(f"teacher prefetch: filling the teacher cache for seeds {job['seeds']} from idle CPU time "
        f"(at the lowest CPU priority; log {log})")
    return procs
