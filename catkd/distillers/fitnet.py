"""FitNet: hints (Romero et al., ICLR 2015), as MDistiller computes it.

The student's map at the hint layer (entry HINT_LAYER of feats["feats"]) goes through a regressor
(`ConvReg`: conv chosen from the two maps' shapes, BatchNorm, ReLU) and is pulled towards the
teacher's map at the same entry by mean squared error. The regressor is an extra module: it trains,
checkpoints and counts with the distiller. Its shape is fixed at construction by probing both models
once with a random input of INPUT_SIZE.
"""
from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import Tensor

from catkd.config import ConfigError, Section, config_section
from catkd.distillers.base import Distiller
from catkd.distillers.common import ConvReg, get_feat_shapes
from catkd.distillers.registry import DISTILLERS


class FitNetLossCfg(Section):
    CE_WEIGHT: float = Field(1.0, ge=0)
    FEAT_WEIGHT: float = Field(100.0, ge=0)


@config_section("FITNET")
class FitNetCfg(Section):
    """MDistiller's FITNET section and defaults, plus PROBE_TRAIN_MODE (ours)."""

    HINT_LAYER: int = Field(2, ge=0)  # index into feats["feats"] (0 = the stem where there is one)
    INPUT_SIZE: tuple[PositiveInt, PositiveInt] = (32, 32)  # (H, W) of the construction probe
    LOSS: FitNetLossCfg = FitNetLossCfg()
    # True: probe shapes with both models in train mode as MDistiller does, which moves their BatchNorm
    # running statistics one step towards those of random noise before training. False: eval mode.
    PROBE_TRAIN_MODE: bool = False


def hint_loss(f_s_regressed: Tensor, f_t: Tensor) -> Tensor:
    """Mean squared error over every element (MDistiller's `F.mse_loss(conv_reg(f_s), f_t)`).

    f_s_regressed: the regressor's output, (N, C_t, H_t, W_t); f_t: the teacher's hint map, same
    shape. Returns a 0-d tensor.
    """
    return F.mse_loss(f_s_regressed, f_t)


def hint_regressor(student, teacher, hint_layer: int, input_size: tuple[int, int], train_mode: bool,
                   names: tuple[str, str]) -> ConvReg:
    """The ConvReg mapping the student's hint map to the teacher's, from one probe of both models.

    Raises ValueError naming the models, the layer and the shapes when the layer does not exist in
    both or no ConvReg branch maps one shape to the other."""
    s_shapes, t_shapes = get_feat_shapes(student, teacher, input_size, train_mode=train_mode)
    s_name, t_name = names
    if hint_layer >= min(len(s_shapes), len(t_shapes)):
        raise ValueError(f"FITNET.HINT_LAYER {hint_layer}: student {s_name} has {len(s_shapes)} feature "
                         f"entries and teacher {t_name} {len(t_shapes)} (indices from 0)")
    s, t = s_shapes[hint_layer], t_shapes[hint_layer]
    try:
        return ConvReg(s, t)
    except ValueError as e:
        raise ValueError(f"FITNET.HINT_LAYER {hint_layer}: student {s_name} map {tuple(s[1:])} vs teacher "
                         f"{t_name} map {tuple(t[1:])} at {input_size[0]} x {input_size[1]} inputs: {e}") from None


@DISTILLERS.register("FITNET")
class FitNet(Distiller):
    """CE_WEIGHT * CE + FEAT_WEIGHT * hint_loss(ConvReg(student feats[h]), teacher feats[h])."""
    label, family = "FitNet", "feature"

    needs_teacher = True

    def __init__(self, student, teacher, hint_layer: int = 2, ce_weight: float = 1.0, feat_weight: float = 100.0,
                 input_size: tuple[int, int] = (32, 32), probe_train_mode: bool = False,
                 names: tuple[str, str] | None = None):
        super().__init__(student, teacher)
        self.hint_layer, self.ce_weight, self.feat_weight = hint_layer, ce_weight, feat_weight
        names = names or (type(student).__name__, type(teacher).__name__)
        self.conv_reg = hint_regressor(student, teacher, hint_layer, tuple(input_size), probe_train_mode, names)

    @classmethod
    def from_config(cls, cfg, student, teacher, num_classes):
        f = cfg.FITNET
        # a ValueError here (a pair it cannot run) reaches the user as a ConfigError: build_distiller
        return cls(student, teacher, f.HINT_LAYER, f.LOSS.CE_WEIGHT, f.LOSS.FEAT_WEIGHT, f.INPUT_SIZE,
                   f.PROBE_TRAIN_MODE, (cfg.DISTILLER.STUDENT, cfg.DISTILLER.TEACHER))

    def target_spec(self):
        return {"targets": "features", "layers": (f"feats.{self.hint_layer}",)}

    def forward_train(self, images, labels, ctx):
        t = self.targets(images, ctx)  # teacher first: see Distiller.teacher_outputs
        logits, feats = self.student(images)
        f_s = self.conv_reg(feats["feats"][self.hint_layer])
        return logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(logits, labels),
            "loss_kd": self.feat_weight * hint_loss(f_s.float(), t[f"feats.{self.hint_layer}"].float()),
        }
