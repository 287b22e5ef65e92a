"""ShuffleNet V2 of RepDistiller / MDistiller (`ShuffleNetv2.py`); registered "ShuffleV2" is
net size 1: out_channels (116, 232, 464, 1024), blocks (3, 7, 3) after each down-sampling block.

1x1 stem at 32px (no max-pool); the CAM feature map is relu(bn2(conv2(.))) of the final 1x1 conv,
(N, 1024, 4, 4) at 32px. Parameter names equal MDistiller's (head `linear`).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from catkd.models.registry import CIFAR_MODELS
from catkd.models.cam_head import CAMHeadMixin
from catkd.models.cifar.shufflenetv1 import channel_shuffle

CONFIGS: dict[float, dict[str, tuple[int, ...]]] = {
    0.2: {"out_channels": (40, 80, 160, 512), "num_blocks": (3, 3, 3)},
    0.3: {"out_channels": (40, 80, 160, 512), "num_blocks": (3, 7, 3)},
    0.5: {"out_channels": (48, 96, 192, 1024), "num_blocks": (3, 7, 3)},
    1: {"out_channels": (116, 232, 464, 1024), "num_blocks": (3, 7, 3)},
    1.5: {"out_channels": (176, 352, 704, 1024), "num_blocks": (3, 7, 3)},
    2: {"out_channels": (224, 488, 976, 2048), "num_blocks": (3, 7, 3)},
}


class BasicBlock(nn.Module):
    """Channel split: the first half passes through, the second goes 1x1 -> dw3x3 -> 1x1."""

    def __init__(self, in_channels: int, split_ratio: float = 0.5):
        super().__init__()
        self.split_ratio = split_ratio
        c = int(in_channels * split_ratio)
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, stride=1, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_pre(x)[0]

    def forward_pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(output, MDistiller's pre-activation: concat(x1, bn3 output) before the ReLU and without
        the channel shuffle; x1, the pass-through half, is already activated)."""
        c = int(x.size(1) * self.split_ratio)
        x1, x2 = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        pre_branch = self.bn3(self.conv3(out))
        out = F.relu(pre_branch)
        return channel_shuffle(torch.cat([x1, out], 1), 2), torch.cat([x1, pre_branch], 1)


class DownBlock(nn.Module):
    """Stride-2 block: two branches on the full input, each giving out_channels // 2."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        # left branch: dw3x3 (stride 2) -> 1x1
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=1,
                               groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch: 1x1 -> dw3x3 (stride 2) -> 1x1
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid,
                               bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = self.bn1(self.conv1(x))
        left = F.relu(self.bn2(self.conv2(left)))
        right = F.relu(self.bn3(self.conv3(x)))
        right = self.bn4(self.conv4(right))
        right = F.relu(self.bn5(self.conv5(right)))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(CAMHeadMixin, nn.Module):
    """forward(x: (N, 3, H, W)) -> logits (N, K), feats with "cams" (N, K, H/8, W/8)."""

    head_name = "linear"
    cam_head_init = "conv_default"  # the reference's ShuffleNets have no init loop

    def __init__(self, net_size: float = 1, num_classes: int = 100, head_bias: bool = True):
        super().__init__()
        out_channels = CONFIGS[net_size]["out_channels"]
        num_blocks = CONFIGS[net_size]["num_blocks"]
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes, bias=head_bias)

    def _make_layer(self, out_channels: int, num_blocks: int) -> nn.Sequential:
        layers: list[nn.Module] = [DownBlock(self.in_channels, out_channels)]
        layers += [BasicBlock(out_channels) for _ in range(num_blocks)]
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Any]]:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, p1 = self._stage(self.layer1, f0)
        f2, p2 = self._stage(self.layer2, f1)
        f3, p3 = self._stage(self.layer3, f2)
        fmap = F.relu(self.bn2(self.conv2(f3)))
        return self._cam_outputs(fmap, [f0, f1, f2, f3], [f0, p1, p2, p3])

    @staticmethod
    def _stage(layer: nn.Sequential, x: Tensor) -> tuple[Tensor, Tensor]:
        return layer[-1].forward_pre(layer[:-1](x))

    def get_stage_channels(self) -> list[int]:
        return [self.bn1.num_features, *(layer[-1].bn3.num_features * 2 for layer in (self.layer1, self.layer2, self.layer3))]

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """Kept as MDistiller: a stage's output is half a pass-through, half a BatchNorm branch, so
        no single BatchNorm precedes it. OFD therefore cannot use a ShuffleNetV2 teacher."""
        raise NotImplementedError("ShuffleV2 has no BatchNorm before its stage outputs (half of each is a "
                                  "pass-through): OFD cannot use it as a teacher")


@CIFAR_MODELS.register("ShuffleV2")
def shuffle_v2(num_classes: int, head_bias: bool) -> ShuffleNetV2:
    return ShuffleNetV2(net_size=1, num_classes=num_classes, head_bias=head_bias)
