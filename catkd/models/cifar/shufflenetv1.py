"""ShuffleNet V1 of RepDistiller / MDistiller (`ShuffleNetv1.py`); registered "ShuffleV1" is
groups 3, out_planes [240, 480, 960], blocks [4, 8, 4].

1x1 stem at 32px, each stage starts with a stride-2 block; the CAM feature map is the output of
the last stage, (N, 960, 4, 4) at 32px. Parameter names equal MDistiller's (head `linear`).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from catkd.models.registry import CIFAR_MODELS
from catkd.models.cam_head import CAMHeadMixin
from catkd.models.cifar.resnet import stage


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """(N, C, H, W) -> (N, C, H, W) with channels [g0c0, g1c0, ..., g0c1, ...]."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class Bottleneck(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid_planes = int(out_planes / 4)
        # The first 1x1 conv after the 24-channel stem is not grouped (as in the reference).
        self.g = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=self.g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1,
                               groups=mid_planes, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = (nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2
                         else nn.Sequential())

    def preact(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.g)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        # Downsampling blocks concatenate the pooled input (hence out_planes - in_planes).
        return torch.cat([out, res], 1) if self.stride == 2 else out + res

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.preact(x))


class ShuffleNetV1(CAMHeadMixin, nn.Module):
    """forward(x: (N, 3, H, W)) -> logits (N, K), feats with "cams" (N, K, H/8, W/8)."""

    head_name = "linear"
    cam_head_init = "conv_default"  # the reference's ShuffleNets have no init loop

    def __init__(self, out_planes: list[int], num_blocks: list[int], groups: int,
                 num_classes: int = 100, head_bias: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.linear = nn.Linear(out_planes[2], num_classes, bias=head_bias)

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        layers = []
        for i in range(num_blocks):
            stride = 2 if i == 0 else 1
            cat_planes = self.in_planes if i == 0 else 0
            layers.append(Bottleneck(self.in_planes, out_planes - cat_planes, stride, groups))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Any]]:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, p1 = stage(self.layer1, f0)
        f2, p2 = stage(self.layer2, f1)
        f3, p3 = stage(self.layer3, f2)
        return self._cam_outputs(f3, [f0, f1, f2, f3], [f0, p1, p2, p3])

    def get_stage_channels(self) -> list[int]:
        """Missing in MDistiller (OFD fails on it): the stem and the three stages, [24, 240, 480, 960]."""
        return [self.bn1.num_features, *(layer[-1].bn3.num_features for layer in (self.layer1, self.layer2, self.layer3))]

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """MDistiller raises here. Each stage ends as relu(bn3(.) + identity), the ResNets' pattern,
        whose list holds the last block's last BatchNorm; so does this one."""
        return [layer[-1].bn3 for layer in (self.layer1, self.layer2, self.layer3)]


@CIFAR_MODELS.register("ShuffleV1")
def shuffle_v1(num_classes: int, head_bias: bool) -> ShuffleNetV1:
    return ShuffleNetV1([240, 480, 960], [4, 8, 4], groups=3, num_classes=num_classes,
                        head_bias=head_bias)
