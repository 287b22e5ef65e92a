"""torchvision ResNet18/34/50 with the shared CAM head.

A subclass of `torchvision.models.resnet.ResNet`, so parameter names are torchvision's and its
pretrained weights load unchanged. The CAM feature map is the output of layer4, (N, C, H/32, W/32):
7x7 at 224px, C = 512 (18/34) or 2048 (50). Head: `fc`.
"""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet as _TVResNet

from catkd.models.cam_head import CAMHeadMixin


class ImageNetResNet(CAMHeadMixin, _TVResNet):
    """forward(x: (N, 3, H, W)) -> logits (N, K), feats with "cams" (N, K, H/32, W/32)."""

    head_name = "fc"

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int],
                 num_classes: int = 1000, head_bias: bool = True):
        super().__init__(block, layers, num_classes=num_classes)
        if not head_bias:
            # Re-assigning an existing attribute keeps its place in state_dict order.
            self.fc = nn.Linear(self.fc.in_features, num_classes, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Any]]:  # type: ignore[override]
        # MDistiller's ImageNet ResNet: feats[0] is the stem before the max-pool; its preact[0] is
        # meant to be pre-ReLU but an in-place ReLU overwrites it, so both are post-ReLU (kept).
        stem = self.relu(self.bn1(self.conv1(x)))
        f1, p1 = _stage(self.layer1, self.maxpool(stem))
        f2, p2 = _stage(self.layer2, f1)
        f3, p3 = _stage(self.layer3, f2)
        f4, p4 = _stage(self.layer4, f3)
        return self._cam_outputs(f4, [stem, f1, f2, f3, f4], [stem, p1, p2, p3, p4])

    def _last_bn(self, layer: nn.Sequential) -> nn.BatchNorm2d:
        return layer[-1].bn3 if isinstance(layer[-1], Bottleneck) else layer[-1].bn2

    def get_stage_channels(self) -> list[int]:
        """Channels of layer1-4. MDistiller returns ResNet50's [256, 512, 1024, 2048] for every depth;
        ResNet18/34's real [64, 128, 256, 512] are returned here."""
        return [self._last_bn(layer).num_features for layer in (self.layer1, self.layer2, self.layer3, self.layer4)]

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """As MDistiller: layer2-4 (layer1 is skipped)."""
        return [self._last_bn(layer) for layer in (self.layer2, self.layer3, self.layer4)]


def _block_preact(block: BasicBlock | Bottleneck, x: Tensor) -> Tensor:
    """torchvision's block forward without its final ReLU (same operations, same order)."""
    identity = x if block.downsample is None else block.downsample(x)
    out = block.relu(block.bn1(block.conv1(x)))
    if isinstance(block, Bottleneck):
        out = block.relu(block.bn2(block.conv2(out)))
        out = block.bn3(block.conv3(out))
    else:
        out = block.bn2(block.conv2(out))
    return out + identity


def _stage(layer: nn.Sequential, x: Tensor) -> tuple[Tensor, Tensor]:
    pre = _block_preact(layer[-1], layer[:-1](x))
    return F.relu(pre), pre


def build_resnet(block: str, layers: list[int], num_classes: int, head_bias: bool) -> ImageNetResNet:
    """block "basic" or "bottleneck"; registered lazily by `catkd.models.imagenet`."""
    return ImageNetResNet(BasicBlock if block == "basic" else Bottleneck, layers, num_classes=num_classes,
                          head_bias=head_bias)
