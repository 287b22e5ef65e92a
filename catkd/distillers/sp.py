"""SP: similarity-preserving distillation (Tung & Mori, ICCV 2019), as MDistiller computes it.

The batch's last-stage maps define a sample-by-sample similarity matrix (Gram matrix, rows
L2-normalised); the student's is pulled towards the teacher's. The loss divides by N^2 and compares
samples within the batch, so it depends on the batch size; nothing rescales it.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from catkd.config import Section, config_section
from catkd.distillers.common import input_size_of
from catkd.distillers.base import Distiller
from catkd.distillers.common import stage_count
from catkd.distillers.registry import DISTILLERS


class SPLossCfg(Section):
    CE_WEIGHT: float = Field(1.0, ge=0)
    FEAT_WEIGHT: float = Field(3000.0, ge=0)


@config_section("SP")
class SPCfg(Section):
    """MDistiller's SP section and defaults."""

    LOSS: SPLossCfg = SPLossCfg()


def similarity_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """sum over the N x N entries of (G_t - G_s)^2, divided by N^2; G = f f^T of the flattened
    features with each row L2-normalised (eps 1e-12).

    f_s: (N, ...), f_t: (N, ...) (shapes may differ beyond N). Returns a 0-d tensor; MDistiller's
    has shape (1,) with the same value.
    """
    n = f_s.shape[0]
    f_s, f_t = f_s.reshape(n, -1), f_t.reshape(n, -1)
    g_s = F.normalize(f_s @ f_s.t())
    g_t = F.normalize(f_t @ f_t.t())
    return (g_t - g_s).pow(2).sum() / (n * n)


def sp_loss(g_s: Sequence[Tensor], g_t: Sequence[Tensor]) -> Tensor:
    """Sum of `similarity_loss` over the pairs of the two lists (zip). Returns a 0-d tensor."""
    return sum(similarity_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t))


@DISTILLERS.register("SP")
class SP(Distiller):
    """CE_WEIGHT * CE + FEAT_WEIGHT * sp_loss([student feats[-1]], [teacher feats[-1]])."""
    label, family = "SP", "feature"

    needs_teacher = True

    def __init__(self, student, teacher, ce_weight: float = 1.0, feat_weight: float = 3000.0,
                 input_size: tuple[int, int] = (32, 32)):
        super().__init__(student, teacher)
        self.ce_weight, self.feat_weight = ce_weight, feat_weight
        self.layer = f"feats.{stage_count(teacher, input_size) - 1}"  # the teacher's last stage

    @classmethod
    def from_config(cls, cfg, student, teacher, num_classes):
        s = cfg.SP
        return cls(student, teacher, s.LOSS.CE_WEIGHT, s.LOSS.FEAT_WEIGHT, input_size_of(cfg))

    def target_spec(self):
        return {"targets": "features", "layers": (self.layer,)}

    def forward_train(self, images, labels, ctx):
        t = self.targets(images, ctx)  # teacher first: see Distiller.teacher_outputs
        logits, feats = self.student(images)
        with torch.autocast(images.device.type, enabled=False):  # float32 loss under bf16 autocast
            loss = sp_loss([feats["feats"][-1].float()], [t[self.layer].float()])
        return logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(logits, labels),
            "loss_kd": self.feat_weight * loss,
        }
