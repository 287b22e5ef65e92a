"""STL-10 from its binary release, resized to 32 x 32 and read into memory (a transfer target).

`<root>/stl10_binary/`: `train_X.bin` / `test_X.bin` are uint8 N x 3 x 96 x 96 with each channel
stored column-major (the reader swaps H and W, as torchvision's STL10 does), `train_y.bin` /
`test_y.bin` one uint8 label 1..10 per image, `class_names.txt` (optional) one name per line. The
100,000 unlabelled images (`unlabeled_X.bin`) are not used and need not be there. Splits: train
5,000, test 8,000.

Every image is resized once, at load time, as torchvision's Resize((32, 32)) does a PIL image (PIL's
bilinear, antialiased); resizing is deterministic, so resizing first and then cropping and flipping
in memory (catkd.data.loader) gives the views a per-epoch Resize + RandomCrop + flip pipeline gives.
Normalisation: mean 0.5, std 0.5 per channel.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from catkd.data.common import DataBundle, DataError
from catkd.data.inmemory import build_in_memory

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
NUM_CLASSES = 10
FOLDER = "stl10_binary"
URL = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE  # 27648
SIZE = 32  # what the CIFAR architectures take
SPLITS = ("train", "test")


def how_to_get(root: Path) -> str:
    return (
        f"looked for {root / FOLDER}/{{train,test}}_{{X,y}}.bin (DATASET.ROOT, else $CATKD_DATA, else ./data). "
        f"To get it: download {URL} and unpack it there (it unpacks as {FOLDER}/; unlabeled_X.bin is not needed)"
    )


def missing(root: Path) -> Optional[str]:
    """What is missing of STL-10 under the data root `root` (a message), or None."""
    absent = [n for s in SPLITS for n in (f"{s}_X.bin", f"{s}_y.bin") if not (root / FOLDER / n).is_file()]
    return f"STL-10 not found ({', '.join(absent)} missing): {how_to_get(root)}" if absent else None


def resize(image: Image.Image, size: int = SIZE) -> np.ndarray:
    """torchvision's Resize((size, size)) of a PIL RGB image (PIL bilinear, antialiased): 3 x size x size uint8."""
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR)).transpose(2, 0, 1)


def read_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The 96 x 96 images (N x 3 x H x W uint8, upright) and labels (0..9) of one split."""
    xs, ys = folder / f"{split}_X.bin", folder / f"{split}_y.bin"
    # numpy, not torchvision's STL10: that one refuses to start unless all five .bin files (the 2.6 GB
    # unlabeled_X.bin included) match the official checksums
    x, y = np.fromfile(xs, dtype=np.uint8), np.fromfile(ys, dtype=np.uint8)
    if x.size == 0 or x.size % IMAGE_BYTES:
        raise DataError(f"{xs}: {x.size} bytes, not a multiple of {IMAGE_BYTES} (3 x {SIDE} x {SIDE} per image)")
    n = x.size // IMAGE_BYTES
    if y.size != n:
        raise DataError(f"{ys}: {y.size} labels for the {n} images of {xs.name}")
    if y.min() < 1 or y.max() > NUM_CLASSES:
        raise DataError(f"{ys}: labels outside 1..{NUM_CLASSES} (found {int(y.min())}..{int(y.max())})")
    return x.reshape(n, 3, SIDE, SIDE).transpose(0, 1, 3, 2), y.astype(np.int64) - 1


def class_names(folder: Path) -> list[str]:
    path = folder / "class_names.txt"
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return names if len(names) == NUM_CLASSES else [str(i) for i in range(NUM_CLASSES)]


def load_stl10(root: Path) -> dict:
    """{"train": (images, labels), "test": (images, labels), "classes": names}: images N x 3 x 32 x 32
    uint8, resized; labels int64 0..9."""
    why = missing(root)
    if why:
        raise DataError(why)
    folder = root / FOLDER
    out: dict = {"classes": class_names(folder)}
    for split in SPLITS:
        images, labels = read_split(folder, split)
        small = np.empty((len(images), 3, SIZE, SIZE), dtype=np.uint8)
        for i, img in enumerate(images):
            small[i] = resize(Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0))))
        out[split] = (small, labels)
    return out


def build_stl10(cfg, device: torch.device) -> DataBundle:
    from catkd.config import data_root

    root = data_root(cfg)
    data = load_stl10(root)
    info = {"dataset": "stl10", "root": str(root), "synthetic": False, "classes": data["classes"],
            "resized_from": SIDE}
    return build_in_memory(cfg, device, *data["train"], *data["test"], NUM_CLASSES, MEAN, STD, info)
