"""AT: attention transfer (Zagoruyko & Komodakis, ICLR 2017), as MDistiller computes it.

Each stage's map is reduced to a spatial attention map (mean over channels of f^P, L2-normalised
over the H*W positions) and the student's is pulled towards the teacher's. Stages are the entries
1.. of feats["feats"] (the stem, entry 0, is skipped), paired by list position. Pure loss first,
then the stage pairing shared with NST, then the distiller.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from catkd.config import Section, config_section
from catkd.distillers.base import Distiller
from catkd.distillers.common import get_feat_shapes, input_size_of
from catkd.distillers.registry import DISTILLERS


class ATLossCfg(Section):
    CE_WEIGHT: float = Field(1.0, ge=0)
    FEAT_WEIGHT: float = Field(1000.0, ge=0)


@config_section("AT")
class ATCfg(Section):
    """MDistiller's AT section and defaults."""

    P: float = Field(2, gt=0)  # power of the activations before the channel mean (no abs, as MDistiller)
    LOSS: ATLossCfg = ATLossCfg()


def pool_to_smaller(f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
    """MDistiller's square rule (AT, NST): average-pool the larger of the two maps to (H, H) of the
    smaller. f_s: (N, C_s, H_s, H_s), f_t: (N, C_t, H_t, H_t). The rule reads only H, so a
    non-square map would be silently distorted: it is rejected instead."""
    for who, f in (("student", f_s), ("teacher", f_t)):
        if f.shape[2] != f.shape[3]:
            raise ValueError(f"{who} feature map is {f.shape[2]} x {f.shape[3]}: AT and NST (as MDistiller) "
                             "compare square maps only")
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        f_s = F.adaptive_avg_pool2d(f_s, (t_h, t_h))
    elif s_h < t_h:
        f_t = F.adaptive_avg_pool2d(f_t, (s_h, s_h))
    return f_s, f_t


def _attention(feat: Tensor, p: float) -> Tensor:
    """(N, C, H, W) -> (N, H*W): mean over channels of feat^p, each row L2-normalised (eps 1e-12)."""
    return F.normalize(feat.pow(p).mean(1).reshape(feat.size(0), -1))


def single_stage_at_loss(f_s: Tensor, f_t: Tensor, p: float) -> Tensor:
    """Mean over N x H*W of (a_s - a_t)^2, a = the attention map of one stage.

    f_s: (N, C_s, H_s, H_s), f_t: (N, C_t, H_t, H_t); channels and sizes may differ (the larger map
    is pooled to the smaller). Returns a 0-d tensor.
    """
    f_s, f_t = pool_to_smaller(f_s, f_t)
    return (_attention(f_s, p) - _attention(f_t, p)).pow(2).mean()


def at_loss(g_s: Sequence[Tensor], g_t: Sequence[Tensor], p: float) -> Tensor:
    """Sum of `single_stage_at_loss` over the stages paired by position (zip: stops at the shorter
    list). g_s, g_t: lists of (N, C, H, W). Returns a 0-d tensor (the integer 0 for no pair, as
    MDistiller)."""
    return sum(single_stage_at_loss(f_s, f_t, p) for f_s, f_t in zip(g_s, g_t))


def paired_stage_layers(method: str, student: nn.Module, teacher: nn.Module, input_size: tuple[int, int],
                        names: tuple[str, str] | None = None) -> tuple[str, ...]:
    """The teacher target layers of a method pairing feats[1:] by position (AT, NST):
    "feats.1" .. "feats.{n-1}" of the n teacher entries (all of them, so the targets do not depend
    on the student).

    Probes both models once (eval mode). Warns when the two lists differ in length (MDistiller pairs
    from the front, so stages of different depth meet); raises ValueError, naming the models and the
    stage, when a paired map is not square or when there is no pair at all.
    """
    s_shapes, t_shapes = get_feat_shapes(student, teacher, input_size)
    s_name, t_name = names or (type(student).__name__, type(teacher).__name__)  # config names, else classes
    if min(len(s_shapes), len(t_shapes)) < 2:
        raise ValueError(f"{method}: student {s_name} has {len(s_shapes)} feature entries and teacher "
                         f"{t_name} {len(t_shapes)}; {method} needs at least one stage after the first in both")
    if len(s_shapes) != len(t_shapes):
        warnings.warn(
            f"{method}: student {s_name} has {len(s_shapes)} feature entries and teacher {t_name} "
            f"{len(t_shapes)}; stages are paired by position from the first (as MDistiller), "
            f"{min(len(s_shapes), len(t_shapes)) - 1} pairs, the deeper ones of the longer list unused",
            stacklevel=3,
        )
    for i, (s, t) in enumerate(zip(s_shapes[1:], t_shapes[1:]), start=1):
        for who, name, shape in (("student", s_name, s), ("teacher", t_name, t)):
            if shape[2] != shape[3]:
                raise ValueError(
                    f"{method}: {who} {name} feature entry {i} is {shape[2]} x {shape[3]} for "
                    f"{input_size[0]} x {input_size[1]} inputs; {method} (as MDistiller) pools maps "
                    "to a square size and needs square maps")
    return tuple(f"feats.{i}" for i in range(1, len(t_shapes)))



@DISTILLERS.register("AT")
class AT(Distiller):
    """CE_WEIGHT * CE + FEAT_WEIGHT * at_loss(student feats[1:], teacher feats[1:], P)."""
    label, family = "AT", "attention/CAM"

    needs_teacher = True

    def __init__(self, student, teacher, p: float = 2, ce_weight: float = 1.0, feat_weight: float = 1000.0,
                 input_size: tuple[int, int] = (32, 32), names: tuple[str, str] | None = None):
        super().__init__(student, teacher)
        self.p, self.ce_weight, self.feat_weight = p, ce_weight, feat_weight
        self.layers = paired_stage_layers("AT", student, teacher, input_size, names)

    @classmethod
    def from_config(cls, cfg, student, teacher, num_classes):
        a = cfg.AT
        return cls(student, teacher, a.P, a.LOSS.CE_WEIGHT, a.LOSS.FEAT_WEIGHT, input_size_of(cfg),
                   (cfg.DISTILLER.STUDENT, cfg.DISTILLER.TEACHER))

    def target_spec(self):
        return {"targets": "features", "layers": self.layers}  # the same as NST's: they share a cache

    def forward_train(self, images, labels, ctx):
        t = self.targets(images, ctx)  # teacher first: see Distiller.teacher_outputs
        logits, feats = self.student(images)
        with torch.autocast(images.device.type, enabled=False):  # float32 loss under bf16 autocast
            g_s = [f.float() for f in feats["feats"][1:]]
            loss = at_loss(g_s, [t[k].float() for k in self.layers], self.p)
        return logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(logits, labels),
            "loss_kd": self.feat_weight * loss,
        }
