"""VGG with BatchNorm of RepDistiller / MDistiller (`vgg.py`): vgg8, vgg11, vgg13, vgg16, vgg19.

Five conv blocks; max-pools after blocks 0-2 (and after block 3 only at 64px input), so at 32px
the CAM feature map is relu(block4), (N, 512, 4, 4), taken before the final (global) pool.
Parameter names equal MDistiller's (`block0.0` conv with bias, `block0.1` BN, head `classifier`).
"""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from catkd.models.registry import CIFAR_MODELS
from catkd.models.cam_head import CAMHeadMixin, init_weights

# Channels per conv in each of the five blocks.
CFGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512],
              [512, 512, 512, 512]],
}


def _make_block(channels: list[int], in_channels: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for v in channels:
        layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        in_channels = v
    # The block's last ReLU is dropped (the reference applies it in forward, after recording the
    # pre-activation); it keeps the Sequential indices, hence the parameter names, identical.
    return nn.Sequential(*layers[:-1])


class VGG(CAMHeadMixin, nn.Module):
    """forward(x: (N, 3, H, W)) -> logits (N, K), feats with "cams" (N, K, H/8, W/8) (H != 64)."""

    head_name = "classifier"
    cam_head_init = "conv_default"  # the reference makes VGG's CAM head after its init loop

    def __init__(self, cfg: list[list[int]], batch_norm: bool = True, num_classes: int = 100,
                 head_bias: bool = True):
        super().__init__()
        in_ch = 3
        for i, channels in enumerate(cfg):
            setattr(self, f"block{i}", _make_block(channels, in_ch, batch_norm))
            in_ch = channels[-1]
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.classifier = nn.Linear(in_ch, num_classes, bias=head_bias)

        init_weights(self, linear_std=0.01)

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Any]]:
        h = x.shape[2]
        f0 = F.relu(self.block0(x))
        p1 = self.block1(self.pool0(f0))
        f1 = F.relu(p1)
        p2 = self.block2(self.pool1(f1))
        f2 = F.relu(p2)
        p3 = self.block3(self.pool2(f2))
        f3 = F.relu(p3)
        # The reference pools before block4 only for 64px inputs (Tiny-ImageNet).
        p4 = self.block4(self.pool3(f3) if h == 64 else f3)
        f4 = F.relu(p4)
        return self._cam_outputs(f4, [f0, f1, f2, f3, f4], [f0, p1, p2, p3, p4])

    def get_stage_channels(self) -> list[int]:
        return [self.block0[-1].num_features, *(getattr(self, f"block{i}")[-1].num_features for i in range(1, 5))]

    def get_bn_before_relu(self) -> list[nn.Module]:
        return [getattr(self, f"block{i}")[-1] for i in range(1, 5)]


def _factory(cfg: list[list[int]]):
    def build(num_classes: int, head_bias: bool) -> VGG:
        return VGG(cfg, batch_norm=True, num_classes=num_classes, head_bias=head_bias)
    return build


for _name, _cfg in CFGS.items():
    CIFAR_MODELS.add(_name, _factory(_cfg))
