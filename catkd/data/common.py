"""Types shared by the dataset modules: the batches and loaders the trainer sees, the error, the bundle
handed to the trainer, seed mixing."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple, Optional, Protocol, Sequence

import numpy as np
import torch

_U64 = (1 << 64) - 1


Batch = tuple[torch.Tensor, torch.Tensor]


class TrainBatch(NamedTuple):
    """A training batch: images (N x C x H x W float), labels (N,), and, where the loader has a
    finite view set, each image's index in the dataset as stored (before the validation split and
    the reduction) and its view id (catkd.data.common.ViewSet), both (N,) int64 on the CPU; else None."""

    images: torch.Tensor
    labels: torch.Tensor
    index: Optional[torch.Tensor] = None
    view: Optional[torch.Tensor] = None


class TrainBatches(Protocol):
    """What the trainer uses of a training loader (in-memory or ImageFolder)."""

    num_samples: int
    batch_size: int

    def __len__(self) -> int: ...

    def epoch_batches(self, epoch: int, seed: int) -> Iterator[TrainBatch]: ...


class EvalBatches(Protocol):
    """What the trainer uses of an evaluation loader: fixed order, no augmentation."""

    num_samples: int
    batch_size: int

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Batch]: ...


class DataError(ValueError):
    """A dataset is missing, unreadable or asked for in a way it cannot serve.

    The message says where we looked and how to get the data.
    """


@dataclass(frozen=True)
class ViewSet:
    """The finite set of training views of an image: a crop at offsets 0..2*padding in each
    direction of the zero-padded image, and (if flip) its mirror image. CIFAR: 9 x 9 x 2 = 162.

    View id of (oy, ox, flipped) = (oy * (2 * padding + 1) + ox) * 2 + flipped (0 without flips
    and padding: one view, the image itself)."""

    image_size: int
    padding: int
    flip: bool

    @property
    def count(self) -> int:
        return (2 * self.padding + 1) ** 2 * (2 if self.flip else 1)

    def describe(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "padding": self.padding, "flip": self.flip, "views": self.count}


@dataclass
class DataBundle:
    """Everything the trainer needs from the data side."""

    train: "TrainBatches"
    val: Optional["EvalBatches"]  # None when DATASET.VAL_SIZE == 0
    test: "EvalBatches"
    num_classes: int  # model outputs (100 for CIFAR-100 even when the training set is reduced)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    info: dict[str, Any] = field(default_factory=dict)  # JSON-able description of what was built
    # the training views (None: no finite set, e.g. ImageNet's RandomResizedCrop), the number of
    # training images as stored (before validation split / reduction) and the training set's identity
    # (a content hash): what a teacher cache entry depends on besides the teacher
    views: Optional[ViewSet] = None
    source_size: int = 0
    identity: Optional[dict[str, Any]] = None


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (any sign); (0, 1) and (1, 0) give unrelated seeds."""
    words = [int(p) & _U64 for p in parts]
    state = np.random.SeedSequence(words).generate_state(2, np.uint32)
    return int(state[0]) | (int(state[1] & 0x7FFFFFFF) << 32)


def numpy_rng(*parts: int) -> np.random.Generator:
    """A numpy Generator whose stream depends only on the given integers."""
    return np.random.default_rng(np.random.SeedSequence([int(p) & _U64 for p in parts]))


def as_tuple(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)
