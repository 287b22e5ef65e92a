"""The teacher cache stores a study's runs would create (`--dry-run`): their sizes, and whether a run
will read its teacher's targets from one (a store exists and fits RUN.TEACHER_CACHE_MAX_GB)."""
from __future__ import annotations

from typing import Any

import torch

from catkd.config import Config
from catkd.study.spec import StudySpec

_STORES: dict[str, Any] = {}


def store_of(cfg: Config) -> Any:
    """(label, bytes) of the teacher cache store this run would create, or None where it uses none: no
    teacher, no finite view set, the cache off, or a distiller whose teacher output depends on the
    batch (OFD's teacher in train mode). Whether the store fits RUN.TEACHER_CACHE_MAX_GB is the
    caller's question. Memoised per setting of the parts that decide it."""
    import json

    from catkd.data import dataset_entry
    from catkd.distillers import DISTILLERS, build_distiller
    from catkd.models import build_model
    from catkd.teacher_cache.provider import store_size

    d_all = cfg.to_dict()
    key = json.dumps({k: v for k, v in d_all.items() if k not in ("EXPERIMENT", "SOLVER", "LOG")}, sort_keys=True,
                     default=str)
    if key in _STORES:
        return _STORES[key]
    kind = DISTILLERS.get(cfg.DISTILLER.TYPE)
    entry = dataset_entry(cfg)
    out = None
    if kind.needs_teacher and entry.views(cfg) is not None and cfg.RUN.TEACHER_CACHE != "off":
        k, size = entry.num_classes(cfg), entry.image_size(cfg)
        student = build_model(cfg.DISTILLER.STUDENT, 2, head_bias=kind.student_head_bias, family=entry.family)
        teacher = build_model(cfg.DISTILLER.TEACHER, k, family=entry.family).eval()
        d = build_distiller(cfg, student, teacher, k)
        if d.cacheable:
            spec_t = d.target_spec()
            label = f"{cfg.DISTILLER.TEACHER} " + ", ".join(f"{a}={b}" for a, b in spec_t.items())
            with torch.no_grad():
                t = d.live_targets(torch.zeros(1, 3, size, size))
            width = sum(v[0].numel() for v in t.values())
            out = (label, store_size(entry.sizes(cfg)[0], entry.views(cfg).count, width))
    _STORES[key] = out
    return out


def cache_usable(cfg: Config) -> bool:
    """Will this run read its teacher's targets from the cache (a store exists and fits the cap)?"""
    store = store_of(cfg)
    return store is not None and store[1] <= cfg.RUN.TEACHER_CACHE_MAX_GB * 1e9


def store_sizes(spec: StudySpec, groups: list) -> dict[str, int]:
    """Bytes of each teacher cache store the study can create: one per (teacher, target spec), over
    the finite values of the dimensions that change the targets (R, binarize, the distiller). `groups`:
    the planned trial groups (catkd.study.estimate.plan), each with its `.cfg`."""
    from catkd.study.preflight import target_variant_configs

    stores = (store_of(cfg) for cfg in [g.cfg for g in groups] + target_variant_configs(spec))
    return dict(s for s in stores if s is not None)
