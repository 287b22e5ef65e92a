"""MobileNetV1 of MDistiller's ImageNet zoo (`mobilenetv1.py`), with the shared CAM head.

A stride-2 3x3 stem and 13 depthwise-separable blocks in one Sequential `model` (indices 0-13;
the reference's parameter-free AvgPool2d(7) at index 14 is replaced by the global mean, which is
the same at 224px). The CAM feature map is the last block's output, (N, 1024, 7, 7) at 224px.
Head: `fc`.
"""
from __future__ import annotations

from typing import Any

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
        # Stage outputs at strides 4, 8, 16, 32 (after blocks 3, 5, 11, 13), as in MDistiller.
        f1 = self.model[0:4](x)
        f2 = self.model[4:6](f1)
        f3 = self.model[6:12](f2)
        f4 = self.model[12:14](f3)
        return self._cam_outputs(f4, [f1, f2, f3, f4])


@IMAGENET_MODELS.register("MobileNetV1")
def mobilenet_v1(num_classes: int, head_bias: bool) -> MobileNetV1:
    return MobileNetV1(num_classes=num_classes, head_bias=head_bias)
