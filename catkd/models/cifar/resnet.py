"""CIFAR ResNets of RepDistiller / MDistiller (`resnet.py`): resnet8..110, resnet8x4, resnet32x4.

Three stages at 32x32, 16x16, 8x8; the CAM feature map is the output of the last stage after its
ReLU, (N, 64 or 256, 8, 8) at 32px. Parameter names equal MDistiller's (head: `fc`).
"""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from catkd.models.registry import CIFAR_MODELS
from catkd.models.cam_head import CAMHeadMixin, init_weights


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def preact(self, x: Tensor) -> Tensor:
        """The block's output before its final ReLU (MDistiller's `is_last` pre-activation)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return out + residual

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.preact(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def preact(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return out + residual

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.preact(x))


def stage(layer: nn.Sequential, x: Tensor) -> tuple[Tensor, Tensor]:
    """Run a stage whose blocks offer `preact`: (output, output before the last block's ReLU)."""
    pre = layer[-1].preact(layer[:-1](x))
    return F.relu(pre), pre


class ResNet(CAMHeadMixin, nn.Module):
    """CIFAR ResNet. depth = 6n+2 (basic) or 9n+2 (bottleneck); num_filters = [stem, s1, s2, s3].

    forward(x: (N, 3, H, W)) -> logits (N, K), feats with "cams" (N, K, H/4, W/4).
    """

    head_name = "fc"

    def __init__(self, depth: int, num_filters: list[int], block_name: str = "basicblock",
                 num_classes: int = 100, head_bias: bool = True):
        super().__init__()
        if block_name.lower() == "basicblock":
            if (depth - 2) % 6 != 0:
                raise ValueError(f"basic-block ResNet depth must be 6n+2, got {depth}")
            n, block = (depth - 2) // 6, BasicBlock
        elif block_name.lower() == "bottleneck":
            if (depth - 2) % 9 != 0:
                raise ValueError(f"bottleneck ResNet depth must be 9n+2, got {depth}")
            n, block = (depth - 2) // 9, Bottleneck
        else:
            raise ValueError(f"block_name must be 'basicblock' or 'bottleneck', got {block_name!r}")
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(3, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.layer1 = self._make_layer(block, num_filters[1], n)
        self.layer2 = self._make_layer(block, num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(block, num_filters[3], n, stride=2)
        self.fc = nn.Linear(num_filters[3] * block.expansion, num_classes, bias=head_bias)
        self.stage_channels = num_filters

        init_weights(self)

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int,
                    stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride,
                          bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Any]]:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, p1 = stage(self.layer1, f0)
        f2, p2 = stage(self.layer2, f1)
        f3, p3 = stage(self.layer3, f2)
        return self._cam_outputs(f3, [f0, f1, f2, f3], [f0, p1, p2, p3])

    def get_stage_channels(self) -> list[int]:
        """MDistiller's: the filter list, stem included ([16, 16, 32, 64] or [32, 64, 128, 256])."""
        return list(self.stage_channels)

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        last = "bn3" if isinstance(self.layer1[0], Bottleneck) else "bn2"
        return [getattr(layer[-1], last) for layer in (self.layer1, self.layer2, self.layer3)]


_SMALL = [16, 16, 32, 64]
_WIDE = [32, 64, 128, 256]
_CONFIGS: dict[str, tuple[int, list[int]]] = {
    **{f"resnet{d}": (d, _SMALL) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": (8, _WIDE),
    "resnet32x4": (32, _WIDE),
}


def _factory(depth: int, filters: list[int]):
    def build(num_classes: int, head_bias: bool) -> ResNet:
        return ResNet(depth, filters, "basicblock", num_classes=num_classes, head_bias=head_bias)
    return build


for _name, (_depth, _filters) in _CONFIGS.items():
    CIFAR_MODELS.add(_name, _factory(_depth, _filters))
