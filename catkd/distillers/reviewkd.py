"""ReviewKD: "Distilling Knowledge via Knowledge Review" (Chen et al., CVPR 2021), as MDistiller computes it.

The student's stage maps plus its pooled vector (as a 1x1 map) are reviewed deep to shallow: each
level's map goes through an attention-based fusion (ABF) module that mixes in the residual coming
from the deeper level, and each level's output is compared with the teacher's pre-ReLU map of the
same level (the teacher's pooled vector for the deepest) by the hierarchical context loss (HCL: MSE
at full size and at 4x4, 2x2, 1x1 average-pooled sizes). The term ramps up linearly over
WARMUP_EPOCHS (epochs counted from 1). Pure loss and ABF first, then the per-pair lists, then the
distiller.
"""
from __future__ import annotations

import warnings
from typing import Annotated, Optional, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from catkd.config import ConfigError, Section, config_section, notice
from catkd.distillers.base import Distiller
from catkd.distillers.common import feature_shapes
from catkd.distillers.common import input_size_of
from catkd.distillers.registry import DISTILLERS

_Size = Annotated[int, Field(ge=1)]
_LIST_KEYS = ("IN_CHANNELS", "OUT_CHANNELS", "SHAPES", "OUT_SHAPES")
MDISTILLER_MID_CHANNEL = 512  # the cap MDistiller applies whatever MAX_MID_CHANNEL says


@config_section("REVIEWKD")
class ReviewKDCfg(Section):
    """MDistiller's REVIEWKD section and defaults (no LOSS sub-section). The lists fit resnet32x4 ->
    resnet8x4; left at these defaults for another pair, they are derived from the pair's features."""

    CE_WEIGHT: float = Field(1.0, ge=0)
    REVIEWKD_WEIGHT: float = Field(1.0, ge=0)
    WARMUP_EPOCHS: int = Field(20, ge=1)
    SHAPES: list[_Size] = Field([1, 8, 16, 32], min_length=2)  # student map sizes, deep to shallow
    OUT_SHAPES: list[_Size] = Field([1, 8, 16, 32], min_length=2)  # teacher map sizes, deep to shallow
    IN_CHANNELS: list[_Size] = Field([64, 128, 256, 256], min_length=2)  # student, shallow to deep
    OUT_CHANNELS: list[_Size] = Field([64, 128, 256, 256], min_length=2)  # teacher, shallow to deep
    MAX_MID_CHANNEL: int = Field(MDISTILLER_MID_CHANNEL, ge=1)
    STU_PREACT: bool = False  # the student's pre-ReLU maps instead of its post-ReLU ones


# The ReviewKD repo's CIFAR-100 settings per (teacher, student) (model/reviewkd.py, script/reviewKD.sh),
# each equal to what `pair_lists` derives for the pair; "REVIEWKD_WEIGHT" where the repo gives one.
_SAME = ([1, 8, 16, 32], [1, 8, 16, 32])
REVIEWKD_PAIRS: dict[tuple[str, str], dict] = {
    (t, s): {"IN_CHANNELS": i, "OUT_CHANNELS": o, "SHAPES": sh, "OUT_SHAPES": osh,
             **({"REVIEWKD_WEIGHT": w} if w else {})}
    for (t, s), i, o, (sh, osh), w in [
        (("resnet56", "resnet20"), [16, 32, 64, 64], [16, 32, 64, 64], _SAME, 0.6),
        (("resnet110", "resnet32"), [16, 32, 64, 64], [16, 32, 64, 64], _SAME, 1.0),
        (("resnet32x4", "resnet8x4"), [64, 128, 256, 256], [64, 128, 256, 256], _SAME, 5.0),
        (("wrn_40_2", "wrn_16_2"), [32, 64, 128, 128], [32, 64, 128, 128], _SAME, 5.0),
        (("wrn_40_2", "wrn_40_1"), [16, 32, 64, 64], [32, 64, 128, 128], _SAME, 5.0),
        (("vgg13", "vgg8"), [128, 256, 512, 512, 512], [128, 256, 512, 512, 512],
         ([1, 4, 4, 8, 16], [1, 4, 4, 8, 16]), None),
        (("resnet32x4", "ShuffleV1"), [240, 480, 960, 960], [64, 128, 256, 256], ([1, 4, 8, 16], [1, 8, 16, 32]), 5.0),
        (("wrn_40_2", "ShuffleV1"), [240, 480, 960, 960], [32, 64, 128, 128], ([1, 4, 8, 16], [1, 8, 16, 32]), 5.0),
        (("resnet32x4", "ShuffleV2"), [116, 232, 464, 1024], [64, 128, 256, 256], ([1, 4, 8, 16], [1, 8, 16, 32]), 8.0),
        (("vgg13", "MobileNetV2"), [12, 16, 48, 160, 1280], [128, 256, 512, 512, 512],
         ([1, 2, 4, 8, 16], [1, 4, 4, 8, 16]), None),
        (("ResNet50", "MobileNetV2"), [12, 16, 48, 160, 1280], [256, 512, 1024, 2048, 2048],
         ([1, 2, 4, 8, 16], [1, 4, 8, 16, 32]), None),
    ]
}


# ---- pure functions and the fusion module ---------------------------------------------------------
def hcl_loss(fstudent: Sequence[Tensor], fteacher: Sequence[Tensor]) -> Tensor | float:
    """Hierarchical context loss, summed over the pairs (zip: stops at the shorter list).

    fstudent, fteacher: lists of (N, C, H, W), equal shapes per pair. Per pair: mse at full size,
    plus mse of both adaptively average-pooled to L x L for each L in 4, 2, 1 below the student's H,
    the k-th level used weighted 2^-k; divided by 1 + the sum of the weights used. Returns a 0-d
    tensor (the float 0.0 for no pair, as MDistiller).
    """
    total: Tensor | float = 0.0
    for fs, ft in zip(fstudent, fteacher):
        h = fs.shape[2]
        loss, weight, weights = F.mse_loss(fs, ft), 1.0, 1.0
        for level in (4, 2, 1):
            if level < h:
                weight /= 2
                loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, level), F.adaptive_avg_pool2d(ft, level))
                weights += weight
        total = total + loss / weights
    return total


class ABF(nn.Module):
    """Attention-based fusion of one review level (MDistiller's ABF).

    conv1: 1x1 conv in -> mid (no bias) + BN; conv2: 3x3 conv mid -> out (pad 1, no bias) + BN; with
    `fuse`, att_conv: 1x1 conv 2*mid -> 2 (bias) + sigmoid weighing this level against the residual
    of the deeper one. conv1 and conv2 weights are kaiming-uniform with a = 1.
    """

    def __init__(self, in_channel: int, mid_channel: int, out_channel: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channel, mid_channel, kernel_size=1, bias=False),
                                   nn.BatchNorm2d(mid_channel))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channel, out_channel, kernel_size=3, stride=1, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channel))
        self.att_conv = nn.Sequential(nn.Conv2d(mid_channel * 2, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: Tensor, y: Optional[Tensor] = None, shape: Optional[int] = None,
                out_shape: Optional[int] = None) -> tuple[Tensor, Tensor]:
        """x: (N, in, h, w) this level's student map; y: (N, mid, h', w') the deeper level's residual
        (fuse only), nearest-resized to (shape, shape) = (h, w). The fused map is nearest-resized to
        (out_shape, out_shape) when its width differs. Returns (output (N, out, o, o), residual
        (N, mid, o, o)) with o = out_shape."""
        n, _, h, w = x.shape
        x = self.conv1(x)
        if self.att_conv is not None:
            y = F.interpolate(y, (shape, shape), mode="nearest")
            z = self.att_conv(torch.cat([x, y], dim=1))
            x = x * z[:, 0].view(n, 1, h, w) + y * z[:, 1].view(n, 1, h, w)
        if x.shape[-1] != out_shape:
            x = F.interpolate(x, (out_shape, out_shape), mode="nearest")
        return self.conv2(x), x


def build_abfs(in_channels: Sequence[int], out_channels: Sequence[int], mid_channel: int) -> nn.ModuleList:
    """One ABF per level, built shallow to deep (all but the deepest fuse), returned deep to shallow:
    the first takes the pooled vector."""
    n = len(in_channels)
    return nn.ModuleList([ABF(c_in, mid_channel, c_out, i < n - 1)
                          for i, (c_in, c_out) in enumerate(zip(in_channels, out_channels))][::-1])


def review(abfs: Sequence[ABF], x: Sequence[Tensor], shapes: Sequence[int], out_shapes: Sequence[int]) -> list[Tensor]:
    """Run the ABFs deep to shallow. x: the student's maps deep to shallow (x[0] the pooled vector as
    (N, D, 1, 1)); extra shallow maps beyond the ABFs are unused. Returns the outputs shallow to deep."""
    out, residual = abfs[0](x[0], out_shape=out_shapes[0])
    results = [out]
    for feat, abf, shape, out_shape in zip(x[1:], abfs[1:], shapes[1:], out_shapes[1:]):
        out, residual = abf(feat, residual, shape, out_shape)
        results.insert(0, out)
    return results


# ---- the lists a pair needs -----------------------------------------------------------------------
def pair_lists(student_shapes: dict, teacher_shapes: dict, stu_preact: bool = False,
               names: tuple[str, str] = ("student", "teacher")) -> dict[str, list[int]]:
    """IN_CHANNELS, OUT_CHANNELS, SHAPES, OUT_SHAPES for a pair, from its feature shapes.

    *_shapes: `common.feature_shapes` of each model ({"feats", "preact_feats": [(1, C, H, W)],
    "pooled_feat": (1, D)}). The teacher's levels are its preact entries 1.. plus its pooled vector;
    the student gives its deepest maps (feats, or preact with `stu_preact`) plus its pooled vector,
    as many. Raises ValueError naming the models for a pair ReviewKD cannot run.
    """
    s_name, t_name = names
    s_maps = student_shapes["preact_feats" if stu_preact else "feats"]
    t_maps = teacher_shapes["preact_feats"][1:]
    if not t_maps:
        raise ValueError(f"ReviewKD: teacher {t_name} returns no pre-activation stage features")
    if len(s_maps) < len(t_maps):
        what = "pre-activation maps (STU_PREACT)" if stu_preact else "feature maps"
        raise ValueError(f"ReviewKD: student {s_name} has {len(s_maps)} {what}, teacher {t_name} "
                         f"{len(t_maps)} stages after its stem; ReviewKD pairs one student map per teacher stage")
    s_maps = s_maps[len(s_maps) - len(t_maps):]
    for who, name, maps in (("student", s_name, s_maps), ("teacher", t_name, t_maps)):
        for shape in maps:
            if shape[2] != shape[3]:
                raise ValueError(f"ReviewKD: {who} {name} has a {shape[2]} x {shape[3]} map; ReviewKD "
                                 "(as MDistiller) resizes maps to square sizes")
    return {
        "IN_CHANNELS": [s[1] for s in s_maps] + [student_shapes["pooled_feat"][1]],
        "OUT_CHANNELS": [t[1] for t in t_maps] + [teacher_shapes["pooled_feat"][1]],
        "SHAPES": [1] + [s[2] for s in reversed(s_maps)],
        "OUT_SHAPES": [1] + [t[2] for t in reversed(t_maps)],
    }


def resolve_lists(section: ReviewKDCfg, needed: dict[str, list[int]], names: tuple[str, str]) -> dict[str, list[int]]:
    """The section's lists where they fit the pair; a list left at its default that does not fit is
    replaced by the pair's (with a notice); an explicit list that does not fit is a ConfigError."""
    defaults = ReviewKDCfg()
    out = {}
    for key in _LIST_KEYS:
        given = list(getattr(section, key))
        if given == needed[key]:
            out[key] = given
        elif given == getattr(defaults, key):
            notice(f"REVIEWKD.{key}: the default {given} does not fit teacher {names[1]} -> student "
                   f"{names[0]}; using {needed[key]}, derived from the pair's features")
            out[key] = needed[key]
        else:
            raise ConfigError(f"REVIEWKD.{key}: {given} does not fit teacher {names[1]} -> student "
                              f"{names[0]}, whose features need {needed[key]}")
    return out


# ---- distiller ------------------------------------------------------------------------------------
@DISTILLERS.register("REVIEWKD")
class ReviewKD(Distiller):
    """CE_WEIGHT * CE + REVIEWKD_WEIGHT * min(epoch / WARMUP_EPOCHS, 1) * hcl_loss(review(student), teacher)."""
    label, family = "ReviewKD", "feature"

    needs_teacher = True

    def __init__(self, student, teacher, ce_weight: float = 1.0, reviewkd_weight: float = 1.0,
                 warmup_epochs: int = 20, shapes: Sequence[int] = (1, 8, 16, 32),
                 out_shapes: Sequence[int] = (1, 8, 16, 32), in_channels: Sequence[int] = (64, 128, 256, 256),
                 out_channels: Sequence[int] = (64, 128, 256, 256), max_mid_channel: int = MDISTILLER_MID_CHANNEL,
                 stu_preact: bool = False):
        super().__init__(student, teacher)
        if not len(in_channels) == len(out_channels) == len(shapes) == len(out_shapes):
            raise ValueError(f"ReviewKD: IN_CHANNELS {list(in_channels)}, OUT_CHANNELS {list(out_channels)}, "
                             f"SHAPES {list(shapes)} and OUT_SHAPES {list(out_shapes)} must have one entry per level")
        self.ce_weight, self.reviewkd_weight, self.warmup_epochs = ce_weight, reviewkd_weight, warmup_epochs
        self.shapes, self.out_shapes, self.stu_preact = list(shapes), list(out_shapes), stu_preact
        self.abfs = build_abfs(in_channels, out_channels, min(max_mid_channel, in_channels[-1]))

    @classmethod
    def from_config(cls, cfg, student, teacher, num_classes):
        r = cfg.REVIEWKD
        names = (cfg.DISTILLER.STUDENT, cfg.DISTILLER.TEACHER)
        size = input_size_of(cfg)
        needed = pair_lists(feature_shapes(student, size), feature_shapes(teacher, size), r.STU_PREACT, names)
        lists = resolve_lists(r, needed, names)
        if r.MAX_MID_CHANNEL != MDISTILLER_MID_CHANNEL:
            warnings.warn(f"REVIEWKD.MAX_MID_CHANNEL: {r.MAX_MID_CHANNEL} is used (the ABFs' middle width is "
                          f"min({r.MAX_MID_CHANNEL}, {lists['IN_CHANNELS'][-1]})); MDistiller ignores the key "
                          f"and caps at {MDISTILLER_MID_CHANNEL}", stacklevel=2)
        return cls(student, teacher, r.CE_WEIGHT, r.REVIEWKD_WEIGHT, r.WARMUP_EPOCHS, lists["SHAPES"],
                   lists["OUT_SHAPES"], lists["IN_CHANNELS"], lists["OUT_CHANNELS"], r.MAX_MID_CHANNEL,
                   r.STU_PREACT)

    @property
    def teacher_layers(self) -> tuple[str, ...]:
        """The teacher's preact entries 1..n-1 and its pooled vector, n the number of levels."""
        return (*(f"preact_feats.{i}" for i in range(1, len(self.abfs))), "pooled_feat")

    def target_spec(self):
        return {"targets": "features", "layers": self.teacher_layers}

    def forward_train(self, images, labels, ctx):
        t = self.targets(images, ctx)  # teacher first: see Distiller.teacher_outputs
        logits, feats = self.student(images)
        maps = feats["preact_feats" if self.stu_preact else "feats"]
        x = [feats["pooled_feat"][:, :, None, None], *maps[::-1]]  # deep to shallow
        results = review(self.abfs, x, self.shapes, self.out_shapes)
        teacher = [t[layer].float() for layer in self.teacher_layers]
        teacher[-1] = teacher[-1][:, :, None, None]
        ramp = min(ctx["epoch"] / self.warmup_epochs, 1.0)
        return logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(logits, labels),
            "loss_kd": self.reviewkd_weight * ramp * hcl_loss(results, teacher),
        }
