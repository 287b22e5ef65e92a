"""torchvision ResNet18/34/50 with the shared CAM head.

A subclass of `torchvision.models.resnet.ResNet`, so parameter names are torchvision's and its
pretrained weights load unchanged. The CAM feature map is the output of layer4, (N, C, H/32, W/32):
7x7 at 224px, C = 512 (18/34) or 2048 (50). Head: `fc`.
"""
from __future__ import annotations

from typing import Any

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
        f0 = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f1 = self.layer1(f0)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return self._cam_outputs(f4, [f0, f1, f2, f3, f4])


def build_resnet(block: str, layers: list[int], num_classes: int, head_bias: bool) -> ImageNetResNet:
    """block "basic" or "bottleneck"; registered lazily by `catkd.models.imagenet`."""
    return ImageNetResNet(BasicBlock if block == "basic" else Bottleneck, layers, num_classes=num_classes,
                          head_bias=head_bias)
