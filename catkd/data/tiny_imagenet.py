"""TinyImageNet from its official folder, resized to 32 x 32 and read into memory (a transfer target).

`<root>/tiny-imagenet-200/`: `wnids.txt` (the 200 class ids), `words.txt` (their names, optional),
`train/<wnid>/images/<wnid>_<k>.JPEG` (500 per class, 64 x 64, a few grayscale) beside
`train/<wnid>/<wnid>_boxes.txt`, `val/images/val_<k>.JPEG` (10,000) labelled by `val/val_annotations.txt`
(tab-separated: file name, wnid, box). A val folder re-sorted into `val/<wnid>/...` (one folder per
class, as ImageFolder reads it) is read too. `test/` has no labels and is not used. A class's label is
its wnid's index in the sorted wnid list (what ImageFolder gives on `train/`).

Images are converted to RGB and resized once, at load time, as torchvision's Resize((32, 32)) does a PIL
image (catkd.data.stl10.resize). Decoding the 110,000 JPEGs takes about 20-35 s on one core, so the
decoded arrays are cached in one .npz under catkd.fsutil.user_cache_dir()/datasets (about 340 MB), keyed
by the folder's absolute path, its image list with labels, and a cheap fingerprint of the files (count,
total size, newest mtime); a later load takes well under a second.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from filelock import FileLock
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from catkd.data.common import DataBundle, DataError
from catkd.data.inmemory import build_in_memory
from catkd.data.stl10 import SIZE, resize
from catkd.fsutil import atomic_write, user_cache_dir

# no normalisation, the reference's choice for TinyImageNet (ToTensor only): pixels / 255 as they are
MEAN = (0.0, 0.0, 0.0)
STD = (1.0, 1.0, 1.0)
NUM_CLASSES = 200
FOLDER = "tiny-imagenet-200"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
CACHE_VERSION = 1
LOG_EVERY = 10.0  # seconds between progress lines when stderr is not a terminal

Samples = list[tuple[str, int]]  # (file path, label); str, not Path: a tenth of the listing time


def how_to_get(root: Path) -> str:
    return (
        f"looked for {root / FOLDER}/{{wnids.txt,train,val}} (DATASET.ROOT, else $CATKD_DATA, else ./data). "
        f"To get it: download {URL} and unpack it there (it unpacks as {FOLDER}/)"
    )


def missing(root: Path) -> Optional[str]:
    """What is missing of TinyImageNet under the data root `root` (a message), or None."""
    folder = root / FOLDER
    absent = [n for n, ok in (("wnids.txt", (folder / "wnids.txt").is_file()), ("train/", (folder / "train").is_dir()),
                              ("val/", (folder / "val").is_dir())) if not ok]
    return f"TinyImageNet not found ({', '.join(absent)} missing): {how_to_get(root)}" if absent else None


def read_wnids(folder: Path) -> list[str]:
    path = folder / "wnids.txt"
    wnids = [w.strip() for w in path.read_text().split() if w.strip()]
    if len(wnids) != NUM_CLASSES or len(set(wnids)) != len(wnids):
        raise DataError(f"{path}: expected {NUM_CLASSES} distinct wnids, found {len(set(wnids))} in {len(wnids)} lines")
    return sorted(wnids)


def class_names(folder: Path, wnids: list[str]) -> list[str]:
    """Each wnid's name from words.txt (its first synonym), else the wnid."""
    names: dict[str, str] = {}
    path = folder / "words.txt"
    if path.is_file():
        for line in path.read_text().splitlines():
            w, _, name = line.partition("\t")
            names[w.strip()] = name.split(",")[0].strip()
    return [names.get(w) or w for w in wnids]


def _images_under(d: Path) -> list[str]:
    """The image files under `d`, in ImageFolder's order (sorted folders, sorted names)."""
    return [os.path.join(top, f) for top, _, names in sorted(os.walk(d, followlinks=True))
            for f in sorted(names) if f.lower().endswith(IMG_EXTENSIONS)]


def _not_wnids(d: Path, index: dict[str, int], skip: tuple[str, ...] = ()) -> None:
    extra = sorted(p.name for p in d.iterdir() if p.is_dir() and p.name not in index and p.name not in skip)
    if extra:
        raise DataError(f"{d}: folders {', '.join(extra[:5])} are not wnids listed in wnids.txt")


def train_samples(folder: Path, index: dict[str, int]) -> Samples:
    train = folder / "train"
    _not_wnids(train, index)
    out: Samples = []
    for w, label in index.items():
        files = _images_under(train / w)
        if not files:
            raise DataError(f"{train / w}: no images of class {w} (expected {train / w}/images/{w}_<k>.JPEG)")
        out += [(p, label) for p in files]
    return out


def val_samples(folder: Path, index: dict[str, int]) -> Samples:
    """val/images labelled by val/val_annotations.txt, or val/<wnid>/... (re-sorted by class)."""
    val = folder / "val"
    images, ann = val / "images", val / "val_annotations.txt"
    present = set(os.listdir(images)) if images.is_dir() else set()
    if present:
        if not ann.is_file():
            raise DataError(f"{ann}: not found (it labels the images in {images})")
        out: Samples = []
        for n, line in enumerate(ann.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 2:
                raise DataError(f"{ann}, line {n}: expected file name <tab> wnid <tab> box, got {line!r}")
            name, w = parts[0].strip(), parts[1].strip()
            if w not in index:
                raise DataError(f"{ann}, line {n}: wnid {w!r} is not in {folder / 'wnids.txt'}")
            if name not in present:
                raise DataError(f"{ann}, line {n}: {images / name} not found")
            out.append((os.path.join(images, name), index[w]))
        if not out:
            raise DataError(f"{ann}: no labelled images")
        return out
    _not_wnids(val, index, skip=("images",))
    out = [(p, label) for w, label in index.items() if (val / w).is_dir() for p in _images_under(val / w)]
    if not out:
        raise DataError(f"{val}: no images (expected images/ with val_annotations.txt, or one folder per wnid)")
    return out


def read_image(path: str | Path) -> np.ndarray:
    """One file as 3 x 32 x 32 uint8 (grayscale and other modes converted to RGB first, as ImageFolder does)."""
    try:
        with Image.open(path) as im:
            return resize(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise DataError(f"{path}: cannot read this image ({type(e).__name__}: {e})") from None


def decode(samples: Samples, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N x 3 x 32 x 32 uint8) and labels of `samples`, with a bar on a terminal, else a line on
    stderr every LOG_EVERY seconds."""
    from tqdm import tqdm

    images = np.empty((len(samples), 3, SIZE, SIZE), dtype=np.uint8)
    tty = sys.stderr.isatty()
    t0 = last = time.monotonic()
    with tqdm(total=len(samples), desc=what, unit="img", leave=False, disable=not tty, file=sys.stderr,
              dynamic_ncols=True, mininterval=0.5) as bar:
        for i, (path, _) in enumerate(samples):
            images[i] = read_image(path)
            bar.update()
            if not tty and time.monotonic() - last > LOG_EVERY:
                last = time.monotonic()
                print(f"{what}: {i + 1}/{len(samples)} images decoded ({last - t0:.0f}s)", file=sys.stderr, flush=True)
    return images, np.array([label for _, label in samples], dtype=np.int64)


def cache_path(folder: Path, train: Samples, val: Samples) -> Path:
    """Where the decoded arrays of this folder, as it is now, are cached."""
    h = hashlib.sha1(str(CACHE_VERSION).encode())
    count = size = newest = 0
    skip = len(str(folder)) + 1
    for split, samples in (("train", train), ("val", val)):
        for path, label in samples:
            st = os.stat(path)
            count, size, newest = count + 1, size + st.st_size, max(newest, st.st_mtime_ns)
            h.update(f"{split}\t{path[skip:]}\t{label}\n".encode())
    for extra in ("wnids.txt", "val/val_annotations.txt"):
        if (folder / extra).is_file():
            st = os.stat(folder / extra)
            count, size, newest = count + 1, size + st.st_size, max(newest, st.st_mtime_ns)
    h.update(json.dumps([count, size, newest]).encode())
    where = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:10]
    return user_cache_dir() / "datasets" / f"tiny_imagenet-{where}-{h.hexdigest()[:16]}.npz"


def _read_cache(path: Path) -> Optional[dict[str, np.ndarray]]:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in ("train_images", "train_labels", "val_images", "val_labels")}
    except Exception as e:  # truncated or foreign: decode again and replace it
        warnings.warn(f"catkd: {path}: unreadable cache ({type(e).__name__}: {e}); decoding again", UserWarning)
        return None


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays))
        stem = path.name.rsplit("-", 1)[0]  # this folder's older caches are out of date now
        for old in path.parent.glob(f"{stem}-*.npz"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError as e:
        warnings.warn(f"catkd: cannot cache TinyImageNet at {path} ({e}); it will be decoded again", UserWarning)


def load_tiny_imagenet(root: Path, cache: bool = True) -> dict:
    """{"train": (images, labels), "val": (images, labels), "classes": names, "cache": path or None}:
    images N x 3 x 32 x 32 uint8, labels int64 0..199."""
    why = missing(root)
    if why:
        raise DataError(why)
    folder = root / FOLDER
    wnids = read_wnids(folder)
    index = {w: i for i, w in enumerate(wnids)}
    train, val = train_samples(folder, index), val_samples(folder, index)
    out: dict = {"classes": class_names(folder, wnids), "cache": None}
    path = cache_path(folder, train, val) if cache else None
    lock: contextlib.AbstractContextManager = contextlib.nullcontext()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(path.with_suffix(".lock")))
        except OSError:
            path = None
    with lock:  # one process decodes, the others (a study's trials) wait and read its cache
        arrays = _read_cache(path) if path is not None else None
        if arrays is None:
            t0 = time.monotonic()
            (ti, tl), (vi, vl) = decode(train, "TinyImageNet train"), decode(val, "TinyImageNet val")
            arrays = {"train_images": ti, "train_labels": tl, "val_images": vi, "val_labels": vl}
            if path is not None:
                _write_cache(path, arrays)
                print(f"TinyImageNet: {len(train) + len(val)} images decoded in {time.monotonic() - t0:.0f}s, "
                      f"cached at {path}", file=sys.stderr, flush=True)
    out.update(train=(arrays["train_images"], arrays["train_labels"]), val=(arrays["val_images"], arrays["val_labels"]),
               cache=str(path) if path is not None else None)
    return out


def build_tiny_imagenet(cfg, device: torch.device) -> DataBundle:
    from catkd.config import data_root

    root = data_root(cfg)
    data = load_tiny_imagenet(root)
    info = {"dataset": "tiny_imagenet", "root": str(root), "synthetic": False, "classes": data["classes"],
            "cache": data["cache"]}
    # the labelled val split is the test set (the official test split has no labels)
    return build_in_memory(cfg, device, *data["train"], *data["val"], NUM_CLASSES, MEAN, STD, info)
