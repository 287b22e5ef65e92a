"""NST: neuron selectivity transfer (Huang & Wang, 2017), as MDistiller computes it.

Each channel's spatial activation pattern (its H*W vector, L2-normalised) is a sample; the loss is
the squared MMD between the student's and the teacher's channel distributions with the polynomial
kernel k(a, b) = (a . b)^2. Stages and pairing as AT (feats[1:] by position, square maps).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from catkd.config import Section, config_section
from catkd.distillers.at import paired_stage_layers, pool_to_smaller
from catkd.distillers.common import input_size_of
from catkd.distillers.base import Distiller
from catkd.distillers.registry import DISTILLERS


class NSTLossCfg(Section):
    CE_WEIGHT: float = Field(1.0, ge=0)
    FEAT_WEIGHT: float = Field(50.0, ge=0)


@config_section("NST")
class NSTCfg(Section):
    """MDistiller's NST section and defaults."""

    LOSS: NSTLossCfg = NSTLossCfg()


def poly_kernel(a: Tensor, b: Tensor) -> Tensor:
    """(a_i . b_j)^2 for every pair of rows: a (N, C_a, D), b (N, C_b, D) -> (N, C_b, C_a)."""
    return torch.bmm(b, a.transpose(1, 2)).pow(2)  # MDistiller broadcasts an N x C_b x C_a x D product


def single_stage_nst_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Squared MMD of one stage: mean k(t, t) (detached) + mean k(s, s) - 2 mean k(s, t).

    f_s: (N, C_s, H_s, H_s), f_t: (N, C_t, H_t, H_t); the larger map is pooled to the smaller, each
    channel's H*W vector L2-normalised (eps 1e-12); means over N x C x C'. Returns a 0-d tensor.
    """
    f_s, f_t = pool_to_smaller(f_s, f_t)
    f_s = F.normalize(f_s.reshape(f_s.shape[0], f_s.shape[1], -1), dim=2)
    f_t = F.normalize(f_t.reshape(f_t.shape[0], f_t.shape[1], -1), dim=2)
    return (poly_kernel(f_t, f_t).mean().detach() + poly_kernel(f_s, f_s).mean()
            - 2 * poly_kernel(f_s, f_t).mean())


def nst_loss(g_s: Sequence[Tensor], g_t: Sequence[Tensor]) -> Tensor:
    """Sum of `single_stage_nst_loss` over the stages paired by position (zip: stops at the shorter
    list). g_s, g_t: lists of (N, C, H, W). Returns a 0-d tensor (the integer 0 for no pair)."""
    return sum(single_stage_nst_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t))


@DISTILLERS.register("NST")
class NST(Distiller):
    """CE_WEIGHT * CE + FEAT_WEIGHT * nst_loss(student feats[1:], teacher feats[1:])."""
    label, family = "NST", "feature"

    needs_teacher = True

    def __init__(self, student, teacher, ce_weight: float = 1.0, feat_weight: float = 50.0,
                 input_size: tuple[int, int] = (32, 32), names: tuple[str, str] | None = None):
        super().__init__(student, teacher)
        self.ce_weight, self.feat_weight = ce_weight, feat_weight
        self.layers = paired_stage_layers("NST", student, teacher, input_size, names)

    @classmethod
    def from_config(cls, cfg, student, teacher, num_classes):
        n = cfg.NST
        return cls(student, teacher, n.LOSS.CE_WEIGHT, n.LOSS.FEAT_WEIGHT, input_size_of(cfg),
                   (cfg.DISTILLER.STUDENT, cfg.DISTILLER.TEACHER))

    def target_spec(self):
        return {"targets": "features", "layers": self.layers}  # the same as AT's: they share a cache

    def forward_train(self, images, labels, ctx):
        t = self.targets(images, ctx)  # teacher first: see Distiller.teacher_outputs
        logits, feats = self.student(images)
        with torch.autocast(images.device.type, enabled=False):  # float32 loss under bf16 autocast
            g_s = [f.float() for f in feats["feats"][1:]]
            loss = nst_loss(g_s, [t[k].float() for k in self.layers])
        return logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(logits, labels),
            "loss_kd": self.feat_weight * loss,
        }
