"""KDSVD: self-supervised KD with singular value decomposition (Lee et al., ECCV 2018), as MDistiller
computes it.

Each stage map (entries 1.. of feats["feats"], paired by list position) is read as a matrix per sample
and decomposed; the leading right singular vectors, scaled by the teacher's normalised singular
values, describe the stage. The student's vectors are matched to the teacher's by largest |cosine|
(with its sign), and for consecutive stages an RBF kernel between the two stages' vectors is compared,
student against teacher. MDistiller's matrix is (C*H) x W, so student and teacher need equal widths;
RepDistiller's is (H*W) x C, needing equal channels (SVD_LAYOUT). Singular-vector signs are up to the
LAPACK backend, so values match MDistiller's only on the same backend.
"""
from __future__ import annotations

import warnings
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from catkd.config import ConfigError, Section, config_section
from catkd.distillers.base import Distiller
from catkd.distillers.common import get_feat_shapes, input_size_of
from catkd.distillers.registry import DISTILLERS

Layout = Literal["CHxW", "HWxC"]
_COMPARED = {"CHxW": ("width", 3), "HWxC": ("channels", 1)}  # what the two maps must share, its axis


class KDSVDLossCfg(Section):
    CE_WEIGHT: float = Field(1.0, ge=0)
    FEAT_WEIGHT: float = Field(1.0, ge=0)


@config_section("KDSVD")
class KDSVDCfg(Section):
    """MDistiller's KDSVD section and defaults, plus SVD_LAYOUT (ours)."""

    K: int = Field(1, ge=1)  # singular vectors kept of the teacher (the student keeps K + 3)
    LOSS: KDSVDLossCfg = KDSVDLossCfg()
    # the matrix decomposed per sample: "CHxW" (C*H) x W as MDistiller (needs equal widths), or
    # "HWxC" (H*W) x C as RepDistiller (needs equal channels)
    SVD_LAYOUT: Layout = "CHxW"


def removenan(x: Tensor) -> Tensor:
    """x with every non-finite entry (nan, +-inf) replaced by 0."""
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def svd(feat: Tensor, n: int = 1, layout: Layout = "CHxW"):
    """Reduced SVD of each sample's map read as a matrix, non-finite entries set to 0.

    feat: (N, C, H, W), read as (N, C*H, W) ("CHxW", a plain reshape as MDistiller) or (N, H*W, C)
    ("HWxC", RepDistiller). Returns u (N, rows, r), s (N, r), v (N, cols, r) with r = min(rows, cols)
    and x = u diag(s) v^T; with n > 0 only the first n columns (values) are kept and each column of u
    and v, and the n values of s, are L2-normalised. Computed in float32.
    """
    if feat.dim() != 4:
        raise ValueError(f"svd expects an (N, C, H, W) map, got shape {tuple(feat.shape)}")
    n_, c, h, w = feat.shape
    x = feat.reshape(n_, c * h, w) if layout == "CHxW" else feat.reshape(n_, c, h * w).transpose(-2, -1)
    u, s, vh = torch.linalg.svd(x.float(), full_matrices=False)
    u, s, v = removenan(u), removenan(s), removenan(vh.transpose(-2, -1))
    if n > 0:
        u = F.normalize(u[:, :, :n], dim=1)
        s = F.normalize(s[:, :n], dim=1)
        v = F.normalize(v[:, :, :n], dim=1)
    return u, s, v


def align_rsv(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Match a's columns to b's: for each column of b, the column(s) of a of largest |cosine|, times
    the cosine's sign (ties keep every tied column, summed, as MDistiller).

    a: (N, D, k_a) student vectors, b: (N, D, k_b) teacher vectors. Returns (a aligned (N, D, k_b), b).
    """
    cosine = torch.matmul(a.transpose(-2, -1), b)  # (N, k_a, k_b)
    max_abs_cosine, _ = torch.max(torch.abs(cosine), 1, keepdim=True)
    mask = torch.where(torch.eq(max_abs_cosine, torch.abs(cosine)), torch.sign(cosine), torch.zeros_like(cosine))
    return torch.matmul(a, mask), b


def kdsvd_loss(g_s: Sequence[Tensor], g_t: Sequence[Tensor], k: int, layout: Layout = "CHxW"):
    """Sum over consecutive stage pairs (i-1, i) of sum((G_s - G_t)^2) / N, non-finite terms set to 0,
    with G(V_i, V_{i-1})[n, a, b, j] = exp(-(V_i[n, a, j] - V_{i-1}[n, b, j])^2 / 8).

    V per stage: the teacher's first k right singular vectors (`svd`, n = k) and the student's first
    k + 3 aligned to them (`align_rsv`), both times the teacher's normalised singular values.
    g_s, g_t: lists of (N, C, H, W) maps paired by position (zip), each pair of equal width ("CHxW") or
    equal channels ("HWxC"; otherwise ValueError). Returns a 0-d tensor (the integer 0 for fewer than
    two pairs, as MDistiller).
    """
    what, axis = _COMPARED[layout]
    v_sb = v_tb = None
    losses = []
    for i, (f_s, f_t) in enumerate(zip(g_s, g_t)):
        if f_s.shape[axis] != f_t.shape[axis]:
            raise ValueError(f"KDSVD ({layout}) needs equal {what}: stage {i} student map {tuple(f_s.shape[1:])}, "
                             f"teacher map {tuple(f_t.shape[1:])}")
        _, s_t, v_t = svd(f_t, k, layout)
        _, _, v_s = svd(f_s, k + 3, layout)
        v_s, v_t = align_rsv(v_s, v_t)
        s_t = s_t.unsqueeze(1)  # (N, 1, k)
        v_t, v_s = v_t * s_t, v_s * s_t
        if i > 0:
            s_rbf = torch.exp(-(v_s.unsqueeze(2) - v_sb.unsqueeze(1)).pow(2) / 8)
            t_rbf = torch.exp(-(v_t.unsqueeze(2) - v_tb.unsqueeze(1)).pow(2) / 8)
            losses.append(removenan((s_rbf - t_rbf.detach()).pow(2)).sum())
        v_tb, v_sb = v_t, v_s
    bsz = g_s[0].shape[0]
    return sum(loss / bsz for loss in losses)


def check_pair(student, teacher, input_size: tuple[int, int], layout: Layout, names: tuple[str, str]) -> int:
    """The teacher's number of feature entries, after checking that every paired stage (feats[1:] by
    position) can be compared under `layout`, from one probe of both models.

    Raises ValueError naming the models, the entry and both shapes (MDistiller fails inside a step);
    warns when the lists differ in length.
    """
    s_shapes, t_shapes = get_feat_shapes(student, teacher, input_size)
    s_name, t_name = names
    if len(s_shapes) != len(t_shapes):
        warnings.warn(f"KDSVD: student {s_name} has {len(s_shapes)} feature entries and teacher {t_name} "
                      f"{len(t_shapes)}; stages are paired by position from the first (as MDistiller)", stacklevel=3)
    what, axis = _COMPARED[layout]
    for i, (s, t) in enumerate(zip(s_shapes[1:], t_shapes[1:]), start=1):
        if s[axis] != t[axis]:
            raise ValueError(
                f"KDSVD.SVD_LAYOUT {layout} needs equal {what} at every paired stage: feature entry {i} is "
                f"{tuple(s[1:])} for student {s_name} and {tuple(t[1:])} for teacher {t_name} "
                f"(C x H x W at {input_size[0]} x {input_size[1]} inputs)")
    return len(t_shapes)



@DISTILLERS.register("KDSVD")
class KDSVD(Distiller):
    """CE_WEIGHT * CE + FEAT_WEIGHT * kdsvd_loss(student feats[1:], teacher feats[1:], K)."""
    label, family = "KDSVD", "feature"

    needs_teacher = True

    def __init__(self, student, teacher, k: int = 1, ce_weight: float = 1.0, feat_weight: float = 1.0,
                 layout: Layout = "CHxW", input_size: tuple[int, int] = (32, 32),
                 names: tuple[str, str] | None = None):
        super().__init__(student, teacher)
        self.k, self.ce_weight, self.feat_weight, self.layout = k, ce_weight, feat_weight, layout
        names = names or (type(student).__name__, type(teacher).__name__)
        # every teacher stage (not only the paired ones), so the targets do not depend on the student
        self.layers = tuple(f"feats.{i}" for i in range(1, check_pair(student, teacher, input_size, layout, names)))

    @classmethod
    def from_config(cls, cfg, student, teacher, num_classes):
        c = cfg.KDSVD
        # a ValueError here (a pair it cannot run) reaches the user as a ConfigError: build_distiller
        return cls(student, teacher, c.K, c.LOSS.CE_WEIGHT, c.LOSS.FEAT_WEIGHT, c.SVD_LAYOUT, input_size_of(cfg),
                   (cfg.DISTILLER.STUDENT, cfg.DISTILLER.TEACHER))

    def target_spec(self):
        return {"targets": "features", "layers": self.layers}

    def forward_train(self, images, labels, ctx):
        t = self.targets(images, ctx)  # teacher first: see Distiller.teacher_outputs
        logits, feats = self.student(images)
        with torch.autocast(images.device.type, enabled=False):  # SVD and cosines in float32
            loss = kdsvd_loss([f.float() for f in feats["feats"][1:]], [t[k].float() for k in self.layers],
                              self.k, self.layout)
        if not isinstance(loss, Tensor):  # fewer than two stage pairs: MDistiller's integer 0
            loss = logits.new_zeros(())
        return logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(logits, labels),
            "loss_kd": self.feat_weight * loss,
        }
