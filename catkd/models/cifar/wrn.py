"""Wide ResNets of RepDistiller / MDistiller (`wrn.py`): wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2.

Pre-activation blocks; the CAM feature map is relu(bn1(block3 output)), (N, 64*k, 8, 8) at 32px.
Parameter names equal MDistiller's (`block1.layer.0.convShortcut`, head `fc`).
"""
from __future__ import annotations

import math
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from catkd.models.registry import CIFAR_MODELS
from catkd.models.cam_head import CAMHeadMixin


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(
            in_planes, out_planes, 1, stride=stride, padding=0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_pre(x)[0]

    def forward_pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(output, bn1(x)): the block's input after its first BatchNorm, which MDistiller reports as
        the previous stage's pre-activation."""
        pre = self.bn1(x)
        act = F.relu(pre)
        out = F.relu(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        # As in the reference: when the width changes, the shortcut conv sees the
        # *pre-activated* input; otherwise the raw input is added.
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out, pre


class NetworkBlock(nn.Module):
    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int,
                 drop_rate: float = 0.0):
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes,
                       stride if i == 0 else 1, drop_rate)
            for i in range(nb_layers)
        ])

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)

    def forward_pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(output, bn1 of the input as its first block computes it)."""
        out, pre = self.layer[0].forward_pre(x)
        return self.layer[1:](out), pre


class WideResNet(CAMHeadMixin, nn.Module):
    """WRN-depth-k. forward(x: (N, 3, H, W)) -> logits (N, K), feats with "cams" (N, K, H/4, W/4)."""

    head_name = "fc"

    def __init__(self, depth: int, widen_factor: int = 1, num_classes: int = 100,
                 head_bias: bool = True, drop_rate: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, ch[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], num_classes, bias=head_bias)
        self.nChannels = ch[3]

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.data.zero_()

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Any]]:
        # MDistiller's WRN reports signed residual sums as feats and, as preact, the next unit's
        # BatchNorm applied to them, by calling those BNs a second time (which moves their running
        # statistics twice per training step). The same values are taken here from the forward itself.
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        f2, p1 = self.block2.forward_pre(f1)
        f3, p2 = self.block3.forward_pre(f2)
        p3 = self.bn1(f3)
        fmap = F.relu(p3)
        return self._cam_outputs(fmap, [f0, f1, f2, f3], [f0, p1, p2, p3])

    def get_stage_channels(self) -> list[int]:
        return [self.conv1.out_channels, self.block1.layer[-1].conv2.out_channels,
                self.block2.layer[-1].conv2.out_channels, self.nChannels]

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]


def _factory(depth: int, widen: int):
    def build(num_classes: int, head_bias: bool) -> WideResNet:
        return WideResNet(depth, widen, num_classes=num_classes, head_bias=head_bias)
    return build


for _depth, _widen in [(16, 1), (16, 2), (40, 1), (40, 2)]:
    CIFAR_MODELS.add(f"wrn_{_depth}_{_widen}", _factory(_depth, _widen))
