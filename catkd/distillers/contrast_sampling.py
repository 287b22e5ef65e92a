"""CRD's contrast indices, drawn on the device from (seed, epoch, sample index) alone.

MDistiller's CIFAR-100 dataset draws, per sample and per epoch, K negatives uniformly without
replacement from the indices of all images of *other* classes (with replacement when K exceeds that
pool) with numpy's global RNG in the loader workers: not reproducible and about 1 ms per sample.
Here each sample's K negatives are the first K values of a keyed pseudo-random permutation of its
pool (a 4-round Feistel network whose round functions are drawn from the key), keyed by (seed, epoch, sample index): the same
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


def _round_tables(key: Tensor, half: int) -> Tensor:
    """(N, 4, 2^half) round functions of a Feistel network, one set per key (N, 1)."""
    width = 1 << half
    x = torch.arange(4 * width, device=key.device, dtype=torch.int64)[None, :]
    return (_hash(x, key) & (width - 1)).view(len(key), 4, width)


def _feistel(v: Tensor, tables: Tensor, half: int) -> Tensor:
    """A permutation of [0, 4^half) per row of v (N, M), chosen by that row's tables."""
    left, right = v >> half, v & ((1 << half) - 1)
    for r in range(4):  # four rounds with (pseudo-)random round functions: a pseudo-random permutation
        left, right = right, left ^ tables[:, r].gather(1, right)
    return (left << half) | right


def first_k_of_permutation(k: int, key: Tensor, size: Tensor) -> Tensor:
    """The first k values of a pseudo-random permutation of [0, size) chosen by `key`: (N, k), distinct
    per row. key, size: (N, 1) int64, size >= k.

    A Feistel network permutes [0, 4^h) >= size; the values that fall outside [0, size) are dropped,
    which leaves a permutation of [0, size) in order (what cycle-walking gives, without its loop)."""
    half = max(1, (int(size.max()).bit_length() + 1) // 2)
    tables = _round_tables(key, half)
    n = len(key)
    span = int(k * (1 << 2 * half) / int(size.min()) * 1.05) + 64  # enough positions, nearly always
    while True:
        j = torch.arange(min(span, 1 << 2 * half), device=key.device, dtype=torch.int64)[None, :].expand(n, -1)
        v = _feistel(j, tables, half)
        inside = v < size
        rank = torch.cumsum(inside, dim=1) - 1
        keep = inside & (rank < k)
        if bool((keep.sum(1) == k).all()):
            out = torch.empty(n, k, dtype=torch.int64, device=key.device)
            rows = torch.arange(n, device=key.device)[:, None].expand_as(v)
            out[rows[keep], rank[keep]] = v[keep]
            return out
        span *= 2  # a row fell short: look further along the same permutations


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
        if self.k <= int(pool.min()):
            pos = first_k_of_permutation(self.k, key, pool)  # distinct: without replacement
        else:  # MDistiller draws with replacement when K exceeds the pool
            j = torch.arange(self.k, device=rows.device, dtype=torch.int64)[None, :]
            pos = _hash(j, key) % pool
        pos = torch.where(pos < start, pos, pos + count)  # skip the sample's own class block
        negatives = self.by_class[pos]
        if self.mode == "relax":
            positive = self.by_class[start[:, 0] + _hash(torch.full_like(rows, self.k), keys) % count[:, 0]]
        else:
            positive = rows
        return torch.cat([positive[:, None], negatives], dim=1)
