"""Validation hold-out and data reduction on label arrays (shared by CIFAR-100 and the synthetic set).

Both work on indices into a training set and are seeded by DATASET.SPLIT_SEED only, so the split
stays fixed across run seeds. Each class draws from its own random stream (split seed, purpose,
class id): a class's subset does not change when other classes or RESERVED_CLASS_NUM change, and
for one seed a smaller RESERVED_RATE keeps a subset of what a larger one keeps.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from catkd.data.common import DataError, numpy_rng

_VAL_STREAM = 0x7A1  # purpose tags for the per-class random streams
_REDUCTION_STREAM = 0x4ED


def _per_class_quota(counts: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Spread `size` over classes as evenly as their counts allow (water-filling).

    Counts differ by at most one between classes that are not exhausted; which classes take the
    leftover +1 is drawn with the seed.
    """
    quota = np.zeros_like(counts)
    remaining = int(size)
    rng = numpy_rng(_VAL_STREAM, seed, -1)
    while remaining > 0:
        active = np.flatnonzero(quota < counts)
        share = remaining // len(active)
        if share == 0:
            chosen = rng.choice(active, size=remaining, replace=False)
            quota[chosen] += 1
            break
        give = np.minimum(share, counts[active] - quota[active])
        quota[active] += give
        remaining -= int(give.sum())
    return quota


def stratified_holdout(labels: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Hold `size` images out of a training set, stratified by class, seeded.

    Returns (kept indices, held-out indices, info), indices sorted ascending and disjoint.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if size <= 0:
        return np.arange(n), np.zeros(0, dtype=np.int64), {"size": 0, "split_seed": seed}
    if size >= n:
        raise DataError(
            f"DATASET.VAL_SIZE: {size} would leave no training images (the training set has {n}); "
            "use a smaller validation split"
        )
    classes, counts = np.unique(labels, return_counts=True)
    quota = _per_class_quota(counts, size, seed)
    held = []
    for c, q in zip(classes, quota):
        if q:
            members = np.flatnonzero(labels == c)
            held.append(numpy_rng(_VAL_STREAM, seed, int(c)).permutation(members)[:q])
    held_idx = np.sort(np.concatenate(held))
    mask = np.ones(n, dtype=bool)
    mask[held_idx] = False
    info = {
        "size": int(size),
        "split_seed": int(seed),
        "per_class_counts": np.bincount(labels[held_idx], minlength=int(classes.max()) + 1).tolist(),
    }
    return np.flatnonzero(mask), held_idx, info


def reduce_training_set(
    labels: np.ndarray, num_classes: int, keep_classes: int, rate: float, seed: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """Data reduction (DATASET.REDUCTION): keep classes 0..keep_classes-1 and, per kept class,
    a seeded random subset of int(n_c * rate) images (n_c: that class's count in `labels`).

    Returns (kept indices sorted ascending, info).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if keep_classes > num_classes:
        raise DataError(
            f"DATASET.RESERVED_CLASS_NUM: {keep_classes} is more than the dataset's {num_classes} classes"
        )
    if keep_classes < 1:
        raise DataError(f"DATASET.RESERVED_CLASS_NUM: must be at least 1, got {keep_classes}")
    if not 0.0 < rate <= 1.0:
        raise DataError(f"DATASET.RESERVED_RATE: must be in (0, 1], got {rate}")
    kept, counts = [], []
    for c in range(keep_classes):
        members = np.flatnonzero(labels == c)
        m = int(len(members) * rate)  # the reference's int(500 * rate)
        kept.append(numpy_rng(_REDUCTION_STREAM, seed, c).permutation(members)[:m])
        counts.append(m)
    idx = np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)
    if len(idx) == 0:
        raise DataError(
            f"DATASET.RESERVED_RATE: {rate} keeps no training images "
            f"(int(n_c * rate) is 0 for every kept class)"
        )
    info = {
        "classes": int(keep_classes),
        "rate": float(rate),
        "split_seed": int(seed),
        "per_class_counts": counts,
        "size": int(len(idx)),
    }
    return idx, info
