"""CRD's contrast indices, drawn on the device from (seed, epoch, sample index) alone.

MDistiller's CIFAR-100 dataset draws, per sample and per epoch, K negatives uniformly without
replacement from the indices of all images of *other* classes (with replacement when K exceeds that
pool) with numpy's global RNG in the loader workers: not reproducible and about 1 ms per sample.
Here each sample's K negatives are the first K values of a keyed pseudo-random permutation of its
pool (a 4-round Feistel network with cycle-walking), keyed by (seed, epoch, sample index): the same
draws whatever the batch, the worker count or a resume, distinct within a sample, vectorised over
the batch, no host round trip.
"""
from __future__ import annotations

import torch
from torch import Tensor

_MASK31 = (1 << 31) - 1
_M1, _M2 = 0x5BD1E995, 0x2C1B3C6D  # odd multipliers below 2^31: every product stays below 2^62


def _hash(x: Tensor, key: Tensor) -> Tensor:
    """A 31-bit mix of non-negative int64 x (< 2^31) and key (< 2^31)."""
    h = ((x ^ key) * _M1) & _MASK31
    h = h ^ (h >> 13)
    h = (h * _M2) & _MASK31
    return h ^ (h >> 16)


def sample_keys(seed: int, epoch: int, index: Tensor) -> Tensor:
    """(N,) 31-bit keys, one per (seed, epoch, dataset index)."""
    base = torch.tensor(((seed * 1_000_003) ^ (epoch * 7_919)) & _MASK31, dtype=torch.int64, device=index.device)
    return _hash(_hash(index.to(torch.int64) & _MASK31, base), base ^ 0x3C6EF372)


def keyed_permutation(j: Tensor, key: Tensor, size: Tensor) -> Tensor:
    """Position j (< size) -> its image under a permutation of [0, size) chosen by `key`.

    j: (N, K) int64; key, size: (N, 1) int64. A Feistel network permutes [0, 4^h) with 4^h >= size;
    values that land outside [0, size) are permuted again until inside (cycle-walking), which keeps it
    a permutation of [0, size)."""
    half = max(1, (int(size.max()).bit_length() + 1) // 2)
    mask = (1 << half) - 1

    def feistel(v: Tensor, k: Tensor) -> Tensor:
        left, right = v >> half, v & mask
        for r in range(4):
            left, right = right, left ^ (_hash(right, (k + r * 0x9E3779B) & _MASK31) & mask)
        return (left << half) | right

    out = feistel(j, key)
    outside = out >= size
    while bool(outside.any()):
        rows, cols = outside.nonzero(as_tuple=True)
        out[rows, cols] = feistel(out[rows, cols], key[rows, 0])
        outside[rows, cols] = out[rows, cols] >= size[rows, 0]
    return out


class ContrastSampler:
    """Contrast indices for CRD: (N, K + 1) training-set rows, column 0 the positive.

    labels: (n,) int64 class of each training row. mode "exact": the positive is the sample itself;
    "relax": a row of the same class drawn from the same key (MDistiller's two modes)."""

    def __init__(self, labels: Tensor, k: int, mode: str = "exact"):
        self.k, self.mode = int(k), mode
        labels = labels.to(torch.int64)
        num_classes = int(labels.max()) + 1 if len(labels) else 0
        self.by_class = torch.argsort(labels, stable=True)  # rows sorted by class
        counts = torch.bincount(labels, minlength=num_classes)
        self.start = torch.cumsum(counts, 0) - counts  # first position of each class in by_class
        self.count = counts
        self.labels = labels
        self.n = len(labels)

    def to(self, device: torch.device) -> "ContrastSampler":
        for name in ("by_class", "start", "count", "labels"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def __call__(self, rows: Tensor, keys: Tensor) -> Tensor:
        """rows: (N,) training rows of the batch; keys: (N,) from `sample_keys`."""
        c = self.labels[rows]
        start, count = self.start[c][:, None], self.count[c][:, None]
        pool = self.n - count  # the other classes' rows
        key = keys[:, None]
        j = torch.arange(self.k, device=rows.device, dtype=torch.int64)[None, :].expand(len(rows), -1)
        if self.k <= int(pool.min()):
            pos = keyed_permutation(j.clone(), key, pool)  # distinct: without replacement
        else:  # MDistiller draws with replacement when K exceeds the pool
            pos = _hash(j, key) % pool
        pos = torch.where(pos < start, pos, pos + count)  # skip the sample's own class block
        negatives = self.by_class[pos]
        if self.mode == "relax":
            positive = self.by_class[start[:, 0] + _hash(torch.full_like(rows, self.k), keys) % count[:, 0]]
        else:
            positive = rows
        return torch.cat([positive[:, None], negatives], dim=1)
