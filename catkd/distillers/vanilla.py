"""NONE: the student trained alone with cross-entropy (also how teachers are trained)."""
from __future__ import annotations

import torch.nn.functional as F

from catkd.distillers.base import Distiller
from catkd.distillers.registry import DISTILLERS


@DISTILLERS.register("NONE", "vanilla")
class Vanilla(Distiller):
    label, family = "student alone", "none"

    @classmethod
    def from_config(cls, cfg, student, teacher, num_classes):
        return cls(student)

    def forward_train(self, images, labels, ctx):
        logits, _ = self.student(images)
        return logits, {"loss_ce": F.cross_entropy(logits, labels)}
