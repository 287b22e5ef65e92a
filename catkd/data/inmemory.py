"""Turn an in-memory train/test set into a DataBundle: validation hold-out, reduction, loaders."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from catkd.data.common import DataBundle, ViewSet, as_tuple
from catkd.data.loader import EvalLoader, TrainLoader
from catkd.data.splits import reduce_training_set, stratified_holdout


def build_in_memory(
    cfg,
    device: torch.device,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    info: dict[str, Any],
) -> DataBundle:
    """Images uint8 N x C x H x W (numpy), labels int. The validation split is held out of the
    training set first (DATASET.VAL_SIZE, SPLIT_SEED), then the rest is reduced (DATASET.REDUCTION);
    the test set is used whole."""
    ds = cfg.DATASET
    train_labels = np.asarray(train_labels, dtype=np.int64)
    test_labels = np.asarray(test_labels, dtype=np.int64)
    train_idx, val_idx, val_info = stratified_holdout(train_labels, ds.VAL_SIZE, ds.SPLIT_SEED)
    red_info = None
    if ds.REDUCTION:
        keep, red_info = reduce_training_set(
            train_labels[train_idx], num_classes, ds.RESERVED_CLASS_NUM, ds.RESERVED_RATE, ds.SPLIT_SEED
        )
        train_idx = train_idx[keep]

    def tensors(images: np.ndarray, labels: np.ndarray, idx=None):
        if idx is not None:
            images, labels = images[idx], labels[idx]
        return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)

    mean, std = as_tuple(mean), as_tuple(std)
    train = TrainLoader(*tensors(train_images, train_labels, train_idx), mean, std, cfg.SOLVER.BATCH_SIZE, device,
                        source_index=torch.from_numpy(np.asarray(train_idx, dtype=np.int64)))
    test = EvalLoader(*tensors(test_images, test_labels), mean, std, ds.TEST.BATCH_SIZE, device)
    val = None
    if len(val_idx):
        val = EvalLoader(*tensors(train_images, train_labels, val_idx), mean, std, ds.TEST.BATCH_SIZE, device)
    info = dict(info)
    info.update(
        num_classes=int(num_classes),
        train_size=train.num_samples,
        val_size=val.num_samples if val is not None else 0,
        test_size=test.num_samples,
        train_classes=int(len(np.unique(train_labels[train_idx]))),
        reduction=red_info,
        val=val_info if val is not None else None,
        mean=list(mean),
        std=list(std),
    )
    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=int(num_classes),
        mean=mean,
        std=std,
        image_size=int(train_images.shape[-1]),
        info=info,
        views=ViewSet(int(train_images.shape[-1]), train.padding, flip=True),
        source_size=int(len(train_labels)),
        identity={"dataset": info.get("dataset"), "train": content_hash(train_images, train_labels)},
    )


def content_hash(images: np.ndarray, labels: np.ndarray) -> str:
    """What the training set is, by content (blake2b of images and labels as stored; ~0.2 s for CIFAR-100)."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for a in (np.ascontiguousarray(images), np.ascontiguousarray(labels, dtype=np.int64)):
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()
