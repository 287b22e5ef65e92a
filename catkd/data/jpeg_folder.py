"""A small ImageNet-shaped folder of real JPEG files, for smoke runs, tests and the input-pipeline bench.

`write_jpeg_folder(root, classes, train_per_class, val_per_class)` lays out ImageNet's tree

    root/train/<wnid>/<wnid>_<k>.JPEG        root/val/<wnid>/ILSVRC2012_val_<k>.JPEG

with wnids n00000000, n00000001, ... (val sorted into class folders, as torchvision's ImageFolder and
catkd's ImageNet builder expect). Images have ImageNet-like sizes (width 300-500, height 250-400) and
content a model can learn: class c has its own hue and stripe orientation (and period); every image
adds a random stripe phase, hue/brightness jitter, a smooth shading and pixel noise, so no two
images are alike and the JPEGs cost about what photos of that size cost to decode. Everything is a
function of (seed, split, class, k): two calls with the same arguments write the same bytes.

The folder appears whole or not at all: it is written into a temporary sibling and renamed into
place, under a file lock beside it, so a second caller (another process too) waits for the first
and then finds it complete (`write_folder_once`, which writes other folders the same way:
catkd.data.transfer_files).
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from filelock import FileLock

MANIFEST = "jpeg_folder.json"  # beside train/ and val/: the arguments the folder was written with
GENERATOR_VERSION = 1
WIDTHS, HEIGHTS = (300, 500), (250, 400)
_GOLDEN = 0.6180339887498949
_SPLITS = {"train": 0, "val": 1}


def wnid(c: int) -> str:
    return f"n{c:08d}"


def _hsv_to_rgb(h: np.ndarray | float, s: float, v: np.ndarray | float) -> np.ndarray:
    """Channels last, for scalar hue/saturation and a value array (the shading): [..., 3] floats in [0, 1]."""
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    w = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return np.asarray(v)[..., None] * (1.0 - s * w)


def render_image(c: int, classes: int, rng: np.random.Generator, size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """One H x W x 3 uint8 image of class `c` out of `classes`, `size` (H, W) or an ImageNet-like one."""
    w = int(rng.integers(WIDTHS[0], WIDTHS[1] + 1))
    h = int(rng.integers(HEIGHTS[0], HEIGHTS[1] + 1))
    if size is not None:  # drawn anyway: the draws that follow, and so the images, stay those of size None
        h, w = size
    hue = (c * _GOLDEN + rng.normal(0.0, 0.015)) % 1.0
    # orientations spread over [0, pi) and periods over 3 levels so neighbouring classes differ in both
    angle = math.pi * ((c * 0.38196601125) % 1.0) + rng.normal(0.0, 0.05)
    period = (14.0, 22.0, 34.0)[c % 3] * rng.uniform(0.85, 1.15)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 2 * math.pi)
    stripes = 0.5 + 0.5 * np.sin((x * math.cos(angle) + y * math.sin(angle)) * (2 * math.pi / period) + phase)
    # a smooth shading across the frame (a light direction), so crops of one image differ in brightness
    gx, gy = rng.normal(0.0, 0.35, size=2)
    shade = 0.75 + 0.25 * np.tanh(gx * (x / w - 0.5) * 2 + gy * (y / h - 0.5) * 2)
    value = np.clip((0.35 + 0.6 * stripes) * shade * rng.uniform(0.8, 1.1), 0.0, 1.0)
    rgb = _hsv_to_rgb(hue, rng.uniform(0.45, 0.85), value) * 255.0
    rgb += rng.normal(0.0, rng.uniform(6.0, 14.0), size=rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _encode(arr: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def _file_name(split: str, c: int, k: int, per_class: int) -> str:
    if split == "train":
        return f"{wnid(c)}_{k}.JPEG"
    return f"ILSVRC2012_val_{c * per_class + k + 1:08d}.JPEG"  # one numbering over the split, as ImageNet's


def _write_tree(dest: Path, classes: int, per_split: dict[str, int], seed: int, quality: int) -> None:
    for split, per_class in per_split.items():
        for c in range(classes):
            d = dest / split / wnid(c)
            d.mkdir(parents=True)
            for k in range(per_class):
                rng = np.random.default_rng([GENERATOR_VERSION, seed, _SPLITS[split], c, k])
                (d / _file_name(split, c, k, per_class)).write_bytes(_encode(render_image(c, classes, rng), quality))


def write_jpeg_folder(root: str | Path, classes: int, train_per_class: int, val_per_class: int, seed: int = 0,
                      quality: int = 90) -> Path:
    """Write (once) the JPEG tree at `root` and return `root`; a folder already there written with other
    arguments is an error (FileExistsError), anything else at `root` too."""
    root = Path(root)
    args = {"generator_version": GENERATOR_VERSION, "classes": int(classes), "train_per_class": int(train_per_class),
            "val_per_class": int(val_per_class), "seed": int(seed), "quality": int(quality)}
    if classes < 1 or train_per_class < 0 or val_per_class < 0:
        raise ValueError(f"write_jpeg_folder: need classes >= 1 and counts >= 0, got {args}")
    return write_folder_once(
        root, args, lambda tmp: _write_tree(tmp, classes, {"train": train_per_class, "val": val_per_class}, seed, quality))


def write_folder_once(root: str | Path, args: dict, write: Callable[[Path], None], manifest: str = MANIFEST) -> Path:
    """Write the folder `root` once, whole or not at all: `write(tmp)` fills a temporary sibling, which
    gets the manifest (`args`, the arguments it was written with) and is renamed into place, under a
    file lock beside `root`. A folder already there with the same manifest is returned at once; one
    with another manifest, or none, is an error (FileExistsError)."""
    root = Path(root)
    if _complete(root, args, manifest):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root.parent / f".{root.name}.lock")):
        if _complete(root, args, manifest):  # another caller wrote it while we waited
            return root
        # under the lock, a temporary sibling left by a killed writer is stale
        for stale in root.parent.glob(f".{root.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        try:
            os.chmod(tmp, 0o777 & ~_umask())
            write(tmp)
            (tmp / manifest).write_text(json.dumps(args, indent=1) + "\n")
            os.rename(tmp, root)  # fails if root appeared meanwhile (not one of ours): never merged into
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return root


def _complete(root: Path, args: dict, manifest: str) -> bool:
    """True when `root` holds a folder written with `args`; raises if it holds anything else."""
    if not root.exists():
        return False
    try:
        found = json.loads((root / manifest).read_text())
    except (OSError, ValueError):
        raise FileExistsError(f"{root} exists and is not a folder written by catkd (no {manifest})") from None
    if found != args:
        raise FileExistsError(f"{root} was written with {found}, not {args}")
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
