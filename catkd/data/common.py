"""Types shared by the dataset modules: the error, the bundle handed to the trainer, seed mixing."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from catkd.data.loader import EvalBatches, TrainBatches

_U64 = (1 << 64) - 1


class DataError(ValueError):
    """A dataset is missing, unreadable or asked for in a way it cannot serve.

    The message says where we looked and how to get the data.
    """


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
