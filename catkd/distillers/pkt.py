"""PKT: probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), as MDistiller computes it.

The batch's pooled features define, per sample, a distribution over the batch (cosine similarities
mapped to [0, 1] and normalised per row); the student's is pulled towards the teacher's with a KL
divergence. The loss is a mean over the N x N entries of the batch, so it scales as 1/N: FEAT_WEIGHT
30000 is tuned for batches of 64, and nothing rescales it for other batch sizes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from catkd.config import Section, config_section
from catkd.distillers.base import Distiller
from catkd.distillers.registry import DISTILLERS


class PKTLossCfg(Section):
    CE_WEIGHT: float = Field(1.0, ge=0)
    FEAT_WEIGHT: float = Field(30000.0, ge=0)


@config_section("PKT")
class PKTCfg(Section):
    """MDistiller's PKT section and defaults."""

    LOSS: PKTLossCfg = PKTLossCfg()


def _row_distribution(f: Tensor, eps: float) -> Tensor:
    """(N, D) -> (N, N): rows divided by (their L2 norm + eps), NaN set to 0, cosine matrix mapped to
    [0, 1] by (S + 1) / 2, each row divided by its sum."""
    f = f / (f.pow(2).sum(1, keepdim=True).sqrt() + eps)
    f = torch.where(torch.isnan(f), torch.zeros_like(f), f)
    sim = (f @ f.t() + 1.0) / 2.0
    return sim / sim.sum(1, keepdim=True)


def pkt_loss(f_s: Tensor, f_t: Tensor, eps: float = 1e-7) -> Tensor:
    """mean over the N*N entries of P_t * log((P_t + eps) / (P_s + eps)).

    f_s: (N, D_s), f_t: (N, D_t) (widths may differ). Returns a 0-d tensor; it scales as 1/N.
    """
    p_s, p_t = _row_distribution(f_s, eps), _row_distribution(f_t, eps)
    return torch.mean(p_t * torch.log((p_t + eps) / (p_s + eps)))


@DISTILLERS.register("PKT")
class PKT(Distiller):
    """CE_WEIGHT * CE + FEAT_WEIGHT * pkt_loss(student pooled_feat, teacher pooled_feat)."""
    label, family = "PKT", "feature"

    needs_teacher = True

    def __init__(self, student, teacher, ce_weight: float = 1.0, feat_weight: float = 30000.0):
        super().__init__(student, teacher)
        self.ce_weight, self.feat_weight = ce_weight, feat_weight

    @classmethod
    def from_config(cls, cfg, student, teacher, num_classes):
        p = cfg.PKT
        return cls(student, teacher, p.LOSS.CE_WEIGHT, p.LOSS.FEAT_WEIGHT)

    def target_spec(self):
        return {"targets": "features", "layers": ("pooled_feat",)}  # the same as RKD's: they share a cache

    def forward_train(self, images, labels, ctx):
        t = self.targets(images, ctx)  # teacher first: see Distiller.teacher_outputs
        logits, feats = self.student(images)
        with torch.autocast(images.device.type, enabled=False):  # float32 loss under bf16 autocast
            loss = pkt_loss(feats["pooled_feat"].float(), t["pooled_feat"].float())
        return logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(logits, labels),
            "loss_kd": self.feat_weight * loss,
        }
