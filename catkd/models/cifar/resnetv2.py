"""CIFAR "resnetv2" of RepDistiller / MDistiller: ResNet18 and ResNet50 with a 3x3 stride-1 stem.

Four stages at 32, 16, 8, 4 px; the CAM feature map is the output of layer4, (N, 512 or 2048, 4, 4)
at 32px. Parameter names equal MDistiller's (shortcuts are `shortcut`, head is `linear`).
"""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from catkd.models.registry import CIFAR_MODELS
from catkd.models.cam_head import CAMHeadMixin, init_weights
from catkd.models.cifar.resnet import stage


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    # An empty Sequential is the identity and has no parameters, as in MDistiller.
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def preact(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return out + self.shortcut(x)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.preact(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = _shortcut(in_planes, planes * 4, stride)

    def preact(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.preact(x))


class ResNetV2(CAMHeadMixin, nn.Module):
    """forward(x: (N, 3, H, W)) -> logits (N, K), feats with "cams" (N, K, H/8, W/8)."""

    head_name = "linear"

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], num_blocks: list[int],
                 num_classes: int = 100, head_bias: bool = True,
                 zero_init_residual: bool = False):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.linear = nn.Linear(512 * block.expansion, num_classes, bias=head_bias)

        init_weights(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int,
                    num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Any]]:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, p1 = stage(self.layer1, f0)
        f2, p2 = stage(self.layer2, f1)
        f3, p3 = stage(self.layer3, f2)
        f4, p4 = stage(self.layer4, f3)
        return self._cam_outputs(f4, [f0, f1, f2, f3, f4], [f0, p1, p2, p3, p4])

    def _layers(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def get_stage_channels(self) -> list[int]:
        """The channels of stages 1-4, no stem entry. MDistiller returns [256, 512, 1024, 2048] for
        both ResNet18 and ResNet50; that is ResNet50's list, and ResNet18's real one is returned here."""
        return [layer[-1].bn2.num_features if isinstance(layer[-1], BasicBlock) else layer[-1].bn3.num_features
                for layer in self._layers()]

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [layer[-1].bn2 if isinstance(layer[-1], BasicBlock) else layer[-1].bn3 for layer in self._layers()]


@CIFAR_MODELS.register("ResNet18")
def resnet18(num_classes: int, head_bias: bool) -> ResNetV2:
    return ResNetV2(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, head_bias=head_bias)


@CIFAR_MODELS.register("ResNet50")
def resnet50(num_classes: int, head_bias: bool) -> ResNetV2:
    return ResNetV2(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, head_bias=head_bias)
