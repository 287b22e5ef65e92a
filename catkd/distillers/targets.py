"""Teacher targets by kind (docs/contracts.md, C8): what a distiller's loss uses of the teacher's
output, computed from a target spec alone, so one teacher forward can fill the stores of several
specs (beta_sweep's R = 2 and R = 4, KD's logits beside CAT-KD's CAMs)."""
from __future__ import annotations

from typing import Any, Callable

import torch.nn.functional as F
from torch import Tensor


def binarize_cams(cams: Tensor) -> Tensor:
    """1.0 where a map exceeds the mean of its absolute values over H x W, else 0.0.

    cams: (N, K, H, W) -> (N, K, H, W), same dtype. Applied to the teacher's CAMs before pooling.
    """
    threshold = cams.abs().mean(dim=(2, 3), keepdim=True)
    return (cams > threshold).to(cams.dtype)


def cam_targets(logits: Tensor, feats: dict[str, Any], resolution: int, binarize: bool) -> dict[str, Tensor]:
    """cams: (N, K, R, R) the teacher's CAMs, binarised if asked, pooled to R x R; rank: (N, K) its
    bias-free logits (the maps' means, its Linear bias dropped as in the reference), which rank the
    classes for partial CAMs. Pooling per map commutes with the per-class selection."""
    cams = feats["cams"].float()
    rank = cams.mean(dim=(2, 3))
    if binarize:
        cams = binarize_cams(cams)
    return {"cams": F.adaptive_avg_pool2d(cams, resolution), "rank": rank}


def logit_targets(logits: Tensor, feats: dict[str, Any]) -> dict[str, Tensor]:
    """logits: (N, K), with the teacher's Linear bias (KD, DKD)."""
    return {"logits": logits.float()}


def feature_targets(logits: Tensor, feats: dict[str, Any], layers: tuple[str, ...]) -> dict[str, Tensor]:
    """The named layers of the teacher's output, {layer: tensor} (the feature methods: AT, FitNet, ...).

    A layer is "logits", "pooled_feat" (N, D), or "<list>.<i>" for entry i of feats["feats"] or
    feats["preact_feats"] (N, C, H, W). Whole maps are large: a cache store of them usually exceeds
    RUN.TEACHER_CACHE_MAX_GB, and the run then uses the live teacher (the provider says so).
    """
    out = {}
    for layer in layers:
        if layer == "logits":
            out[layer] = logits.float()
        elif layer == "pooled_feat":
            out[layer] = feats["pooled_feat"].float()
        else:
            key, _, index = layer.rpartition(".")
            out[layer] = feats[key][int(index)].float()
    return out


# spec["targets"] -> function(logits, feats, **the spec's other entries)
TARGET_KINDS: dict[str, Callable[..., dict[str, Tensor]]] = {
    "cams": cam_targets, "logits": logit_targets, "features": feature_targets}


def compute_targets(spec: dict[str, Any], logits: Tensor, feats: dict[str, Any]) -> dict[str, Tensor]:
    params = {k: v for k, v in spec.items() if k != "targets"}
    return TARGET_KINDS[spec["targets"]](logits, feats, **params)
