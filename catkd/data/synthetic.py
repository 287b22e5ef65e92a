"""The embedded offline dataset (DATASET.TYPE: synthetic): generated images of attributed objects.

Every class is one combination of three attributes of a single object: a SHAPE (disc, square,
triangle, ring, ...), a COLOUR (a hue) and a TEXTURE (solid, stripes, checker, dots, ...). With
L levels per attribute (the smallest L with L**3 >= NUM_CLASSES, at least 3), class c has digits
(d0, d1, d2) = (c % L, c // L % L, c // L**2) and attributes

    shape = d0,   colour = (d0 + d1) % L,   texture = (d0 + 2 * d1 + d2) % L,

a one-to-one map, so classes share each shape, colour and texture with other classes and only the
combination names the class (with 10 classes: 3 shapes x 3 colours x 3 textures; no attribute
alone beats about 1/3 accuracy).

One image (S x S): a cluttered background (random low-saturation tint, smooth low-frequency colour
noise); 1 to 4 distractor objects (radius 0.07-0.16 S, any rotation) drawn from the same shapes,
colours and textures (75% from the levels the classes use); then the class object (radius
0.16-0.30 S, so never smaller than a distractor) at a random position (it may be cut by the border)
and rotation, with jittered hue (+-0.05), saturation and brightness and a texture of random phase,
period (0.09-0.14 S) and contrast; in 40% of the images one distractor is drawn after it (over
it where they overlap); then a per-image colour cast (channel gains 0.75-1.25), contrast/brightness jitter
and pixel noise (sigma 0.03-0.10). Shapes are rendered from signed distance functions with
1-pixel anti-aliasing, all images of a chunk at once (numpy, grouped by shape and texture).

Train and test sets are independent draws (separate random streams of the one SEED); the
generator depends on nothing else, so two builds with the same settings are bit-identical.
Mean/std are computed from the generated training set.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from catkd.data.common import DataBundle, numpy_rng
from catkd.data.inmemory import build_in_memory

GENERATOR_VERSION = 1

SHAPES = ("disc", "square", "triangle", "ring", "cross", "bar", "ellipse", "frame", "half_disc", "ell")
# hue in [0, 1); the first ones are the most distinct (used first when few levels are needed)
COLOURS = (
    ("red", 0.0), ("green", 0.33), ("blue", 0.63), ("yellow", 0.15), ("magenta", 0.84),
    ("cyan", 0.5), ("orange", 0.075), ("purple", 0.74), ("lime", 0.24), ("azure", 0.56),
)
TEXTURES = (
    "solid", "stripes", "checker", "dots", "vstripes", "diagonal", "antidiagonal", "rings", "grid", "fine_stripes",
)
_TRAIN_STREAM, _TEST_STREAM = 0, 1
_SPLIT_TAG = 0x5E7D


# ----------------------------------------------------------------------------------------------
# class design


def attribute_levels(num_classes: int) -> int:
    """Levels per attribute: smallest L with L**3 >= num_classes, at least 3."""
    levels = 3
    while levels**3 < num_classes:
        levels += 1
    if levels > min(len(SHAPES), len(COLOURS), len(TEXTURES)):
        raise ValueError(f"DATASET.SYNTHETIC.NUM_CLASSES: at most 1000 classes, got {num_classes}")
    return levels


def class_attributes(num_classes: int) -> np.ndarray:
    """num_classes x 3 int array: (shape, colour, texture) index of each class; rows are distinct."""
    L = attribute_levels(num_classes)
    c = np.arange(num_classes)
    d0, d1, d2 = c % L, (c // L) % L, c // (L * L)
    return np.stack([d0, (d0 + d1) % L, (d0 + 2 * d1 + d2) % L], axis=1)


def class_names(num_classes: int) -> list[str]:
    return [f"{COLOURS[k][0]} {TEXTURES[t]} {SHAPES[s]}" for s, k, t in class_attributes(num_classes)]


# ----------------------------------------------------------------------------------------------
# signed distance functions in object units (the object spans about [-1, 1]); negative inside


def _box(u: np.ndarray, v: np.ndarray, bu: float, bv: float) -> np.ndarray:
    du, dv = np.abs(u) - bu, np.abs(v) - bv
    outside = np.hypot(np.maximum(du, 0), np.maximum(dv, 0))
    return outside + np.minimum(np.maximum(du, dv), 0)


def _triangle(u: np.ndarray, v: np.ndarray, side: float = 1.05) -> np.ndarray:
    k = math.sqrt(3.0)
    px = np.abs(u) - side
    py = -v + side / k - 0.25  # pointing up in image coordinates, roughly centred
    fold = px + k * py > 0
    px, py = np.where(fold, (px - k * py) / 2, px), np.where(fold, (-k * px - py) / 2, py)
    px = px - np.clip(px, -2 * side, 0)
    return -np.hypot(px, py) * np.sign(py)


SDF: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "disc": lambda u, v: np.hypot(u, v) - 0.9,
    "square": lambda u, v: _box(u, v, 0.78, 0.78),
    "triangle": _triangle,
    "ring": lambda u, v: np.abs(np.hypot(u, v) - 0.7) - 0.27,
    "cross": lambda u, v: np.minimum(_box(u, v, 0.95, 0.3), _box(u, v, 0.3, 0.95)),
    "bar": lambda u, v: _box(u, v, 1.0, 0.36),
    "ellipse": lambda u, v: (np.hypot(u, v * 1.7) - 1.0) / 1.7,  # approximate distance, fine for 1-px edges
    "frame": lambda u, v: np.maximum(_box(u, v, 0.88, 0.88), -_box(u, v, 0.45, 0.45)),
    "half_disc": lambda u, v: np.maximum(np.hypot(u, v + 0.35) - 0.98, -(v + 0.35)),
    "ell": lambda u, v: np.minimum(_box(u + 0.5, v, 0.3, 0.95), _box(u - 0.15, v - 0.65, 0.95, 0.3)),
}


def _soft(x: np.ndarray) -> np.ndarray:
    """A soft square wave from a cosine (values in [0, 1])."""
    return 0.5 + 0.5 * np.tanh(3.0 * x)


def _texture(name: str, U: np.ndarray, V: np.ndarray, period: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Pattern in [0, 1] (1: dark part) on pixel-scaled object coordinates."""
    tau = 2 * math.pi
    f = tau / period
    if name == "solid":
        return np.zeros_like(U)
    if name == "stripes":
        return _soft(np.cos(f * V + tau * phase))
    if name == "vstripes":
        return _soft(np.cos(f * U + tau * phase))
    if name == "diagonal":
        return _soft(np.cos(f * (U + V) / math.sqrt(2) + tau * phase))
    if name == "antidiagonal":
        return _soft(np.cos(f * (U - V) / math.sqrt(2) + tau * phase))
    if name == "fine_stripes":
        return _soft(np.cos(1.6 * f * V + tau * phase))
    if name == "checker":
        return _soft(np.cos(f * U + tau * phase) * np.cos(f * V + tau * phase))
    if name == "rings":
        return _soft(np.cos(f * np.hypot(U, V) + tau * phase))
    if name == "grid":
        return np.maximum(_soft(np.cos(f * U + tau * phase) - 0.6), _soft(np.cos(f * V + tau * phase) - 0.6))
    if name == "dots":
        du = np.mod(U / period + phase, 1.0) - 0.5
        dv = np.mod(V / period + phase, 1.0) - 0.5
        return np.clip(0.5 - (np.hypot(du, dv) - 0.28) * period, 0, 1)
    raise KeyError(name)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB; arrays of shape (n,), result (n, 3)."""
    k = np.mod(np.array([5.0, 3.0, 1.0], dtype=h.dtype)[None, :] + h[:, None] * 6.0, 6.0)
    return v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# drawing


def _object_params(rng: np.random.Generator, n: int, size: int, radius: tuple[float, float], full_rotation: bool):
    r = size * rng.uniform(*radius, n)
    margin = 0.7 * r
    cx = rng.uniform(0, 1, n) * (size - 2 * margin) + margin
    cy = rng.uniform(0, 1, n) * (size - 2 * margin) + margin
    theta = rng.uniform(-math.pi, math.pi, n) if full_rotation else rng.uniform(-0.35, 0.35, n)
    params = {
        "r": r, "cx": cx, "cy": cy, "theta": theta,
        "hue_jitter": rng.uniform(-0.05, 0.05, n),
        "sat": rng.uniform(0.3, 1.0, n),
        "val": rng.uniform(0.4, 1.0, n),
        "period": size * rng.uniform(0.09, 0.14, n),
        "phase": rng.uniform(0, 1, n),
        "contrast": rng.uniform(0.3, 0.7, n),
    }
    return {k: v.astype(np.float32) for k, v in params.items()}  # render in float32


def _draw_objects(img: np.ndarray, p: dict, shape: np.ndarray, colour: np.ndarray, texture: np.ndarray,
                  active: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> None:
    """Paint one object into each image where `active` (img: n x 3 x S x S float, in place)."""
    for s_id in np.unique(shape[active]):
        sel = np.flatnonzero(active & (shape == s_id))
        r, th = p["r"][sel, None, None], p["theta"][sel, None, None]
        dx, dy = xs[None] - p["cx"][sel, None, None], ys[None] - p["cy"][sel, None, None]
        cos, sin = np.cos(th), np.sin(th)
        U, V = cos * dx + sin * dy, -sin * dx + cos * dy  # pixels, object frame
        alpha = np.clip(0.5 - SDF[SHAPES[s_id]](U / r, V / r) * r, 0.0, 1.0)
        pattern = np.zeros_like(U)
        tex = texture[sel]
        for t_id in np.unique(tex):
            j = np.flatnonzero(tex == t_id)
            pattern[j] = _texture(TEXTURES[t_id], U[j], V[j], p["period"][sel][j, None, None],
                                  p["phase"][sel][j, None, None])
        hue = np.array([COLOURS[k][1] for k in colour[sel]], dtype=np.float32) + p["hue_jitter"][sel]
        rgb = _hsv_to_rgb(np.mod(hue, 1.0), p["sat"][sel], p["val"][sel])  # m x 3
        shade = 1.0 - p["contrast"][sel, None, None] * pattern  # m x S x S
        obj = rgb[:, :, None, None] * shade[:, None]
        a = alpha[:, None]
        img[sel] = img[sel] * (1.0 - a) + obj * a


def _render(rng: np.random.Generator, labels: np.ndarray, attrs: np.ndarray, size: int, levels: int,
            noise_seed: tuple[int, ...]) -> np.ndarray:
    n = len(labels)
    # per-image parameters, drawn for the whole set up front
    main = _object_params(rng, n, size, (0.16, 0.3), full_rotation=True)
    max_distractors = 4
    n_distract = rng.integers(1, max_distractors + 1, n)
    distractors = []
    for slot in range(max_distractors):
        d = _object_params(rng, n, size, (0.07, 0.16), full_rotation=True)
        used = rng.uniform(0, 1, (n, 3)) < 0.75  # mostly the levels the classes use, sometimes others
        d["attrs"] = np.where(
            used,
            rng.integers(0, levels, (n, 3)),
            rng.integers(0, [len(SHAPES), len(COLOURS), len(TEXTURES)], (n, 3)),
        )
        d["active"] = slot < n_distract
        distractors.append(d)
    bg_hsv = np.stack([rng.uniform(0, 1, n), rng.uniform(0, 0.45, n), rng.uniform(0.25, 0.75, n)], 1)
    bg_grid = rng.normal(0, 0.12, (n, 3, 4, 4)).astype(np.float32)
    gain, bias = rng.uniform(0.8, 1.2, n).astype(np.float32), rng.uniform(-0.08, 0.08, n).astype(np.float32)
    noise_sigma = rng.uniform(0.03, 0.1, n).astype(np.float32)
    cast = rng.uniform(0.75, 1.25, (n, 3)).astype(np.float32)  # per-image colour cast (channel gains)
    on_top = rng.uniform(0, 1, n) < 0.4  # the first distractor is drawn over the object (where they overlap)

    out = np.empty((n, 3, size, size), dtype=np.uint8)
    chunk = max(1, (1 << 21) // (size * size))
    ys, xs = np.meshgrid(np.arange(size, dtype=np.float32) + 0.5, np.arange(size, dtype=np.float32) + 0.5,
                         indexing="ij")

    def part(d: dict, sl: slice) -> dict:
        return {k: v[sl] for k, v in d.items()}

    for ci, start in enumerate(range(0, n, chunk)):
        sl = slice(start, min(n, start + chunk))
        m = sl.stop - sl.start
        base = _hsv_to_rgb(*bg_hsv[sl].T).astype(np.float32)
        smooth = F.interpolate(torch.from_numpy(bg_grid[sl]), size=(size, size), mode="bilinear",
                               align_corners=False).numpy()
        img = base[:, :, None, None] + smooth
        top = on_top[sl]
        for slot, d in enumerate(distractors):
            dp = part(d, sl)
            a = dp["attrs"]
            _draw_objects(img, dp, a[:, 0], a[:, 1], a[:, 2], dp["active"] & ~(top & (slot == 0)), ys, xs)
        a = attrs[labels[sl]]
        _draw_objects(img, part(main, sl), a[:, 0], a[:, 1], a[:, 2], np.ones(m, dtype=bool), ys, xs)
        dp = part(distractors[0], sl)
        a = dp["attrs"]
        _draw_objects(img, dp, a[:, 0], a[:, 1], a[:, 2], top, ys, xs)
        img = img * cast[sl, :, None, None]
        img = (img - 0.5) * gain[sl, None, None, None] + 0.5 + bias[sl, None, None, None]
        noise = numpy_rng(*noise_seed, ci).standard_normal(img.shape, dtype=np.float32)
        img += noise * noise_sigma[sl, None, None, None]
        out[sl] = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return out


def generate(num_classes: int, per_class: int, image_size: int, seed: int, split: str = "train"):
    """(images uint8 N x 3 x S x S, labels int64 N) for split "train" or "test"; labels class-sorted."""
    stream = {"train": _TRAIN_STREAM, "test": _TEST_STREAM}[split]
    attrs = class_attributes(num_classes)
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    rng = numpy_rng(_SPLIT_TAG, seed, stream)
    images = _render(rng, labels, attrs, image_size, attribute_levels(num_classes),
                     noise_seed=(_SPLIT_TAG, seed, stream, 1))
    return images, labels


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images on the 0..1 scale (exact, from 256-bin histograms)."""
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = np.bincount(images[:, c].reshape(-1), minlength=256).astype(np.float64)
        hist /= hist.sum()
        m = float(hist @ values)
        means.append(round(m, 4))
        stds.append(round(float(np.sqrt(hist @ (values - m) ** 2)), 4))
    return tuple(means), tuple(stds)


def describe(cfg_syn) -> dict[str, Any]:
    return {
        "version": GENERATOR_VERSION,
        "seed": cfg_syn.SEED,
        "num_classes": cfg_syn.NUM_CLASSES,
        "train_per_class": cfg_syn.TRAIN_PER_CLASS,
        "test_per_class": cfg_syn.TEST_PER_CLASS,
        "image_size": cfg_syn.IMAGE_SIZE,
        "attribute_levels": attribute_levels(cfg_syn.NUM_CLASSES),
        "design": "class = (shape, colour, texture) of one object; shape=d0, colour=(d0+d1)%L, "
                  "texture=(d0+2*d1+d2)%L for class digits base L; 1-4 distractors of the same "
                  "attributes, cluttered background, colour/contrast jitter, pixel noise",
        "classes": class_names(cfg_syn.NUM_CLASSES),
    }


@functools.lru_cache(maxsize=4)
def _generated(num_classes: int, per_class: int, image_size: int, seed: int, split: str):
    images, labels = generate(num_classes, per_class, image_size, seed, split)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def generate_cached(num_classes: int, per_class: int, image_size: int, seed: int, split: str = "train"):
    """`generate`, remembered per process: a Ray worker reused for the next trial of a smoke study
    skips the ~0.6 s render. Returns fresh copies, so callers may do as they like with them."""
    images, labels = _generated(num_classes, per_class, image_size, seed, split)
    return images.copy(), labels.copy()


def build_synthetic(cfg, device: torch.device) -> DataBundle:
    syn = cfg.DATASET.SYNTHETIC
    train_x, train_y = generate_cached(syn.NUM_CLASSES, syn.TRAIN_PER_CLASS, syn.IMAGE_SIZE, syn.SEED, "train")
    test_x, test_y = generate_cached(syn.NUM_CLASSES, syn.TEST_PER_CLASS, syn.IMAGE_SIZE, syn.SEED, "test")
    mean, std = channel_stats(train_x)
    info = {
        "dataset": "synthetic",
        "root": None,
        "synthetic": True,
        "generator": describe(syn),
    }
    return build_in_memory(cfg, device, train_x, train_y, test_x, test_y, syn.NUM_CLASSES, mean, std, info)
