"""CRD: Contrastive Representation Distillation (Tian et al., ICLR 2020), as MDistiller computes it.

Both pooled features are embedded (Linear, then divided by their L2 norm) and contrasted with a
memory bank of every training sample's past embeddings: the teacher's embedding against the
student-side memory and the student's against the teacher-side memory, one positive and K negatives
per sample, scored exp(<m, v> / T) / Z and pushed through the NCE loss. The memory is updated with
momentum after scoring. Z is set from the first batch and then fixed (a buffer: resumed exactly).

Contrast indices come from `contrast_sampling` (reproducible from (seed, epoch, sample index));
MDistiller's memory module also builds an alias-method sampler and moves it to CUDA in its
constructor, used by nothing: not built here, so CRD runs on a CPU.
"""
from __future__ import annotations

import math
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from catkd.config import ConfigError, Section, config_section
from catkd.distillers.base import Distiller
from catkd.distillers.common import feature_shapes
from catkd.distillers.contrast_sampling import ContrastSampler, sample_keys
from catkd.distillers.registry import DISTILLERS


class CRDFeatCfg(Section):
    DIM: int = Field(128, ge=1)
    # MDistiller's defaults (256) fit only resnet32x4 -> resnet8x4; unset (None), the pair's pooled
    # widths are used, and a set value that differs from them is an error.
    STUDENT_DIM: Optional[int] = Field(None, ge=1)
    TEACHER_DIM: Optional[int] = Field(None, ge=1)


class CRDLossCfg(Section):
    CE_WEIGHT: float = Field(1.0, ge=0)
    FEAT_WEIGHT: float = Field(0.8, ge=0)


class CRDNCECfg(Section):
    K: int = Field(16384, ge=1)
    MOMENTUM: float = Field(0.5, ge=0, le=1)
    TEMPERATURE: float = Field(0.07, gt=0)


@config_section("CRD")
class CRDCfg(Section):
    """MDistiller's CRD section and defaults (STUDENT_DIM / TEACHER_DIM: see CRDFeatCfg)."""

    MODE: Literal["exact", "relax"] = "exact"
    FEAT: CRDFeatCfg = CRDFeatCfg()
    LOSS: CRDLossCfg = CRDLossCfg()
    NCE: CRDNCECfg = CRDNCECfg()


def nce_loss(scores: Tensor, num_data: int, eps: float = 1e-7) -> Tensor:
    """MDistiller's ContrastLoss: the NCE loss of (N, K + 1) scores, column 0 the positive.

    With m = K and Pn = 1 / num_data: -(sum_b log(x_b0 / (x_b0 + m Pn + eps))
    + sum_b sum_k log(m Pn / (x_bk + m Pn + eps))) / N. A 0-d tensor (MDistiller's has shape (1,))."""
    n, m = scores.shape[0], scores.shape[1] - 1
    noise = m / num_data
    log_d1 = torch.log(scores[:, 0] / (scores[:, 0] + noise + eps))
    log_d0 = torch.log(noise / (scores[:, 1:] + noise + eps))
    return -(log_d1.sum() + log_d0.sum()) / n


class Embed(nn.Module):
    """Linear(dim_in -> dim_out), then divided by the L2 norm (no eps, as MDistiller)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        x = self.linear(x.flatten(1))
        return x / x.pow(2).sum(1, keepdim=True).sqrt()


class ContrastMemory(nn.Module):
    """MDistiller's memory bank: memory_v1 (student side), memory_v2 (teacher side), each
    num_data x dim, uniform in [-b, b], b = 1 / sqrt(dim / 3); params = [K, T, Z1, Z2, momentum]."""

    def __init__(self, dim: int, num_data: int, k: int, temperature: float, momentum: float):
        super().__init__()
        self.num_data = num_data
        bound = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("params", torch.tensor([k, temperature, -1.0, -1.0, momentum]))
        self.register_buffer("memory_v1", torch.rand(num_data, dim).mul_(2 * bound).add_(-bound))
        self.register_buffer("memory_v2", torch.rand(num_data, dim).mul_(2 * bound).add_(-bound))

    def forward(self, v1: Tensor, v2: Tensor, rows: Tensor, contrast: Tensor) -> tuple[Tensor, Tensor]:
        """v1, v2: (N, dim) student / teacher embeddings; rows: (N,) their memory rows; contrast:
        (N, K + 1) memory rows to score against. Returns (scores of v1, scores of v2), (N, K + 1)."""
        t, momentum = float(self.params[1]), float(self.params[4])
        # <memory[contrast], v>: MDistiller gathers N x (K+1) x dim rows, then a batched product. One
        # product with the whole memory, then a gather of its scores, is the same sum and far less
        # memory traffic (CPU: 0.85 s -> ~0.1 s per step at K = 16384, 50,000 rows).
        out_v2 = torch.exp((v2 @ self.memory_v1.T).gather(1, contrast) / t)
        out_v1 = torch.exp((v1 @ self.memory_v2.T).gather(1, contrast) / t)
        with torch.no_grad():
            if self.params[2] < 0:  # the normalisation constants: from the first batch, then fixed
                self.params[2] = out_v1.mean() * self.num_data
                self.params[3] = out_v2.mean() * self.num_data
        out_v1, out_v2 = out_v1 / self.params[2], out_v2 / self.params[3]
        with torch.no_grad():  # out of place: the scores' backward still needs the memory as it was
            for name, v in (("memory_v1", v1), ("memory_v2", v2)):
                memory = getattr(self, name)
                pos = memory.index_select(0, rows).mul_(momentum).add_(v.detach() * (1 - momentum))
                setattr(self, name, memory.index_copy(0, rows, pos / pos.pow(2).sum(1, keepdim=True).sqrt()))
        return out_v1, out_v2


def crd_loss(memory: ContrastMemory, v_s: Tensor, v_t: Tensor, rows: Tensor, contrast: Tensor) -> Tensor:
    """NCE(student scores) + NCE(teacher scores) of one batch; updates the memory."""
    out_s, out_t = memory(v_s, v_t, rows, contrast)
    return nce_loss(out_s, memory.num_data) + nce_loss(out_t, memory.num_data)


@DISTILLERS.register("CRD")
class CRD(Distiller):
    """CE_WEIGHT * CE + FEAT_WEIGHT * crd_loss. Needs the training data (`bind_data`): the memory
    has a row per training sample, and the negatives are drawn from the other classes' rows."""
    label, family = "CRD", "feature"

    needs_teacher = True

    def __init__(self, student, teacher, feat_dim: int, student_dim: int, teacher_dim: int, k: int,
                 temperature: float, momentum: float, mode: str, ce_weight: float, feat_weight: float,
                 seed: int = 0):
        super().__init__(student, teacher)
        self.embed_s = Embed(student_dim, feat_dim)
        self.embed_t = Embed(teacher_dim, feat_dim)
        self.feat_dim, self.k, self.temperature, self.momentum = feat_dim, k, temperature, momentum
        self.mode, self.ce_weight, self.feat_weight, self.seed = mode, ce_weight, feat_weight, seed
        self.memory: Optional[ContrastMemory] = None
        self.sampler: Optional[ContrastSampler] = None

    @classmethod
    def from_config(cls, cfg, student, teacher, num_classes):
        c = cfg.CRD
        # every model pools globally, so a 32 px probe gives the pooled width of any input size
        widths = {"STUDENT_DIM": feature_shapes(student, (32, 32))["pooled_feat"][1],
                  "TEACHER_DIM": feature_shapes(teacher, (32, 32))["pooled_feat"][1]}
        wrong = [f"CRD.FEAT.{key} is {getattr(c.FEAT, key)}, but the {key.split('_')[0].lower()}'s pooled "
                 f"feature has {w} channels (leave it unset to use it)"
                 for key, w in widths.items() if getattr(c.FEAT, key) not in (None, w)]
        if wrong:
            raise ConfigError("; ".join(wrong))
        return cls(student, teacher, c.FEAT.DIM, widths["STUDENT_DIM"], widths["TEACHER_DIM"], c.NCE.K,
                   c.NCE.TEMPERATURE, c.NCE.MOMENTUM, c.MODE, c.LOSS.CE_WEIGHT, c.LOSS.FEAT_WEIGHT,
                   seed=cfg.EXPERIMENT.SEED)

    def bind_data(self, data: Any) -> None:
        train = data.train
        labels = getattr(train, "labels", None)
        source = getattr(train, "source_index", None)
        if labels is None or source is None:
            raise ConfigError(f"CRD needs a training set whose batches carry dataset indices; "
                              f"{type(train).__name__} does not")
        device = self.embed_s.linear.weight.device
        self.memory = ContrastMemory(self.feat_dim, len(labels), self.k, self.temperature, self.momentum).to(device)
        self.sampler = ContrastSampler(labels.cpu(), self.k, self.mode).to(device)
        # dataset index as stored -> memory row (the training set may be a subset: split, reduction)
        row_of = torch.full((int(source.max()) + 1,), -1, dtype=torch.int64)
        row_of[source] = torch.arange(len(source))
        self.row_of = row_of.to(device)

    def extra_parameter_count(self) -> int:
        """As MDistiller counts it: the embeddings and the memory's buffers."""
        count = super().extra_parameter_count()
        if self.memory is not None:
            count += sum(b.numel() for b in self.memory.buffers())
        return count

    def target_spec(self):
        return {"targets": "features", "layers": ("pooled_feat",)}

    def forward_train(self, images, labels, ctx):
        if self.memory is None or ctx.get("index") is None:
            raise RuntimeError("CRD needs bind_data(data) and batches that carry dataset indices")
        t = self.targets(images, ctx)  # teacher first: see Distiller.teacher_outputs
        logits, feats = self.student(images)
        rows = self.row_of[ctx["index"].to(self.row_of.device)]
        contrast = self.sampler(rows, sample_keys(self.seed, int(ctx["epoch"]), ctx["index"].to(rows.device)))
        # the memory's scores are exp(x / 0.07): computed in float32 whatever the autocast
        with torch.autocast(images.device.type, enabled=False):
            v_s = self.embed_s(feats["pooled_feat"].float())
            v_t = self.embed_t(t["pooled_feat"].float())
            loss = crd_loss(self.memory, v_s, v_t, rows, contrast)
        return logits, {"loss_ce": self.ce_weight * F.cross_entropy(logits, labels),
                        "loss_kd": self.feat_weight * loss}
