"""CIFAR-100 from the files its authors distribute (the "python version"), read into memory.

`<root>/cifar-100-python/{train,test,meta}` are pickled dicts: "data" uint8 N x 3072 (1024 red,
then green, then blue values, row-major 32 x 32), "fine_labels", "coarse_labels", "filenames";
meta has "fine_label_names". The originals are Python 2 pickles: loaded with encoding="latin1" their
keys are str, while files re-written by Python 3 often carry bytes keys (b"data"); both are read.
torchvision's CIFAR100 knows the same files: we reuse its file list, checksums and download, but
report a checksum mismatch as a warning instead of failing (small test fixtures differ from the
official files).
"""
from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.datasets import CIFAR100
from torchvision.datasets.utils import check_integrity
from torchvision.datasets.vision import VisionDataset

from catkd.data.common import DataBundle, DataError
from catkd.data.inmemory import build_in_memory

MEAN = (0.5071, 0.4867, 0.4408)
STD = (0.2675, 0.2565, 0.2761)
NUM_CLASSES = 100
FOLDER = CIFAR100.base_folder  # "cifar-100-python"

_md5_cache: dict[tuple[str, int, int], bool] = {}
_warned_roots: set[str] = set()


def how_to_get(root: Path) -> str:
    return (
        f"looked for {root / FOLDER}/{{train,test}} (DATASET.ROOT, else $CATKD_DATA, else ./data). "
        f"To get it: put the python version of CIFAR-100 ({CIFAR100.url}, unpacked: {FOLDER}/) under "
        "$CATKD_DATA or ./data, or pass DATASET.DOWNLOAD True / --download where the network allows"
    )


def _md5_ok(path: str, md5: str) -> bool:
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _md5_cache:
        _md5_cache[key] = check_integrity(path, md5)
    return _md5_cache[key]


def _str_keys(entry: Any, path: Path) -> dict:
    if not isinstance(entry, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(entry).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in entry.items()}


def read_batch(path: Path) -> dict:
    """One pickled CIFAR file as a dict with str keys."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except FileNotFoundError:
        raise
    except Exception as e:  # corrupt, truncated, not a pickle
        raise DataError(f"{path}: cannot read this CIFAR-100 file ({type(e).__name__}: {e})") from None
    return _str_keys(entry, path)


class CIFAR100Files(CIFAR100):
    """torchvision's CIFAR100 with a lenient checksum and readers for str- or bytes-keyed pickles.

    `images` is N x 3 x 32 x 32 uint8 (the files' layout); `data` is torchvision's N x 32 x 32 x 3
    view of it; `targets` are the fine labels.
    """

    def __init__(self, root: str | Path, train: bool = True, download: bool = False) -> None:
        VisionDataset.__init__(self, str(root))  # skip CIFAR10.__init__'s reading and strict checks
        self.train = train
        root_path = Path(self.root)
        if download:
            try:
                self.download()
            except Exception as e:
                raise DataError(f"CIFAR-100 download into {root_path} failed ({type(e).__name__}: {e}); "
                                + how_to_get(root_path)) from None
        if not self._check_integrity():
            raise DataError("CIFAR-100 not found: " + how_to_get(root_path))
        (name, _), = self.train_list if train else self.test_list
        path = root_path / self.base_folder / name
        entry = read_batch(path)
        labels_key = "fine_labels" if "fine_labels" in entry else "labels"
        if "data" not in entry or labels_key not in entry:
            raise DataError(f"{path}: not a CIFAR-100 file (keys {sorted(map(str, entry))}); " + how_to_get(root_path))
        data = np.asarray(entry["data"])
        labels = np.asarray(entry[labels_key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
            raise DataError(
                f"{path}: expected uint8 N x 3072 data and N labels, got {data.dtype} {data.shape} "
                f"and {len(labels)} labels"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
            raise DataError(f"{path}: labels outside 0..{NUM_CLASSES - 1}")
        self.images = data.reshape(-1, 3, 32, 32)
        self.data = self.images.transpose(0, 2, 3, 1)
        self.targets = labels.tolist()
        self.labels = labels
        self._load_meta()

    def _check_integrity(self) -> bool:
        """True when the files are there; a checksum that differs from the official one only warns."""
        folder = Path(self.root) / self.base_folder
        files = self.train_list + self.test_list
        if not all((folder / name).is_file() for name, _ in files):
            return False
        bad = [name for name, md5 in files if not _md5_ok(str(folder / name), md5)]
        meta = folder / self.meta["filename"]
        if meta.is_file() and not _md5_ok(str(meta), self.meta["md5"]):
            bad.append(self.meta["filename"])
        self.checksums_ok = not bad
        if bad and str(folder) not in _warned_roots:
            _warned_roots.add(str(folder))
            warnings.warn(
                f"catkd: {folder}: {', '.join(bad)} differ from the official CIFAR-100 files (md5); "
                "reading them anyway",
                UserWarning,
                stacklevel=3,
            )
        return True

    def _load_meta(self) -> None:
        path = Path(self.root) / self.base_folder / self.meta["filename"]
        if path.is_file():
            meta = read_batch(path)
            self.classes = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in meta.get(self.meta["key"], [])]
        else:
            self.classes = []
        if len(self.classes) != NUM_CLASSES:
            self.classes = [str(i) for i in range(NUM_CLASSES)]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


def build_cifar100(cfg, device: torch.device) -> DataBundle:
    from catkd.config import data_root

    root = data_root(cfg)
    train = CIFAR100Files(root, train=True, download=cfg.DATASET.DOWNLOAD)
    test = CIFAR100Files(root, train=False)
    info = {
        "dataset": "cifar100",
        "root": str(root),
        "synthetic": False,
        "checksums_ok": bool(getattr(train, "checksums_ok", True)),
        "classes": list(train.classes),
    }
    return build_in_memory(
        cfg, device, train.images, train.labels, test.images, test.labels, NUM_CLASSES, MEAN, STD, info
    )
