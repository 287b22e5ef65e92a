"""ImageNet as ImageFolder trees `<root>/imagenet/{train,val}` through a torch DataLoader.

Train: RandomResizedCrop(224) + RandomHorizontalFlip; val: Resize(256) + CenterCrop(224). Workers
return uint8 tensors; conversion to float and normalisation with the ImageNet mean/std happen on
the device (a quarter of the host-to-device traffic). Randomness is a function of (seed, epoch):
the sampler's generator is seeded from it and every sample's augmentation from (seed, epoch,
index), inside a forked RNG, so the order and the crops do not depend on worker count, on the
process's global RNG, or on a restart, and the global RNG is left untouched.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision import transforms
from torchvision.datasets import ImageFolder

from catkd.data.common import DataBundle, DataError, mix_seed
from catkd.data.loader import Batch, TrainBatch, affine, epoch_generator
from catkd.data.splits import stratified_holdout

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 224


def train_transform(size: int = IMAGE_SIZE):
    return transforms.Compose(
        [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.PILToTensor()]
    )


def eval_transform(size: int = IMAGE_SIZE):
    return transforms.Compose(
        [transforms.Resize(int(round(size * 256 / 224))), transforms.CenterCrop(size), transforms.PILToTensor()]
    )


class SeededFolder(Dataset):
    """Samples of an ImageFolder (optionally a subset) with a transform seeded per (seed, epoch, index)."""

    def __init__(self, folder: ImageFolder, transform, indices: Optional[Sequence[int]] = None):
        self.folder = folder
        self.transform = transform
        self.indices = np.arange(len(folder.samples)) if indices is None else np.asarray(indices)
        self.seed = 0
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        path, target = self.folder.samples[int(self.indices[i])]
        image = self.folder.loader(path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(self.seed, self.epoch, int(i)))
            x = self.transform(image)
        return x, target


class _FolderLoader:
    def __init__(self, dataset: SeededFolder, batch_size: int, num_workers: int, device: torch.device,
                 mean=MEAN, std=STD):
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.device = torch.device(device)
        self.num_samples = len(dataset)
        self._scale, self._shift = affine(mean, std, 3, self.device)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def _batches(self, sampler, generator: torch.Generator) -> Iterator[Batch]:
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=False,
            generator=generator,  # worker base seeds; keeps the global RNG untouched
        )
        for x, y in loader:
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            yield torch.addcmul(self._shift, x.to(torch.float32), self._scale), y


class FolderTrainLoader(_FolderLoader):
    """Same interface as loader.TrainLoader: epoch_batches(epoch, seed), len, num_samples."""

    def epoch_batches(self, epoch: int, seed: int) -> Iterator[TrainBatch]:
        """RandomResizedCrop has no finite view set: batches carry no (index, view)."""
        self.dataset.seed, self.dataset.epoch = int(seed), int(epoch)
        g = epoch_generator(seed, epoch)
        return (TrainBatch(x, y) for x, y in self._batches(RandomSampler(self.dataset, generator=g), g))


class FolderEvalLoader(_FolderLoader):
    """Fixed order, no augmentation; iterate for (images, targets) on the device."""

    def __iter__(self) -> Iterator[Batch]:
        return self._batches(None, torch.Generator().manual_seed(0))


def _folder(path: Path, root: Path) -> ImageFolder:
    hint = (
        f"looked for {root}/{{train,val}} (DATASET.ROOT, else $CATKD_DATA, else ./data, then imagenet/). "
        "To get it: download ILSVRC-2012 from https://image-net.org (it cannot be downloaded "
        "automatically) and lay out train/ and val/ with one folder per class (val/ sorted into class "
        "folders, e.g. with the usual valprep.sh)"
    )
    if not path.is_dir():
        raise DataError(f"ImageNet not found: {path} is not a folder; " + hint)
    try:
        return ImageFolder(str(path))
    except (FileNotFoundError, OSError, RuntimeError) as e:
        raise DataError(f"ImageNet at {path} is not readable as an ImageFolder ({e}); " + hint) from None


def build_imagenet(cfg, device: torch.device) -> DataBundle:
    from catkd.config import data_root

    ds = cfg.DATASET
    if ds.REDUCTION:
        raise DataError("DATASET.REDUCTION: data reduction is defined for CIFAR-100 and synthetic only")
    root = data_root(cfg) / "imagenet"
    train_folder = _folder(root / "train", root)
    test_folder = _folder(root / "val", root)
    if test_folder.classes != train_folder.classes:
        raise DataError(
            f"ImageNet: {root / 'val'} has {len(test_folder.classes)} class folders, "
            f"{root / 'train'} has {len(train_folder.classes)}; they must name the same classes"
        )
    labels = np.asarray(train_folder.targets, dtype=np.int64)
    train_idx, val_idx, val_info = stratified_holdout(labels, ds.VAL_SIZE, ds.SPLIT_SEED)
    workers = ds.NUM_WORKERS
    train = FolderTrainLoader(SeededFolder(train_folder, train_transform(), train_idx), cfg.SOLVER.BATCH_SIZE,
                              workers, device)
    test = FolderEvalLoader(SeededFolder(test_folder, eval_transform()), ds.TEST.BATCH_SIZE, workers, device)
    val = None
    if len(val_idx):
        val = FolderEvalLoader(SeededFolder(train_folder, eval_transform(), val_idx), ds.TEST.BATCH_SIZE,
                               workers, device)
    num_classes = len(train_folder.classes)
    info = {
        "dataset": "imagenet",
        "root": str(root),
        "synthetic": False,
        "num_classes": num_classes,
        "train_size": train.num_samples,
        "val_size": val.num_samples if val is not None else 0,
        "test_size": test.num_samples,
        "reduction": None,
        "val": val_info if val is not None else None,
        "mean": list(MEAN),
        "std": list(STD),
    }
    return DataBundle(train=train, val=val, test=test, num_classes=num_classes, mean=MEAN, std=STD,
                      image_size=IMAGE_SIZE, info=info)
