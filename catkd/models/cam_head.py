"""The one CAM head shared by every model (docs/method.md, "Class activation maps").

Every network ends as: last spatial feature map F (N, C, H, W) -> Linear head W (K, C), b (K,).
The class activation maps are the head applied as a bias-free 1x1 convolution,

    cams[n, k, h, w] = sum_c W[k, c] * F[n, c, h, w]            (N, K, H, W)

and the logits are the usual global-average-pool-then-Linear,

    logits = mean_hw(F) @ W.T + b = mean_hw(cams) + b           (N, K)

so `cams.mean((2, 3)) + b == logits` holds by linearity. CAMs are raw: no bias, ReLU or softmax.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor, nn


def compute_cams(fmap: Tensor, weight: Tensor) -> Tensor:
    """(N, C, H, W) feature map, (K, C) head weight -> (N, K, H, W) CAMs (1x1 conv, no bias)."""
    return torch.einsum("nchw,kc->nkhw", fmap, weight)


def cam_outputs(fmap: Tensor, head: nn.Linear, stage_feats: list[Tensor] | None = None,
                preact_feats: list[Tensor] | None = None) -> tuple[Tensor, dict[str, Any]]:
    """Apply `head` to the final feature map the way all models share (docs/contracts.md, C1).

    fmap: (N, C, H, W). Returns `logits` (N, K) and a dict with "cams" (N, K, H, W),
    "pooled" (N, C) plus its MDistiller name "pooled_feat", "fmap" (the F used, N x C x H x W),
    "feats" (stage outputs, MDistiller's, shallow to deep, the stem first where there is one) and
    "preact_feats" (the same stages before their last ReLU, MDistiller's; docs/method.md,
    "Model features").
    """
    pooled = fmap.mean((2, 3))
    # Pool first, then Linear: identical to GAP of the CAMs plus bias, but it keeps the
    # numerics of the ordinary classifier the teacher was trained with.
    logits = nn.functional.linear(pooled, head.weight, head.bias)
    feats: dict[str, Any] = {
        "cams": compute_cams(fmap, head.weight),
        "pooled": pooled,
        "pooled_feat": pooled,
        "feats": list(stage_feats) if stage_feats is not None else [],
        "preact_feats": list(preact_feats) if preact_feats is not None else [],
        "fmap": fmap,
    }
    return logits, feats


class CAMHeadMixin:
    """Gives a model `.head` (its Linear classifier, whatever MDistiller named it).

    Subclasses set `head_name` to the dotted module path of the Linear ("fc", "linear",
    "classifier" or "classifier.0"); the mixin adds no modules, so state_dict order is
    untouched.
    """

    head_name: str = "fc"
    # How the reference initialises this model's bias-free CAM head (a 1x1 conv there); see
    # `init_cam_head`. Models whose head is made outside the reference's init loop say "conv_default".
    cam_head_init: str = "kaiming_fan_out"

    @property
    def head(self) -> nn.Linear:
        return self.get_submodule(self.head_name)  # type: ignore[attr-defined]

    def _cam_outputs(self, fmap: Tensor, stage_feats: list[Tensor] | None = None,
                     preact_feats: list[Tensor] | None = None) -> tuple[Tensor, dict[str, Any]]:
        return cam_outputs(fmap, self.head, stage_feats, preact_feats)

    def get_stage_channels(self) -> list[int]:
        """Channels of the stages OFD pairs (MDistiller's method; per family, see each model)."""
        raise NotImplementedError(f"{type(self).__name__} does not list its stage channels")

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The BatchNorm before each stage's last ReLU (OFD's teacher margins; MDistiller's method)."""
        raise NotImplementedError(f"{type(self).__name__} does not list its BatchNorms before ReLU")


def init_weights(model: nn.Module, linear_std: float | None = None) -> None:
    """The initialisation the MDistiller CIFAR zoo shares: Kaiming-normal (fan_out) convolutions,
    unit/zero BatchNorm, and optionally N(0, linear_std) Linear weights with zero bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0, linear_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _kaiming_fan_out(weight: Tensor) -> None:
    # the reference's `kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")` on a
    # (K, C, 1, 1) kernel: fan_out = K, std = sqrt(2 / K). A (K, C) Linear weight has the same fan_out.
    nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")


def _conv_default(weight: Tensor) -> None:
    # PyTorch's default Conv2d init: kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(C), 1/sqrt(C)) for a
    # (K, C, 1, 1) kernel; fan_in is C for the (K, C) Linear weight too.
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))


CAM_HEAD_INITS: dict[str, Callable[[Tensor], None]] = {
    "kaiming_fan_out": _kaiming_fan_out,
    "conv_default": _conv_default,
}


def init_cam_head(model: nn.Module) -> None:
    """Initialise a student's bias-free CAM head (K, C) as the reference initialises its 1x1 conv.

    Kaiming-normal fan_out (std sqrt(2/K)) for the CIFAR ResNets, ResNet18/50, WRNs, MobileNetV2 and
    the ImageNet ResNets; PyTorch's default conv init (uniform, bound 1/sqrt(C)) for VGG (its head is
    made after its init loop), the ShuffleNets and the ImageNet MobileNetV1. The scale matters: it
    sets the size of the CAT loss in the first epoch, which the preset β values were tuned for.
    """
    head = model.head  # type: ignore[attr-defined]
    if head.bias is not None:
        raise ValueError("init_cam_head is for bias-free student heads; teacher heads keep their init")
    with torch.no_grad():
        CAM_HEAD_INITS[model.cam_head_init](head.weight)  # type: ignore[attr-defined]
