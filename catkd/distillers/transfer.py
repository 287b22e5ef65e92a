"""TRANSFER: the linear probe of a trained student (the reference's DISTILLER.TYPE "transfer").

The student's weights come from TRANSFER.SOURCE, a checkpoint of a run on another dataset (CIFAR-100),
all but its head; a new Linear head with bias, sized for this dataset's classes, is the only thing
that trains, with cross-entropy. How well a frozen representation serves another dataset is the
paper's transferability experiment (STL-10, TinyImageNet at 32 x 32).

Our choice against the reference: the backbone is frozen in eval mode (FREEZE_BN True), so its
BatchNorm layers normalise with the statistics learnt on the source data and never re-estimate them
on the target data: a pure linear probe. The reference leaves every BatchNorm in train mode
(FREEZE_BN False reproduces it). The head is found by module, not by a name substring, so any model
of the zoo (vgg's `classifier`, MobileNetV2's, a CAT student's bias-free CAM head) loads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import torch.nn.functional as F
from torch import nn

from catkd.config import ConfigError, Section, config_section
from catkd.distillers.base import Distiller
from catkd.distillers.registry import DISTILLERS


@config_section("TRANSFER")
class TransferCfg(Section):
    SOURCE: Optional[str] = None  # the trained student: a run's ckpt_epoch_<E>.pth (or any state_dict file)
    SOURCE_ROOT: Optional[str] = None  # where a relative SOURCE lives (default: the working directory)
    FREEZE_BN: bool = True  # ours: backbone in eval mode; False: the reference's BN in train mode
    # how tables name the source student (a transfer study writes them from the source run's config)
    SOURCE_METHOD: str = ""
    SOURCE_PAIR: str = ""
    SOURCE_SEED: Optional[int] = None
    SOURCE_SETTINGS: str = ""  # the source's other settings that set it apart (teacher_epoch=80, ...)


def source_path(cfg) -> Path:
    """TRANSFER.SOURCE, a relative one under TRANSFER.SOURCE_ROOT."""
    t = cfg.TRANSFER
    if not t.SOURCE:
        raise ConfigError("TRANSFER.SOURCE: the trained student's checkpoint to probe is not set")
    p = Path(t.SOURCE)
    return p if p.is_absolute() or not t.SOURCE_ROOT else Path(t.SOURCE_ROOT) / p


@DISTILLERS.register("TRANSFER", "transfer")
class Transfer(Distiller):
    label, family = "linear probe", "none"

    def __init__(self, student: nn.Module, freeze_bn: bool = True):
        super().__init__(student)
        self.freeze_bn = freeze_bn
        head = student.head
        for p in student.parameters():
            p.requires_grad_(False)
        for p in head.parameters():
            p.requires_grad_(True)

    @classmethod
    def from_config(cls, cfg, student, teacher, num_classes):
        from catkd.models import TeacherWeightsError
        from catkd.models.weights import load_backbone_weights

        try:
            load_backbone_weights(student, source_path(cfg))
        except TeacherWeightsError as e:
            raise ConfigError(f"TRANSFER.SOURCE: {e}") from None
        return cls(student, cfg.TRANSFER.FREEZE_BN)

    @classmethod
    def for_timing(cls, cfg, student, teacher, num_classes):
        return cls(student, cfg.TRANSFER.FREEZE_BN)  # untrained weights: the speed does not depend on them

    @classmethod
    def check_config(cls, cfg, num_classes, cam_shapes) -> None:
        """Nothing to check before the run: TRANSFER.SOURCE is read when the run starts (a transfer
        study fills it in from its `from:` experiment, whose students its loader checks)."""

    def train(self, mode: bool = True) -> "Transfer":
        super().train(mode)
        if self.freeze_bn:
            self.student.eval()  # running statistics stay the source's; the Linear head has no mode
        return self

    def learnable_parameters(self) -> Iterator[nn.Parameter]:
        return iter(self.student.head.parameters())

    def forward_train(self, images, labels, ctx):
        logits, _ = self.student(images)
        return logits, {"loss_ce": F.cross_entropy(logits, labels)}
