"""Datasets and loaders: `build_data(cfg, device)` returns a DataBundle for cfg.DATASET.TYPE.

- cifar100: the python version of CIFAR-100 under <data root>/cifar-100-python (catkd.data.cifar100)
- synthetic: the embedded generated dataset, no download (catkd.data.synthetic)
- imagenet: ImageFolder trees under <data root>/imagenet/{train,val} (catkd.data.imagenet)

CIFAR-100 and the synthetic set live in memory on the training device (catkd.data.loader); the
validation hold-out and the data reduction are in catkd.data.splits.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from catkd.data.common import DataBundle, DataError
from catkd.data.loader import EvalBatches, EvalLoader, TrainBatches, TrainLoader, normalize, random_crop_flip

if TYPE_CHECKING:  # pragma: no cover
    from catkd.config import Config

__all__ = [
    "DATASETS", "DataBundle", "DataError", "EvalBatches", "EvalLoader", "TrainBatches", "TrainLoader",
    "build_data", "normalize", "random_crop_flip",
]


def _cifar100(cfg: "Config", device: torch.device) -> DataBundle:
    from catkd.data.cifar100 import build_cifar100

    return build_cifar100(cfg, device)


def _synthetic(cfg: "Config", device: torch.device) -> DataBundle:
    from catkd.data.synthetic import build_synthetic

    return build_synthetic(cfg, device)


def _imagenet(cfg: "Config", device: torch.device) -> DataBundle:
    from catkd.data.imagenet import build_imagenet

    return build_imagenet(cfg, device)


# DATASET.TYPE -> builder(cfg, device) -> DataBundle
DATASETS: dict[str, Callable[["Config", torch.device], DataBundle]] = {
    "cifar100": _cifar100,
    "synthetic": _synthetic,
    "imagenet": _imagenet,
}


def build_data(cfg: "Config", device: torch.device | str = "cpu") -> DataBundle:
    """Build the loaders for cfg.DATASET on `device` (in-memory sets are stored there)."""
    try:
        builder = DATASETS[cfg.DATASET.TYPE]
    except KeyError:
        raise DataError(
            f"DATASET.TYPE: unknown dataset {cfg.DATASET.TYPE!r}; known: {', '.join(sorted(DATASETS))}"
        ) from None
    return builder(cfg, torch.device(device))
