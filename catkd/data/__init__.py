"""Datasets and loaders: `build_data(cfg, device)` returns a DataBundle for cfg.DATASET.TYPE.

- cifar100: the python version of CIFAR-100 under <data root>/cifar-100-python (catkd.data.cifar100)
- synthetic: the embedded generated dataset, no download (catkd.data.synthetic)
- imagenet: ImageFolder trees under <data root>/imagenet/{train,val} (catkd.data.imagenet)
- stl10: STL-10's binary release under <data root>/stl10_binary, resized to 32 x 32 (catkd.data.stl10)
- tiny_imagenet: the tiny-imagenet-200 folder under <data root>, resized to 32 x 32 (catkd.data.tiny_imagenet)

STL-10 and TinyImageNet are transfer targets for CIFAR models; catkd.data.transfer_files writes small
folders in their formats. All but ImageNet live in memory on the training device (catkd.data.loader); the
validation hold-out and the data reduction are in catkd.data.splits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import torch

from catkd.data.common import DataBundle, DataError, ViewSet
from catkd.data.loader import EvalBatches, EvalLoader, TrainBatches, TrainLoader, normalize, random_crop_flip

if TYPE_CHECKING:  # pragma: no cover
    from catkd.config import Config

__all__ = [
    "DATASETS", "DataBundle", "DataError", "DatasetEntry", "ViewSet", "dataset_entry", "EvalBatches", "EvalLoader", "TrainBatches", "TrainLoader",
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


def _imagenet_size(cfg: "Config") -> int:
    from catkd.data.imagenet import crop_size

    return crop_size(cfg)


def _stl10(cfg: "Config", device: torch.device) -> DataBundle:
    from catkd.data.stl10 import build_stl10

    return build_stl10(cfg, device)


def _tiny_imagenet(cfg: "Config", device: torch.device) -> DataBundle:
    from catkd.data.tiny_imagenet import build_tiny_imagenet

    return build_tiny_imagenet(cfg, device)


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset as the rest of catkd knows it before loading it: its builder, and what it declares
    (model outputs, image size, training view set) for the checks of a run or a study."""

    build: Callable[["Config", torch.device], DataBundle]
    num_classes: Callable[["Config"], int]
    image_size: Callable[["Config"], int]
    views: Callable[["Config"], Optional[ViewSet]]  # None: no finite view set (no teacher cache)
    sizes: Callable[["Config"], tuple[int, int]] = lambda cfg: (0, 0)  # (training images as stored, test images)
    family: str = "cifar"  # which model zoo builds its models (catkd.models.build_model(family=...))


_CIFAR_VIEWS = ViewSet(32, 4, True)  # crop at offsets 0..8 of the 4-px zero-padded image, flip

# DATASET.TYPE -> entry
DATASETS: dict[str, DatasetEntry] = {
    "cifar100": DatasetEntry(_cifar100, lambda cfg: 100, lambda cfg: 32, lambda cfg: _CIFAR_VIEWS,
                             lambda cfg: (50_000, 10_000)),
    "synthetic": DatasetEntry(
        _synthetic,
        lambda cfg: cfg.DATASET.SYNTHETIC.NUM_CLASSES,
        lambda cfg: cfg.DATASET.SYNTHETIC.IMAGE_SIZE,
        lambda cfg: ViewSet(cfg.DATASET.SYNTHETIC.IMAGE_SIZE, 4, True),
        lambda cfg: (cfg.DATASET.SYNTHETIC.NUM_CLASSES * cfg.DATASET.SYNTHETIC.TRAIN_PER_CLASS,
                     cfg.DATASET.SYNTHETIC.NUM_CLASSES * cfg.DATASET.SYNTHETIC.TEST_PER_CLASS),
    ),
    # the class count is the folders' (1000 for ILSVRC-2012); RandomResizedCrop: no finite view set
    "imagenet": DatasetEntry(_imagenet, lambda cfg: 1000, lambda cfg: _imagenet_size(cfg), lambda cfg: None,
                             lambda cfg: (1_281_167, 50_000), family="imagenet"),  # ILSVRC-2012
    # transfer targets, resized to 32 x 32 so the CIFAR architectures take them
    "stl10": DatasetEntry(_stl10, lambda cfg: 10, lambda cfg: 32, lambda cfg: _CIFAR_VIEWS, lambda cfg: (5_000, 8_000)),
    "tiny_imagenet": DatasetEntry(_tiny_imagenet, lambda cfg: 200, lambda cfg: 32, lambda cfg: _CIFAR_VIEWS,
                                  lambda cfg: (100_000, 10_000)),
}


def dataset_entry(cfg: "Config") -> DatasetEntry:
    try:
        return DATASETS[cfg.DATASET.TYPE]
    except KeyError:
        raise DataError(
            f"DATASET.TYPE: unknown dataset {cfg.DATASET.TYPE!r}; known: {', '.join(sorted(DATASETS))}"
        ) from None


def build_data(cfg: "Config", device: torch.device | str = "cpu") -> DataBundle:
    """Build the loaders for cfg.DATASET on `device` (in-memory sets are stored there)."""
    return dataset_entry(cfg).build(cfg, torch.device(device))
