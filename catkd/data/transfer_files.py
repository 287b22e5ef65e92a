"""Small STL-10 and TinyImageNet folders in their real on-disk formats, for tests and smoke runs.

`write_stl10(root, ...)` writes `<root>/stl10_binary/` (train/test X and y .bin files, class_names.txt;
no unlabeled_X.bin); `write_tiny_imagenet(root, ...)` writes `<root>/tiny-imagenet-200/` (wnids.txt in
an unsorted order as the official one, words.txt, train/<wnid>/images + <wnid>_boxes.txt, val/images +
val_annotations.txt with the classes interleaved; all 200 classes). Both return `root`, the data root
to read them from (DATASET.ROOT). Images are catkd.data.jpeg_folder's class-structured renders (a hue
and a stripe orientation per class) at the formats' sizes, 96 x 96 and 64 x 64; image 0 of every 40th
TinyImageNet class (7, 47, ...) is grayscale, as a few official ones are.

Deterministic (a function of the arguments), written once (a second call returns at once), and
atomic under a file lock, as write_jpeg_folder (catkd.data.jpeg_folder.write_folder_once).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from catkd.data import stl10, tiny_imagenet
from catkd.data.jpeg_folder import render_image, wnid, write_folder_once

MANIFEST = "catkd_files.json"  # inside the folder: the arguments it was written with
VERSION = 1
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
TINY_SIDE = 64
GRAY_EVERY, GRAY_FIRST = 40, 7


def _rng(seed: int, split: int, c: int, k: int) -> np.random.Generator:
    return np.random.default_rng([VERSION, seed, split, c, k])


def write_stl10(root: str | Path, train_per_class: int, test_per_class: int, seed: int = 0,
                image_size: int = 96) -> Path:
    """Write `<root>/stl10_binary/` once (classes interleaved: labels 1..10, 1..10, ...); returns `root`."""
    root = Path(root)
    args = {"version": VERSION, "train_per_class": int(train_per_class), "test_per_class": int(test_per_class),
            "seed": int(seed), "image_size": int(image_size)}
    if train_per_class < 1 or test_per_class < 1 or image_size < 1:
        raise ValueError(f"write_stl10: need counts and image_size >= 1, got {args}")

    def write(tmp: Path) -> None:
        n = stl10.NUM_CLASSES
        for s, (split, per_class) in enumerate((("train", train_per_class), ("test", test_per_class))):
            images = [render_image(c, n, _rng(seed, s, c, k), size=(image_size, image_size))
                      for k in range(per_class) for c in range(n)]
            # each channel column-major, as the official files: C x W x H per image
            np.stack([im.transpose(2, 1, 0) for im in images]).tofile(tmp / f"{split}_X.bin")
            np.tile(np.arange(1, n + 1, dtype=np.uint8), per_class).tofile(tmp / f"{split}_y.bin")
        (tmp / "class_names.txt").write_text("\n".join(STL10_CLASSES) + "\n")

    write_folder_once(root / stl10.FOLDER, args, write, manifest=MANIFEST)
    return root


def write_tiny_imagenet(root: str | Path, train_per_class: int, val_per_class: int, seed: int = 0) -> Path:
    """Write `<root>/tiny-imagenet-200/` once (200 classes, wnids n00000000...); returns `root`."""
    root = Path(root)
    args = {"version": VERSION, "train_per_class": int(train_per_class), "val_per_class": int(val_per_class),
            "seed": int(seed)}
    if train_per_class < 1 or val_per_class < 1:
        raise ValueError(f"write_tiny_imagenet: need counts >= 1, got {args}")
    n, side = tiny_imagenet.NUM_CLASSES, TINY_SIDE
    box = f"{side // 8}\t{side // 8}\t{side - side // 8 - 1}\t{side - side // 8 - 1}"

    def save(c: int, k: int, split: int, path: Path) -> None:
        img = render_image(c, n, _rng(seed, split, c, k), size=(side, side))
        if split == 0 and k == 0 and c % GRAY_EVERY == GRAY_FIRST:
            img = np.asarray(Image.fromarray(img).convert("L"))
        Image.fromarray(img).save(path, format="JPEG", quality=90)

    def write(tmp: Path) -> None:
        order = np.random.default_rng([VERSION, seed]).permutation(n)
        (tmp / "wnids.txt").write_text("".join(f"{wnid(c)}\n" for c in order))
        (tmp / "words.txt").write_text("".join(f"{wnid(c)}\tclass {c}, rendered class {c}\n" for c in range(n + 1)))
        for c in range(n):
            d = tmp / "train" / wnid(c) / "images"
            d.mkdir(parents=True)
            for k in range(train_per_class):
                save(c, k, 0, d / f"{wnid(c)}_{k}.JPEG")
            (d.parent / f"{wnid(c)}_boxes.txt").write_text(
                "".join(f"{wnid(c)}_{k}.JPEG\t{box}\n" for k in range(train_per_class)))
        (tmp / "val" / "images").mkdir(parents=True)
        lines = []
        val = [(c, k) for k in range(val_per_class) for c in range(n)]  # interleaved, as the official numbering
        for i, (c, k) in enumerate(val):
            save(c, k, 1, tmp / "val" / "images" / f"val_{i}.JPEG")
            lines.append(f"val_{i}.JPEG\t{wnid(c)}\t{box}\n")
        (tmp / "val" / "val_annotations.txt").write_text("".join(lines))

    write_folder_once(root / tiny_imagenet.FOLDER, args, write, manifest=MANIFEST)
    return root
