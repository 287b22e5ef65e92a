"""CAT and CAT-KD (Guo et al., CVPR 2023): transfer of class activation maps (CAMs).

Pure loss functions first (docs/contracts.md, C2; the method: docs/method.md, "The CAT loss"), then the distiller. CAMs are raw maps A = W * F
(N x K x H x W): no ReLU, no softmax. Teacher and student maps may differ in H x W; both are pooled
to R x R before they are compared.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor

from catkd.config import ConfigError, Section, config_section
from catkd.distillers.base import Distiller
from catkd.distillers.registry import DISTILLERS
from catkd.distillers.targets import binarize_cams  # noqa: F401 (C2: importable from here)


class CATLossCfg(Section):
    CE_WEIGHT: float = Field(1.0, ge=0)
    CAT_loss_weight: float = Field(400.0, ge=0)  # β
    CAM_RESOLUTION: int = Field(2, ge=1)


# CAT_KD.Strategy: the reference's integers, and the words studies may use for them
STRATEGY_WORDS = {"top": 0, "lowest": 1}
_IGNORED = "a switch of the reference's own code; catkd has no such option and ignores it"


@config_section("CAT_KD")
class CATKDCfg(Section):
    """The reference's CAT_KD section (its keys and defaults)."""

    renamed_keys = {"CAT_KD.CE_WEIGHT": "CAT_KD.LOSS.CE_WEIGHT", "CAT_KD.teacher_dir": "DISTILLER.TEACHER_CKPT"}
    ignored_keys = {
        "CAT_KD.student_dir": "the reference's path for a student checkpoint; catkd trains students from scratch",
        **{f"CAT_KD.{k}": _IGNORED for k in ("if_Augment", "if_useFactor", "if_self_train")},
    }
    LOSS: CATLossCfg = CATLossCfg()
    IF_NORMALIZE: bool = True
    onlyCAT: bool = False
    IF_BINARIZE: bool = False
    IF_OnlyTransferPartialCAMs: bool = False
    CAMs_Nums: int = Field(100, ge=1)
    Strategy: Literal[0, 1] = 0

    @field_validator("Strategy", mode="before")
    @classmethod
    def _strategy_words(cls, v: Any) -> Any:
        return STRATEGY_WORDS.get(v, v) if isinstance(v, str) else v


def select_cams(
    student_cams: Tensor, teacher_cams: Tensor, teacher_logits: Tensor, n: int, strategy: int
) -> tuple[Tensor, Tensor]:
    """Keep exactly n classes per sample, ranked by the teacher's (bias-free) logits.

    student_cams: (N, K, Hs, Ws); teacher_cams: (N, K, Ht, Wt); teacher_logits: (N, K).
    strategy 0 keeps the n highest-scoring classes, 1 the n lowest; ties go to the lower class
    index (stable sort). Returns (N, n, Hs, Ws) and (N, n, Ht, Wt), the same classes in both.
    The reference keeps n-1 (top) or n+1 (lowest) classes and falls back to all classes on ties;
    we keep exactly n for any class count.
    """
    k = teacher_logits.shape[1]
    if not 1 <= n <= k:
        raise ValueError(f"CAMs_Nums must be in 1..{k} (the number of classes), got {n}")
    if strategy not in (0, 1):
        raise ValueError(f"Strategy must be 0 (top) or 1 (lowest), got {strategy}")
    order = torch.sort(teacher_logits.detach(), dim=1, descending=strategy == 0, stable=True).indices
    keep = order[:, :n]

    def gather(cams: Tensor) -> Tensor:
        return cams.gather(1, keep[:, :, None, None].expand(-1, -1, *cams.shape[2:]))

    return gather(student_cams), gather(teacher_cams)


def cat_loss(student_cams: Tensor, teacher_cams: Tensor, resolution: int, normalize: bool) -> Tensor:
    """L_CAT: adaptive-average-pool both to R x R, optionally L2-normalise each map, MSE (mean).

    student_cams: (N, K', Hs, Ws); teacher_cams: (N, K', Ht, Wt). Returns a scalar averaged over
    the N x K' x R x R elements (the scale the preset β values are tuned for).
    """
    s = F.adaptive_avg_pool2d(student_cams, resolution)
    t = F.adaptive_avg_pool2d(teacher_cams, resolution)
    if normalize:
        s = F.normalize(s, dim=(2, 3), eps=1e-12)
        t = F.normalize(t, dim=(2, 3), eps=1e-12)
    return F.mse_loss(s, t)


@DISTILLERS.register("CAT_KD", "CAT-KD")
class CATKD(Distiller):
    """CAT-KD: CE_WEIGHT * CE + β * L_CAT; CAT (onlyCAT): β * L_CAT alone. No KL term, no warm-up."""
    label, family = "CAT-KD", "attention/CAM"

    needs_teacher = True
    student_head_bias = False

    def __init__(
        self,
        student,
        teacher,
        beta: float,
        resolution: int,
        normalize: bool = True,
        binarize: bool = False,
        only_cat: bool = False,
        ce_weight: float = 1.0,
        partial_n: int | None = None,
        strategy: int = 0,
    ):
        super().__init__(student, teacher)
        self.beta, self.resolution, self.normalize = beta, resolution, normalize
        self.binarize, self.only_cat, self.ce_weight = binarize, only_cat, ce_weight
        self.partial_n, self.strategy = partial_n, strategy

    @classmethod
    def check_config(cls, cfg, num_classes, cam_shapes):
        c = cfg.CAT_KD
        if c.IF_OnlyTransferPartialCAMs and c.CAMs_Nums > num_classes:
            raise ConfigError(
                f"CAT_KD.CAMs_Nums: {c.CAMs_Nums} is more than the {num_classes} classes of the dataset"
            )
        shapes = cam_shapes()
        smallest = min(*shapes["student"], *shapes["teacher"])
        if c.LOSS.CAM_RESOLUTION > smallest:  # pooling would up-sample
            raise ConfigError(
                f"CAT_KD.LOSS.CAM_RESOLUTION: {c.LOSS.CAM_RESOLUTION} is larger than the CAMs "
                f"(student {cfg.DISTILLER.STUDENT} {shapes['student']}, teacher {cfg.DISTILLER.TEACHER} "
                f"{shapes['teacher']}); use at most {smallest}"
            )

    @classmethod
    def from_config(cls, cfg, student, teacher, num_classes):
        c = cfg.CAT_KD
        return cls(
            student,
            teacher,
            beta=c.LOSS.CAT_loss_weight,
            resolution=c.LOSS.CAM_RESOLUTION,
            normalize=c.IF_NORMALIZE,
            binarize=c.IF_BINARIZE,
            only_cat=c.onlyCAT,
            ce_weight=c.LOSS.CE_WEIGHT,
            partial_n=c.CAMs_Nums if c.IF_OnlyTransferPartialCAMs else None,
            strategy=c.Strategy,
        )

    def target_spec(self):
        # β, normalisation, partial selection and the student do not change the targets: they share
        return {"targets": "cams", "resolution": self.resolution, "binarize": self.binarize}

    def transfer_loss(self, s_cams: Tensor, targets: dict[str, Tensor]) -> Tensor:
        """Unweighted L_CAT for a batch from the teacher targets: select classes, pool, normalise, MSE."""
        s_cams, t_cams = s_cams.float(), targets["cams"].float()
        if self.partial_n is not None:
            s_cams, t_cams = select_cams(s_cams, t_cams, targets["rank"].float(), self.partial_n, self.strategy)
        return cat_loss(s_cams, t_cams, self.resolution, self.normalize)  # pooling R x R to R x R is exact

    def forward_train(self, images, labels, ctx):
        t = self.targets(images, ctx)  # teacher first: see Distiller.teacher_outputs
        logits, s_feats = self.student(images)
        losses = {"loss_cat": self.beta * self.transfer_loss(s_feats["cams"], t)}
        if not self.only_cat:
            losses = {"loss_ce": self.ce_weight * F.cross_entropy(logits, labels), **losses}
        return logits, losses
