"""MobileNetV1 of MDistiller's ImageNet zoo (`mobilenetv1.py`), with the shared CAM head.

A stride-2 3x3 stem and 13 depthwise-separable blocks in one Sequential `model` (indices 0-13;
the reference's parameter-free AvgPool2d(7) at index 14 is replaced by the global mean, which is
the same at 224px). The CAM feature map is the last block's output, (N, 1024, 7, 7) at 224px.
Head: `fc`.
"""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from catkd.models.registry import IMAGENET_MODELS
from catkd.models.cam_head import CAMHeadMixin


def _conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


def _conv_dw(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.ReLU(inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


# (in, out, stride) of the 13 depthwise-separable blocks.
_DW = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
       (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1),
       (512, 1024, 2), (1024, 1024, 1)]


class MobileNetV1(CAMHeadMixin, nn.Module):
    """forward(x: (N, 3, H, W)) -> logits (N, K), feats with "cams" (N, K, H/32, W/32)."""

    head_name = "fc"
    cam_head_init = "conv_default"  # the reference's MobileNetV1 has no init loop

    def __init__(self, num_classes: int = 1000, head_bias: bool = True):
        super().__init__()
        self.model = nn.Sequential(_conv_bn(3, 32, 2), *[_conv_dw(i, o, s) for i, o, s in _DW])
        self.fc = nn.Linear(1024, num_classes, bias=head_bias)

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Any]]:
        # Stage outputs at strides 4, 8, 16, 32 (after blocks 3, 5, 11, 13), as in MDistiller: no stem
        # entry; preact is each stage's last BatchNorm output before its ReLU.
        feats, pres, h = [], [], x
        for lo, hi in _STAGES:
            pre = self.model[hi][:-1](self.model[lo:hi](h))  # the block's in-place ReLU left out
            h = F.relu(pre)
            feats.append(h)
            pres.append(pre)
        return self._cam_outputs(h, feats, pres)

    def get_stage_channels(self) -> list[int]:
        return [self.model[hi][-2].num_features for _, hi in _STAGES]

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [self.model[hi][-2] for _, hi in _STAGES]


_STAGES = [(0, 3), (4, 5), (6, 11), (12, 13)]  # model[lo:hi] then model[hi] without its last ReLU


@IMAGENET_MODELS.register("MobileNetV1")
def mobilenet_v1(num_classes: int, head_bias: bool) -> MobileNetV1:
    return MobileNetV1(num_classes=num_classes, head_bias=head_bias)
