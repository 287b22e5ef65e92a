"""Loaders for in-memory datasets (CIFAR-100, synthetic): the whole set lives on the device as uint8.

Training augmentation is batched but drawn per image: zero padding of `padding` pixels in raw uint8
space, a random crop back to H x W with its own offset for every image, and a horizontal flip with
p = 0.5 for every image; then conversion to float and normalisation (a padded pixel becomes
(0 - mean) / std). Every random number of an epoch (the order, the offsets, the flips) is drawn up
front from a CPU `torch.Generator` seeded from (seed, epoch) alone, so an epoch's batches are the
same after a restart, and the same on CPU and GPU.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence, Union

import torch

from catkd.data.common import Batch, EvalBatches, TrainBatch, TrainBatches, mix_seed  # noqa: F401 (re-exported)

Stats = Union[Sequence[float], torch.Tensor]


# ----------------------------------------------------------------------------------------------
# pure functions


def affine(mean: Stats, std: Stats, channels: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with x_uint8 * scale + shift == (x / 255 - mean) / std, shaped 1 x C x 1 x 1."""
    m = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
    s = torch.as_tensor(std, dtype=torch.float64).reshape(-1)
    if m.numel() != channels or s.numel() != channels:
        raise ValueError(f"mean/std have {m.numel()}/{s.numel()} values for {channels} channels")
    scale = (1.0 / (255.0 * s)).to(torch.float32).view(1, channels, 1, 1)
    shift = (-m / s).to(torch.float32).view(1, channels, 1, 1)
    return scale.to(device), shift.to(device)


def normalize(images: torch.Tensor, mean: Stats, std: Stats) -> torch.Tensor:
    """uint8 N x C x H x W (0..255) -> float32 (x / 255 - mean) / std."""
    scale, shift = affine(mean, std, images.shape[1], images.device)
    return torch.addcmul(shift, images.to(torch.float32), scale)


def draw_crop_flip(
    n: int, generator: torch.Generator, padding: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image crop offsets into the padded image (0..2*padding) and flips, drawn on the generator."""
    dev = generator.device
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev)
    flip = torch.randint(0, 2, (n,), generator=generator, device=dev).bool()
    return oy, ox, flip


def gather_crops(padded: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor,
                 h: int, w: int) -> torch.Tensor:
    """H x W crops of already padded images (N x C x Hp x Wp) at per-image offsets (oy, ox), flipped
    where `flip`: output pixel (i, j) of image n is padded[n, :, oy + i, ox + j'], j' = W-1-j when
    flipped. One gather; offsets and flips must be on padded's device."""
    n, c, hp, wp = padded.shape
    dev = padded.device
    ar_w = torch.arange(w, device=dev)
    cols = ox[:, None] + torch.where(flip[:, None], ar_w.flip(0), ar_w)  # N x W
    pix = ((oy[:, None] + torch.arange(h, device=dev)) * wp)[:, :, None] + cols[:, None, :]  # N x H x W
    src = padded.reshape(n, c, hp * wp)
    return src.gather(2, pix.view(n, 1, h * w).expand(n, c, h * w)).view(n, c, h, w)


def crop_flip(
    images: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor, padding: int = 4
) -> torch.Tensor:
    """Crop H x W out of the zero-padded images at per-image offsets (oy, ox), then flip where `flip`.

    Output pixel (i, j) of image n is padded[n, :, oy + i, ox + j'] with j' = W-1-j when flipped,
    where padded has `padding` zero pixels on every side.
    """
    _, _, h, w = images.shape
    dev = images.device
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    return gather_crops(padded, oy.to(dev), ox.to(dev), flip.to(dev), h, w)


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Zero-pad, random crop (independent offset per image) and random horizontal flip (p = 0.5 per
    image) of a uint8 batch N x C x H x W; returns uint8 of the same shape."""
    oy, ox, flip = draw_crop_flip(images.shape[0], generator, padding)
    return crop_flip(images, oy, ox, flip, padding)


def view_ids(oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor, padding: int) -> torch.Tensor:
    """The view id of each (crop offset, flip): (oy * (2p + 1) + ox) * 2 + flip (ViewSet)."""
    return (oy.long() * (2 * padding + 1) + ox.long()) * 2 + flip.long()


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator an epoch's randomness comes from: a function of (seed, epoch) only."""
    return torch.Generator().manual_seed(mix_seed(seed, epoch))


# ----------------------------------------------------------------------------------------------
# loaders


class _InMemory:
    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Stats,
        std: Stats,
        batch_size: int,
        device: Optional[torch.device] = None,
    ):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 N x C x H x W, got {images.dtype} {tuple(images.shape)}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        device = torch.device(device) if device is not None else images.device
        self.device = device
        self.images = images.to(device).contiguous()
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(device)
        self.batch_size = int(batch_size)
        self.num_samples = int(len(images))
        self.mean = tuple(float(v) for v in torch.as_tensor(mean).reshape(-1).tolist())
        self.std = tuple(float(v) for v in torch.as_tensor(std).reshape(-1).tolist())
        self._scale, self._shift = affine(self.mean, self.std, images.shape[1], device)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self._shift, x.to(torch.float32), self._scale)


class TrainLoader(_InMemory):
    """Shuffled, augmented batches of an in-memory training set; last partial batch kept."""

    def __init__(self, *args, padding: int = 4, augment: bool = True,
                 source_index: Optional[torch.Tensor] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.padding = int(padding)
        self.augment = bool(augment)
        # row i of this set is image source_index[i] of the dataset as stored (the teacher cache's key)
        self.source_index = (torch.arange(self.num_samples) if source_index is None
                             else torch.as_tensor(source_index, dtype=torch.int64).cpu())
        if len(self.source_index) != self.num_samples:
            raise ValueError(f"{len(self.source_index)} source indices for {self.num_samples} images")
        if self.augment:
            # the set zero-padded once (+56 % memory at 32 px, 4 px padding): a batch's crops and
            # flips are then one gather, without padding every batch
            self._padded = torch.nn.functional.pad(self.images, (self.padding,) * 4).contiguous()

    def epoch_draws(self, epoch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The epoch's order (rows of this set) and each position's view id, on the CPU: every random
        number of the epoch, drawn from epoch_generator(seed, epoch) alone."""
        g = epoch_generator(seed, epoch)
        perm = torch.randperm(self.num_samples, generator=g)
        if not self.augment:
            return perm, torch.zeros(self.num_samples, dtype=torch.int64)
        oy, ox, flip = draw_crop_flip(self.num_samples, g, self.padding)
        return perm, view_ids(oy, ox, flip, self.padding)

    def epoch_views(self, epoch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(dataset index as stored, view id) of every image the epoch trains on, in order."""
        perm, views = self.epoch_draws(epoch, seed)
        return self.source_index[perm], views

    def epoch_batches(self, epoch: int, seed: int) -> Iterator[TrainBatch]:
        perm, views = self.epoch_draws(epoch, seed)
        index = self.source_index[perm]
        p = 2 * self.padding + 1
        flip, off = (views % 2).bool(), views // 2  # the view id holds the draws: decode, do not redraw
        oy, ox = (off // p).to(self.device), (off % p).to(self.device)
        flip = flip.to(self.device)
        perm_dev = perm.to(self.device)
        h, w = self.images.shape[2:]
        for start in range(0, self.num_samples, self.batch_size):
            sl = slice(start, start + self.batch_size)
            idx = perm_dev[sl]
            if self.augment:
                x = gather_crops(self._padded.index_select(0, idx), oy[sl], ox[sl], flip[sl], h, w)
            else:
                x = self.images.index_select(0, idx)
            yield TrainBatch(self._normalize(x), self.labels.index_select(0, idx), index[sl], views[sl])


class EvalLoader(_InMemory):
    """Normalised batches in dataset order, no augmentation."""

    def __iter__(self) -> Iterator[Batch]:
        for start in range(0, self.num_samples, self.batch_size):
            sl = slice(start, start + self.batch_size)
            yield self._normalize(self.images[sl]), self.labels[sl]
