"""KD (Hinton et al. 2015), as MDistiller computes it."""
from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from catkd.config import Section, config_section
from catkd.distillers.base import Distiller
from catkd.distillers.registry import DISTILLERS


class KDLossCfg(Section):
    CE_WEIGHT: float = Field(0.1, ge=0)
    KD_WEIGHT: float = Field(0.9, ge=0)


@config_section("KD")
class KDCfg(Section):
    """MDistiller's KD section and defaults."""

    TEMPERATURE: float = Field(4.0, gt=0)
    LOSS: KDLossCfg = KDLossCfg()


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """KL(softmax(t/T) || softmax(s/T)) summed over classes, mean over the batch, times T^2.

    student_logits, teacher_logits: (N, K). Returns a scalar.
    """
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="none").sum(1).mean() * temperature**2


@DISTILLERS.register("KD")
class KD(Distiller):
    label, family = "KD", "logit"
    needs_teacher = True

    def __init__(self, student, teacher, temperature: float, ce_weight: float, kd_weight: float):
        super().__init__(student, teacher)
        self.temperature, self.ce_weight, self.kd_weight = temperature, ce_weight, kd_weight

    @classmethod
    def from_config(cls, cfg, student, teacher, num_classes):
        k = cfg.KD
        return cls(student, teacher, k.TEMPERATURE, k.LOSS.CE_WEIGHT, k.LOSS.KD_WEIGHT)

    def target_spec(self):
        return {"targets": "logits"}

    def forward_train(self, images, labels, ctx):
        t = self.targets(images, ctx)  # teacher first: see Distiller.teacher_outputs
        logits, _ = self.student(images)
        return logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(logits, labels),
            "loss_kd": self.kd_weight * kd_loss(logits, t["logits"].float(), self.temperature),
        }
