"""MobileNetV2 of RepDistiller / MDistiller (`mobilenetv2.py`); registered "MobileNetV2" is their
`mobile_half` (expansion 6, width 0.5).

CIFAR variant: stride-2 stem and the 24-channel stage at stride 1, so at 32px the blocks end at
2x2; the CAM feature map is the last 1x1 conv-BN-ReLU (`conv2`), (N, 1280, 2, 2).
Parameter names equal MDistiller's (`blocks.i.j.conv.k`, head `classifier.0`).
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from catkd.models.registry import CIFAR_MODELS
from catkd.models.cam_head import CAMHeadMixin, init_weights


def _conv_bn(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        # Unlike torchvision, the 1x1 expansion is kept even when expand_ratio == 1.
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),  # pointwise expand
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),  # depthwise
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),  # pointwise linear
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(CAMHeadMixin, nn.Module):
    """forward(x: (N, 3, H, W)) -> logits (N, K), feats with "cams" (N, K, H/16, W/16)."""

    head_name = "classifier.0"

    def __init__(self, expansion: int = 6, width_mult: float = 0.5, num_classes: int = 100,
                 head_bias: bool = True):
        super().__init__()
        # t (expansion), c (channels), n (repeats), s (first stride)
        setting = [
            [1, 16, 1, 1],
            [expansion, 24, 2, 1],  # stride 1 here (ImageNet: 2): CIFAR inputs are 32px
            [expansion, 32, 3, 2],
            [expansion, 64, 4, 2],
            [expansion, 96, 3, 1],
            [expansion, 160, 3, 2],
            [expansion, 320, 1, 1],
        ]
        input_channel = int(32 * width_mult)
        self.conv1 = _conv_bn(3, input_channel, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in setting:
            output_channel = int(c * width_mult)
            layers = []
            for stride in [s] + [1] * (n - 1):
                layers.append(InvertedResidual(input_channel, output_channel, stride, t))
                input_channel = output_channel
            self.blocks.append(nn.Sequential(*layers))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn(input_channel, self.last_channel, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes, bias=head_bias))

        init_weights(self, linear_std=0.01)

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Any]]:
        f0 = self.conv1(x)
        out = self.blocks[1](self.blocks[0](f0))
        f1 = out
        f2 = self.blocks[2](f1)
        f3 = self.blocks[4](self.blocks[3](f2))
        f4 = self.blocks[6](self.blocks[5](f3))
        fmap = self.conv2(f4)
        # MDistiller's MobileNetV2 returns no preact_feats. Stages 1-4 end in a linear bottleneck
        # (BatchNorm, no ReLU), so they are their own pre-activation; the stem entry is feats[0] as in
        # every family. Given so that OFD and ReviewKD (STU_PREACT) can use a MobileNetV2.
        return self._cam_outputs(fmap, [f0, f1, f2, f3, f4], [f0, f1, f2, f3, f4])

    def get_stage_channels(self) -> list[int]:
        return [self.conv1[1].num_features, *(self.blocks[i][-1].conv[-1].num_features for i in (1, 2, 4, 6))]

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [self.blocks[i][-1].conv[-1] for i in (1, 2, 4, 6)]


@CIFAR_MODELS.register("MobileNetV2")
def mobile_half(num_classes: int, head_bias: bool) -> MobileNetV2:
    return MobileNetV2(expansion=6, width_mult=0.5, num_classes=num_classes, head_bias=head_bias)
