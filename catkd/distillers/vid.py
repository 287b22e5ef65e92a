"""VID: variational information distillation (Ahn et al., CVPR 2019), as MDistiller computes it.

For each stage (entries 1.. of feats["feats"], paired by list position) a small regressor predicts
the teacher's map from the student's as the mean of a Gaussian with a per-channel variance; the loss
is the Gaussian's negative log-likelihood of the teacher's map (constant dropped). Regressors and
variances are extra modules: they train, checkpoint and count with the distiller. Channel counts are
fixed at construction by probing both models once with a random input of INPUT_SIZE.

MDistiller keeps the variances in a plain list, so they stay at INIT_PRED_VAR; the paper and
RepDistiller learn them. LEARN_VARIANCE chooses; a fixed variance is a buffer, checkpointed too.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt, model_validator
from torch import Tensor, nn

from catkd.config import ConfigError, Section, config_section
from catkd.distillers.base import Distiller
from catkd.distillers.common import get_feat_shapes
from catkd.distillers.registry import DISTILLERS


class VIDLossCfg(Section):
    CE_WEIGHT: float = Field(1.0, ge=0)
    FEAT_WEIGHT: float = Field(1.0, ge=0)


@config_section("VID")
class VIDCfg(Section):
    """MDistiller's VID section and defaults, plus LEARN_VARIANCE and PROBE_TRAIN_MODE (ours)."""

    LOSS: VIDLossCfg = VIDLossCfg()
    EPS: float = Field(1e-5, gt=0)  # floor added to the softplus variance
    INIT_PRED_VAR: float = Field(5.0, gt=0)  # initial variance of every channel
    INPUT_SIZE: tuple[PositiveInt, PositiveInt] = (32, 32)  # (H, W) of the construction probe
    # True: the variances train with the regressors (the paper, RepDistiller); False: fixed at
    # INIT_PRED_VAR as in MDistiller.
    LEARN_VARIANCE: bool = True
    # True: probe with both models in train mode as MDistiller does (moves their BatchNorm running
    # statistics one step towards those of random noise); False: eval mode.
    PROBE_TRAIN_MODE: bool = False

    @model_validator(mode="after")
    def _variance_above_eps(self) -> "VIDCfg":
        if self.INIT_PRED_VAR <= self.EPS:
            raise ValueError(f"INIT_PRED_VAR ({self.INIT_PRED_VAR}) must exceed EPS ({self.EPS}): "
                             "the variance is softplus(log_scale) + EPS")
        return self


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias (MDistiller's helper)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, padding=0, bias=False, stride=stride)


def vid_regressor(s_channels: int, t_channels: int) -> nn.Sequential:
    """C_s -> C_t mean predictor: 1x1 conv, ReLU, 1x1 conv, ReLU, 1x1 conv (no biases, default init)."""
    return nn.Sequential(conv1x1(s_channels, t_channels), nn.ReLU(), conv1x1(t_channels, t_channels), nn.ReLU(),
                         conv1x1(t_channels, t_channels))


def init_log_scale(init_pred_var: float, eps: float) -> float:
    """The inverse softplus of (init_pred_var - eps): softplus(it) + eps == init_pred_var."""
    return math.log(math.expm1(init_pred_var - eps))


def _square_or_equal(f_s_hw: Sequence[int], f_t_hw: Sequence[int]) -> bool:
    """MDistiller pools the larger map to (H, H) of the smaller: right only for square maps."""
    return tuple(f_s_hw) == tuple(f_t_hw) or all(hw[0] == hw[1] for hw in (f_s_hw, f_t_hw))


def vid_loss(regressor: nn.Module, log_scale: Tensor, f_s: Tensor, f_t: Tensor, eps: float = 1e-5) -> Tensor:
    """Mean over N, C_t, H, W of 0.5 * ((mu - f_t)^2 / var + log var), mu = regressor(f_s),
    var = softplus(log_scale) + eps per channel.

    regressor: module mapping (N, C_s, H, W) -> (N, C_t, H, W); log_scale: (C_t,); f_s: (N, C_s, H_s, H_s);
    f_t: (N, C_t, H_t, H_t). When sizes differ the larger map is average-pooled to the smaller before
    the regressor (square maps only: other unequal sizes raise ValueError). Computed in float32.
    Returns a 0-d tensor.
    """
    s_hw, t_hw = f_s.shape[2:], f_t.shape[2:]
    if not _square_or_equal(s_hw, t_hw):
        raise ValueError(f"VID pools square maps only: student map {tuple(s_hw)}, teacher map {tuple(t_hw)}")
    s_h, t_h = s_hw[0], t_hw[0]
    if s_h > t_h:
        f_s = F.adaptive_avg_pool2d(f_s, (t_h, t_h))
    elif s_h < t_h:
        f_t = F.adaptive_avg_pool2d(f_t, (s_h, s_h))
    pred_mean = regressor(f_s).float()
    pred_var = (F.softplus(log_scale.float()) + eps).view(1, -1, 1, 1)
    return torch.mean(0.5 * ((pred_mean - f_t.float()) ** 2 / pred_var + torch.log(pred_var)))


class BufferList(nn.Module):
    """Fixed tensors by index, saved as buffers under the keys a ParameterList would use ("0", "1", ...)."""

    def __init__(self, tensors: Sequence[Tensor]):
        super().__init__()
        for i, t in enumerate(tensors):
            self.register_buffer(str(i), t)

    def __getitem__(self, i: int) -> Tensor:
        return getattr(self, str(i))

    def __len__(self) -> int:
        return len(self._buffers)

    def __iter__(self):
        return iter(self._buffers.values())


def paired_channels(student, teacher, input_size: tuple[int, int], train_mode: bool,
                    names: tuple[str, str]) -> tuple[list[int], list[int], int]:
    """Channels of the paired stages (feats[1:] by position, zip) and the teacher's number of feature
    entries, from one probe of both models.

    Warns when the lists differ in length; raises ValueError, naming the models and the entry, when
    there is no pair or when a pair of unequal sizes is not square (MDistiller's pooling would distort it).
    """
    s_shapes, t_shapes = get_feat_shapes(student, teacher, input_size, train_mode=train_mode)
    s_name, t_name = names
    if min(len(s_shapes), len(t_shapes)) < 2:
        raise ValueError(f"VID: student {s_name} has {len(s_shapes)} feature entries and teacher {t_name} "
                         f"{len(t_shapes)}; VID needs at least one stage after the first in both")
    if len(s_shapes) != len(t_shapes):
        warnings.warn(f"VID: student {s_name} has {len(s_shapes)} feature entries and teacher {t_name} "
                      f"{len(t_shapes)}; stages are paired by position from the first (as MDistiller), "
                      f"{min(len(s_shapes), len(t_shapes)) - 1} pairs", stacklevel=3)
    for i, (s, t) in enumerate(zip(s_shapes[1:], t_shapes[1:]), start=1):
        if not _square_or_equal(s[2:], t[2:]):
            raise ValueError(
                f"VID: feature entry {i}: student {s_name} map {tuple(s[1:])} vs teacher {t_name} map "
                f"{tuple(t[1:])} at {input_size[0]} x {input_size[1]} inputs; VID (as MDistiller) pools "
                "maps of unequal size to a square size and needs square maps")
    return [s[1] for s in s_shapes[1:]], [t[1] for t in t_shapes[1:]], len(t_shapes)


@DISTILLERS.register("VID")
class VID(Distiller):
    """CE_WEIGHT * CE + FEAT_WEIGHT * sum over paired stages of vid_loss."""
    label, family = "VID", "feature"

    needs_teacher = True

    def __init__(self, student, teacher, ce_weight: float = 1.0, feat_weight: float = 1.0, eps: float = 1e-5,
                 init_pred_var: float = 5.0, input_size: tuple[int, int] = (32, 32), learn_variance: bool = True,
                 probe_train_mode: bool = False, names: tuple[str, str] | None = None):
        super().__init__(student, teacher)
        self.ce_weight, self.feat_weight, self.eps = ce_weight, feat_weight, eps
        names = names or (type(student).__name__, type(teacher).__name__)
        s_ch, t_ch, t_entries = paired_channels(student, teacher, tuple(input_size), probe_train_mode, names)
        pairs = list(zip(s_ch, t_ch))
        self.regressors = nn.ModuleList(vid_regressor(s, t) for s, t in pairs)
        inits = [torch.full((t,), init_log_scale(init_pred_var, eps)) for _, t in pairs]
        self.log_scales = nn.ParameterList(inits) if learn_variance else BufferList(inits)
        # every teacher stage (not only the paired ones), so the targets do not depend on the student
        self.layers = tuple(f"feats.{i}" for i in range(1, t_entries))

    @classmethod
    def from_config(cls, cfg, student, teacher, num_classes):
        v = cfg.VID
        # a ValueError here (a pair it cannot run) reaches the user as a ConfigError: build_distiller
        return cls(student, teacher, v.LOSS.CE_WEIGHT, v.LOSS.FEAT_WEIGHT, v.EPS, v.INIT_PRED_VAR, v.INPUT_SIZE,
                   v.LEARN_VARIANCE, v.PROBE_TRAIN_MODE, (cfg.DISTILLER.STUDENT, cfg.DISTILLER.TEACHER))

    def target_spec(self):
        return {"targets": "features", "layers": self.layers}

    def forward_train(self, images, labels, ctx):
        t = self.targets(images, ctx)  # teacher first: see Distiller.teacher_outputs
        logits, feats = self.student(images)
        pairs = zip(self.regressors, self.log_scales, feats["feats"][1:], (t[k] for k in self.layers))
        loss = sum(vid_loss(r, ls, f_s, f_t, self.eps) for r, ls, f_s, f_t in pairs)
        return logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(logits, labels),
            "loss_kd": self.feat_weight * loss,
        }
