"""DKD: Decoupled Knowledge Distillation (Zhao et al., CVPR 2022), as MDistiller computes it.

The logit baseline the CAT-KD paper compares with, shipped by the reference beside CAT-KD. The KD
loss is split into the target-class part (TCKD, a KL between the two binary distributions
(p_y, 1 - p_y)) and the non-target part (NCKD, a KL between the distributions over the other
classes), weighted separately. Pure loss first (docs/contracts.md, C2b; the method: docs/method.md, "DKD"), then the distiller.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from catkd.config import Section, config_section
from catkd.distillers.base import Distiller
from catkd.distillers.registry import DISTILLERS


@config_section("DKD")
class DKDCfg(Section):
    """DKD (Zhao et al., CVPR 2022) as MDistiller configures it (its section and defaults)."""

    CE_WEIGHT: float = Field(1.0, ge=0)
    ALPHA: float = Field(1.0, ge=0)  # weight of TCKD (target class)
    BETA: float = Field(8.0, ge=0)  # weight of NCKD (non-target classes)
    T: float = Field(4.0, gt=0)  # temperature
    WARMUP: int = Field(20, ge=1)  # epochs over which the DKD term ramps up linearly

# MDistiller removes the target class from the non-target softmax by subtracting this from its z / T.
_MASK_OFFSET = 1000.0


def _binary(p: Tensor, gt_mask: Tensor) -> Tensor:
    """(N, K) class probabilities -> (N, 2): probability of the target class and of all the others."""
    return torch.stack([(p * gt_mask).sum(1), (p * (1 - gt_mask)).sum(1)], dim=1)


def dkd_loss(logits_student: Tensor, logits_teacher: Tensor, target: Tensor,
             alpha: float, beta: float, temperature: float) -> Tensor:
    """alpha * TCKD + beta * NCKD (MDistiller's `dkd_loss`, same signature and numerics).

    logits_student, logits_teacher: (N, K); target: (N,) class indices. Each KL is summed over its
    classes, divided by N and multiplied by T^2. Returns a scalar. The teacher's logits are the
    ordinary ones (with its Linear bias), as in KD.
    """
    t = temperature
    gt_mask = F.one_hot(target, logits_student.shape[1]).to(logits_student.dtype)
    n = target.shape[0]
    p_s = _binary(F.softmax(logits_student / t, dim=1), gt_mask)
    p_t = _binary(F.softmax(logits_teacher / t, dim=1), gt_mask)
    tckd = F.kl_div(torch.log(p_s), p_t, reduction="sum") * t**2 / n
    p_t_other = F.softmax(logits_teacher / t - _MASK_OFFSET * gt_mask, dim=1)
    log_p_s_other = F.log_softmax(logits_student / t - _MASK_OFFSET * gt_mask, dim=1)
    nckd = F.kl_div(log_p_s_other, p_t_other, reduction="sum") * t**2 / n
    return alpha * tckd + beta * nckd


@DISTILLERS.register("DKD")
class DKD(Distiller):
    """CE_WEIGHT * CE + min(epoch / WARMUP, 1) * dkd_loss (epochs counted from 1)."""
    label, family = "DKD", "logit"

    needs_teacher = True

    def __init__(self, student, teacher, ce_weight: float, alpha: float, beta: float,
                 temperature: float, warmup: int):
        super().__init__(student, teacher)
        self.ce_weight, self.alpha, self.beta = ce_weight, alpha, beta
        self.temperature, self.warmup = temperature, warmup

    @classmethod
    def from_config(cls, cfg, student, teacher, num_classes):
        d = cfg.DKD
        return cls(student, teacher, d.CE_WEIGHT, d.ALPHA, d.BETA, d.T, d.WARMUP)

    def target_spec(self):
        return {"targets": "logits"}  # the same targets as KD: the two share a cache

    def forward_train(self, images, labels, ctx):
        t = self.targets(images, ctx)  # teacher first: see Distiller.teacher_outputs
        logits, _ = self.student(images)
        ramp = min(ctx["epoch"] / self.warmup, 1.0)
        return logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(logits, labels),
            "loss_dkd": ramp * dkd_loss(logits, t["logits"].float(), labels, self.alpha, self.beta,
                                        self.temperature),
        }
