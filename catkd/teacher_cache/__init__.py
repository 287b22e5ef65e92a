"""The teacher cache (docs/contracts.md, C8): a study pays for its teacher once.

`build_targets(...)` gives the Trainer a targets provider: the live teacher, or the live teacher
behind a memory-mapped store shared by every run and trial on a node (catkd.teacher_cache.store).
"""
from catkd.teacher_cache.provider import CachedTargets, LiveTargets, build_targets, cache_root, store_size

__all__ = ["CachedTargets", "LiveTargets", "build_targets", "cache_root", "store_size"]
