"""RKD: relational knowledge distillation (Park et al., CVPR 2019), as MDistiller computes it.

The student's pooled features should relate to each other as the teacher's do: pairwise distances
(each matrix divided by its mean positive entry) and the angles of every triple of samples, both
compared with a smooth-L1 loss. Both relations are taken within the batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from catkd.config import Section, config_section
from catkd.distillers.base import Distiller
from catkd.distillers.registry import DISTILLERS


class RKDLossCfg(Section):
    CE_WEIGHT: float = Field(1.0, ge=0)
    FEAT_WEIGHT: float = Field(1.0, ge=0)


class RKDPdistCfg(Section):
    EPSILON: float = Field(1e-12, ge=0)
    SQUARED: bool = False


@config_section("RKD")
class RKDCfg(Section):
    """MDistiller's RKD section and defaults."""

    DISTANCE_WEIGHT: float = Field(25, ge=0)
    ANGLE_WEIGHT: float = Field(50, ge=0)
    LOSS: RKDLossCfg = RKDLossCfg()
    PDIST: RKDPdistCfg = RKDPdistCfg()


def _pdist(e: Tensor, squared: bool, eps: float) -> Tensor:
    """(N, D) -> (N, N) Euclidean distances from |e_i|^2 + |e_j|^2 - 2 e_i.e_j clamped at eps,
    square-rooted unless `squared`; the diagonal set to 0."""
    sq = e.pow(2).sum(1)
    res = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps)
    if not squared:
        res = res.sqrt()
    return res.masked_fill(torch.eye(len(e), dtype=torch.bool, device=res.device), 0.0)


def _angles(e: Tensor) -> Tensor:
    """(N, D) -> (N^3,): entry (i, j, k) is the cosine of the angle at e_i between e_j - e_i and
    e_k - e_i (difference vectors L2-normalised with eps 1e-12, so a zero difference gives 0)."""
    d = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # d[i, j] = unit(e_j - e_i)
    return torch.bmm(d, d.transpose(1, 2)).reshape(-1)


def rkd_loss(f_s: Tensor, f_t: Tensor, squared: bool = False, eps: float = 1e-12,
             distance_weight: float = 25, angle_weight: float = 50) -> Tensor:
    """distance_weight * smooth-L1(d_s, d_t) + angle_weight * smooth-L1(angle_s, angle_t).

    f_s: (N, ...), f_t: (N, ...), flattened to (N, D_s), (N, D_t). d = `_pdist` divided by the mean
    of its positive entries; the teacher's side is computed without gradient. Smooth-L1 with beta 1,
    means over N^2 and N^3 entries. Returns a 0-d tensor.
    """
    stu, tea = f_s.reshape(f_s.shape[0], -1), f_t.reshape(f_t.shape[0], -1)
    with torch.no_grad():
        t_d = _pdist(tea, squared, eps)
        t_d = t_d / t_d[t_d > 0].mean()
        t_angle = _angles(tea)
    d = _pdist(stu, squared, eps)
    d = d / d[d > 0].mean()
    loss_d = F.smooth_l1_loss(d, t_d)
    loss_a = F.smooth_l1_loss(_angles(stu), t_angle)
    return distance_weight * loss_d + angle_weight * loss_a


@DISTILLERS.register("RKD")
class RKD(Distiller):
    """CE_WEIGHT * CE + FEAT_WEIGHT * rkd_loss(student pooled_feat, teacher pooled_feat, ...)."""
    label, family = "RKD", "feature"

    needs_teacher = True

    def __init__(self, student, teacher, distance_weight: float = 25, angle_weight: float = 50,
                 ce_weight: float = 1.0, feat_weight: float = 1.0, eps: float = 1e-12, squared: bool = False):
        super().__init__(student, teacher)
        self.distance_weight, self.angle_weight = distance_weight, angle_weight
        self.ce_weight, self.feat_weight, self.eps, self.squared = ce_weight, feat_weight, eps, squared

    @classmethod
    def from_config(cls, cfg, student, teacher, num_classes):
        r = cfg.RKD
        return cls(student, teacher, r.DISTANCE_WEIGHT, r.ANGLE_WEIGHT, r.LOSS.CE_WEIGHT, r.LOSS.FEAT_WEIGHT,
                   r.PDIST.EPSILON, r.PDIST.SQUARED)

    def target_spec(self):
        return {"targets": "features", "layers": ("pooled_feat",)}  # the same as PKT's: they share a cache

    def forward_train(self, images, labels, ctx):
        t = self.targets(images, ctx)  # teacher first: see Distiller.teacher_outputs
        logits, feats = self.student(images)
        with torch.autocast(images.device.type, enabled=False):  # float32 loss under bf16 autocast
            loss = rkd_loss(feats["pooled_feat"].float(), t["pooled_feat"].float(), self.squared, self.eps,
                            self.distance_weight, self.angle_weight)
        return logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(logits, labels),
            "loss_kd": self.feat_weight * loss,
        }
