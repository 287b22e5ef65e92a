"""OFD: "A Comprehensive Overhaul of Feature Distillation" (Heo et al., ICCV 2019), as MDistiller computes it.

The student's pre-ReLU stage outputs, through a learnt 1x1 conv + BN connector per stage, are pulled
towards the teacher's pre-ReLU outputs with a partial L2 loss: where the teacher is negative (the
ReLU would zero it) only a student above the teacher's *margin* is penalised. The margin of a
channel is the expected value of the teacher's negative responses, from the BN that precedes the
ReLU (its gamma, beta). Stages are the pre-activation entries 1.. of both models, cut to the
deepest m where the lists differ; stage i of m (0 = shallowest) is weighted 2^-(m-1-i).

As MDistiller, the teacher runs in train mode (BN with batch statistics), so its outputs depend on
the batch: they are never cached (OFD.TEACHER_TRAIN_MODE: False keeps it in eval mode instead).
Pure losses first, then the distiller.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from catkd.config import Section, config_section, notice
from catkd.distillers.base import Distiller
from catkd.distillers.common import feature_shapes, input_size_of
from catkd.distillers.registry import DISTILLERS


class OFDLossCfg(Section):
    CE_WEIGHT: float = Field(1.0, ge=0)
    FEAT_WEIGHT: float = Field(0.001, ge=0)


class OFDConnectorCfg(Section):
    KERNEL_SIZE: int = Field(1, ge=1)

    @field_validator("KERNEL_SIZE")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:  # padding (k - 1) // 2 keeps the size only for odd k
            raise ValueError("must be odd (the connector keeps the student's spatial size)")
        return v


@config_section("OFD")
class OFDCfg(Section):
    """MDistiller's OFD section and defaults."""

    LOSS: OFDLossCfg = OFDLossCfg()
    CONNECTOR: OFDConnectorCfg = OFDConnectorCfg()
    # ours: MDistiller (and the OFD authors' code) run the teacher in train mode; False keeps it in
    # eval mode (running statistics, outputs a function of the image: the teacher cache can serve them)
    TEACHER_TRAIN_MODE: bool = True


# ---- pure functions -------------------------------------------------------------------------------
def feat_loss(source: Tensor, target: Tensor, margin: Tensor) -> Tensor:
    """OFD's partial L2 distance of one stage, summed over C x H x W and averaged over the batch.

    source: (N, C, H, W) the connected student map; target: (N, C, H, W) the teacher's pre-ReLU map
    (same shape); margin: (1, C, 1, 1). Element-wise, with s, t, M:
        (s - M)^2  where s > M and t <= M          (teacher "off": only a student above M costs)
        (s - t)^2  where s > t and M < t <= 0      (teacher negative but above its margin)
        (s - t)^2  where t > 0                     (teacher "on": plain L2)
    Returns a 0-d tensor.
    """
    margin = margin.to(source)
    off = (source > margin) & (target <= margin)
    between = (source > target) & (target > margin) & (target <= 0)
    on = target > 0
    loss = (source - margin).pow(2) * off + (source - target).pow(2) * (between | on)  # disjoint masks
    return loss.mean(dim=0).sum()


def ofd_loss(connected_s: Sequence[Tensor], preact_t: Sequence[Tensor], margins: Sequence[Tensor]) -> Tensor:
    """Sum over the m stages of feat_loss / 2^(m-1-i), i = 0 the shallowest.

    connected_s: m tensors (N, C_i, H_i, W_i), the student maps after their connectors; preact_t:
    m teacher pre-ReLU maps (N, C_i, H'_i, W'_i), adaptively average-pooled to (H_i, W_i) first;
    margins: m tensors (1, C_i, 1, 1). Returns a 0-d tensor.
    """
    m = len(connected_s)
    if not m == len(preact_t) == len(margins):
        raise ValueError(f"ofd_loss: {m} student maps, {len(preact_t)} teacher maps, {len(margins)} margins")
    total = connected_s[0].new_zeros(())
    for i, (s, t, margin) in enumerate(zip(connected_s, preact_t, margins)):
        t = t.detach()
        if t.shape[-2:] != s.shape[-2:]:  # pooling to its own size is the identity: skipped (same values)
            t = F.adaptive_avg_pool2d(t, s.shape[-2:])
        total = total + feat_loss(s, t, margin) / 2 ** (m - 1 - i)
    return total


def bn_margin(bn_weight: Tensor, bn_bias: Tensor) -> Tensor:
    """Per-channel margin of the responses of BN(gamma, beta) before a ReLU, shape (1, C, 1, 1).

    bn_weight (gamma), bn_bias (beta): (C,). With s = |gamma|, m = beta, a channel's response is
    modelled as N(m, s^2); the margin is the mean of its negative part, m - s * pdf(m/s) / cdf(-m/s),
    where that part has probability cdf(-m/s) > 0.001, else -3 s. Computed in float64, returned as
    float32 (MDistiller computes it in Python floats). A zero gamma (a point mass at m) gives
    min(m, 0), the limit of both branches.
    """
    s = bn_weight.detach().double().abs()
    m = bn_bias.detach().double()
    safe_s = torch.where(s > 0, s, torch.ones_like(s))
    z = m / safe_s
    p_neg = torch.special.ndtr(-z)
    pdf = torch.exp(-z.pow(2) / 2) / math.sqrt(2 * math.pi)
    truncated_mean = m - safe_s * pdf / torch.where(p_neg > 0, p_neg, torch.ones_like(p_neg))
    margin = torch.where(p_neg > 0.001, truncated_mean, -3 * s)
    margin = torch.where(s > 0, margin, m.clamp(max=0))
    return margin.float().view(1, -1, 1, 1)


def connector(s_channels: int, t_channels: int, kernel_size: int = 1) -> nn.Sequential:
    """MDistiller's OFD connector: Conv2d(C_s -> C_t, k, stride 1, pad (k-1)/2, no bias), weight
    ~ N(0, sqrt(2 / (k * k * C_t))), then BatchNorm2d(C_t) with weight 1, bias 0."""
    conv = nn.Conv2d(s_channels, t_channels, kernel_size, stride=1, padding=(kernel_size - 1) // 2, bias=False)
    conv.weight.data.normal_(0, math.sqrt(2.0 / (kernel_size * kernel_size * t_channels)))
    bn = nn.BatchNorm2d(t_channels)
    bn.weight.data.fill_(1)
    bn.bias.data.zero_()
    return nn.Sequential(conv, bn)



# ---- distiller ------------------------------------------------------------------------------------
@DISTILLERS.register("OFD")
class OFD(Distiller):
    """CE_WEIGHT * CE + FEAT_WEIGHT * ofd_loss(connectors(student preact), teacher preact, margins)."""
    label, family = "OFD", "feature"

    needs_teacher = True
    cacheable = False  # the teacher runs in train mode: its outputs depend on the batch

    def __init__(self, student, teacher, ce_weight: float = 1.0, feat_weight: float = 0.001,
                 kernel_size: int = 1, input_size: tuple[int, int] = (32, 32),
                 names: tuple[str, str] | None = None, teacher_train_mode: bool = True):
        super().__init__(student, teacher)
        self.teacher_train_mode = teacher_train_mode
        if not teacher_train_mode:
            self.cacheable = True
        self.ce_weight, self.feat_weight = ce_weight, feat_weight
        plan = stage_plan(student, teacher, input_size, names)
        self.student_layers: tuple[int, ...] = plan["student_layers"]
        self.teacher_layers: tuple[int, ...] = plan["teacher_layers"]
        self.connectors = nn.ModuleList(
            connector(cs, ct, kernel_size) for cs, ct in zip(plan["student_channels"], plan["teacher_channels"]))
        # buffers: saved with the checkpoint and moved with the distiller
        for i, bn in enumerate(plan["bns"]):
            self.register_buffer(f"margin_{i}", bn_margin(bn.weight, bn.bias))
        self.train(self.training)  # the teacher in train mode from the start, as MDistiller

    @classmethod
    def from_config(cls, cfg, student, teacher, num_classes):
        o = cfg.OFD
        return cls(student, teacher, o.LOSS.CE_WEIGHT, o.LOSS.FEAT_WEIGHT, o.CONNECTOR.KERNEL_SIZE,
                   input_size_of(cfg), (cfg.DISTILLER.STUDENT, cfg.DISTILLER.TEACHER), o.TEACHER_TRAIN_MODE)

    @property
    def margins(self) -> list[Tensor]:
        return [getattr(self, f"margin_{i}") for i in range(len(self.connectors))]

    def train(self, mode: bool = True) -> "OFD":
        # MDistiller's OFD: every child follows `mode`, the teacher included (BN with batch statistics)
        if self.teacher_train_mode:
            nn.Module.train(self, mode)
            return self
        return super().train(mode)

    def target_spec(self):
        return {"targets": "features", "layers": tuple(f"preact_feats.{i}" for i in self.teacher_layers)}

    def forward_train(self, images, labels, ctx):
        t = self.targets(images, ctx)  # teacher first: see Distiller.teacher_outputs
        logits, feats = self.student(images)
        connected = [conn(feats["preact_feats"][i]) for conn, i in zip(self.connectors, self.student_layers)]
        preact_t = [t[f"preact_feats.{i}"].float() for i in self.teacher_layers]
        return logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(logits, labels),
            "loss_kd": self.feat_weight * ofd_loss(connected, preact_t, self.margins),
        }


def stage_plan(student: nn.Module, teacher: nn.Module, input_size: tuple[int, int],
               names: tuple[str, str] | None = None) -> dict:
    """Which pre-activation entries OFD pairs, their channels and the teacher BNs of the margins.

    The stages are entries 1.. of both preact lists and of the teacher's get_bn_before_relu(), each
    cut to its deepest m entries, m the shortest of the three (MDistiller cuts the features and the
    stage channels but indexes the margins from the start, which fails when the BN list is longer,
    e.g. for a CIFAR ResNet50 teacher). Channels are the probed maps' (equal to MDistiller's
    get_stage_channels()[1:] where that list is right; a notice where it is not). Raises ValueError,
    naming the models, for a pair OFD cannot run.
    """
    s_name, t_name = names or (type(student).__name__, type(teacher).__name__)
    s_pre = feature_shapes(student, input_size)["preact_feats"]
    t_pre = feature_shapes(teacher, input_size)["preact_feats"]
    for who, name, pre in (("student", s_name, s_pre), ("teacher", t_name, t_pre)):
        if len(pre) < 2:
            raise ValueError(f"OFD: {who} {name} returns no pre-activation stage features "
                             "(feats['preact_feats'] entries 1..); OFD cannot distil this pair")
    try:
        bns = list(teacher.get_bn_before_relu())
    except (AttributeError, NotImplementedError) as e:
        raise ValueError(f"OFD: teacher {t_name} does not name the BNs before its ReLUs "
                         f"(get_bn_before_relu: {e}); OFD needs them for its margins") from None
    m = min(len(s_pre) - 1, len(t_pre) - 1, len(bns))
    if m < 1:
        raise ValueError(f"OFD: teacher {t_name} names no BN before a ReLU; OFD needs one per stage")
    s_layers = tuple(range(len(s_pre) - m, len(s_pre)))
    t_layers = tuple(range(len(t_pre) - m, len(t_pre)))
    bns = bns[-m:]
    s_ch = [s_pre[i][1] for i in s_layers]
    t_ch = [t_pre[i][1] for i in t_layers]
    for i, (bn, c) in enumerate(zip(bns, t_ch)):
        if bn.num_features != c:
            raise ValueError(f"OFD: teacher {t_name} stage {t_layers[i]} has {c} channels but its BN before "
                             f"the ReLU has {bn.num_features}; the margins do not fit the features")
    for who, name, model, ch in (("student", s_name, student, s_ch), ("teacher", t_name, teacher, t_ch)):
        try:
            declared = list(model.get_stage_channels())[-m:]
        except (AttributeError, NotImplementedError):
            declared = None
        if declared != ch:
            notice(f"OFD: {who} {name} declares stage channels {declared} (get_stage_channels), its "
                   f"features have {ch}; the connectors use the features' channels")
    return {"student_layers": s_layers, "teacher_layers": t_layers,
            "student_channels": s_ch, "teacher_channels": t_ch, "bns": bns}
