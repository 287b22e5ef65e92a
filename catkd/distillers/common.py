"""Helpers the feature distillers share (MDistiller's distillers/_common.py): the run's image size,
probing feature shapes, and FitNet's regressor `ConvReg`.

MDistiller probes with the models in whatever mode they are in; the teacher arrives in train mode,
so one probe moves its BatchNorm running statistics a step towards the statistics of random noise.
Here the probe runs in eval mode unless `train_mode=True` asks for MDistiller's behaviour.
"""
from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn


def _probe(model: nn.Module, input_size: tuple[int, int], train_mode: bool) -> dict[str, Any]:
    was_training = model.training
    model.train(train_mode)
    try:
        param = next(model.parameters())
        x = torch.randn(1, 3, *input_size, device=param.device, dtype=param.dtype)
        if train_mode:  # BatchNorm in train mode needs more than one value per channel
            x = x.expand(2, -1, -1, -1).clone()
        with torch.no_grad():
            _, feats = model(x)
    finally:
        model.train(was_training)
    return feats


# eval-mode shapes depend only on the architecture and the input size: a study's checks build the
# methods of one pair many times on the same untrained models, so each model is probed once per size
_SHAPES: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, int], dict[str, Any]]]" = weakref.WeakKeyDictionary()


def _shapes(model: nn.Module, input_size: tuple[int, int], train_mode: bool) -> dict[str, Any]:
    """{"feats": [torch.Size], "preact_feats": [torch.Size], "pooled_feat": torch.Size} of one input of
    `input_size` (batch dimension 1). A train-mode probe always runs: it moves BatchNorm statistics."""
    size = tuple(input_size)
    known = None if train_mode else _SHAPES.setdefault(model, {}).get(size)
    if known is not None:
        return known
    feats = _probe(model, size, train_mode)
    one = lambda t: torch.Size((1, *t.shape[1:]))  # noqa: E731
    out = {"feats": [one(f) for f in feats["feats"]], "preact_feats": [one(f) for f in feats.get("preact_feats", [])]}
    if "pooled_feat" in feats:  # a test model may return stage outputs only
        out["pooled_feat"] = one(feats["pooled_feat"])
    if not train_mode:
        _SHAPES[model][size] = out
    return out


def input_size_of(cfg) -> tuple[int, int]:
    """(H, W) of the run's images (the dataset declares its size), for the construction probes."""
    from catkd.data import dataset_entry

    size = dataset_entry(cfg).image_size(cfg)
    return (size, size)


def get_feat_shapes(student: nn.Module, teacher: nn.Module, input_size: tuple[int, int],
                    train_mode: bool = False) -> tuple[list[torch.Size], list[torch.Size]]:
    """The shapes of feats["feats"] of both models for one input of `input_size` (H, W):
    (student shapes, teacher shapes), each a list of torch.Size (1, C, H, W)."""
    return (list(_shapes(student, input_size, train_mode)["feats"]),
            list(_shapes(teacher, input_size, train_mode)["feats"]))


def feature_shapes(model: nn.Module, input_size: tuple[int, int], train_mode: bool = False) -> dict[str, Any]:
    """{"feats": [torch.Size], "preact_feats": [torch.Size], "pooled_feat": torch.Size} of one
    input of `input_size` (batch dimension 1)."""
    s = _shapes(model, input_size, train_mode)
    return {"feats": list(s["feats"]), "preact_feats": list(s["preact_feats"]), "pooled_feat": s["pooled_feat"]}


def stage_count(model: nn.Module, input_size: tuple[int, int] = (32, 32)) -> int:
    """len(feats["feats"]): the number of stage outputs the model returns (stem included)."""
    return len(_shapes(model, input_size, False)["feats"])


def _conv_reg_out_hw(s_hw: tuple[int, int], t_hw: tuple[int, int]) -> tuple[str, tuple[int, int]]:
    """ConvReg's branch for these spatial sizes (MDistiller's rule, chosen by H alone) and the size it
    produces. s_hw, t_hw: (H, W) of the student and teacher maps."""
    (s_h, s_w), (t_h, t_w) = s_hw, t_hw
    if s_h == 2 * t_h:  # 3x3 stride-2 conv, padding 1: ceil(n / 2)
        return "down", ((s_h + 1) // 2, (s_w + 1) // 2)
    if 2 * s_h == t_h:  # 4x4 stride-2 transposed conv, padding 1: 2n
        return "up", (2 * s_h, 2 * s_w)
    if s_h >= t_h and s_w >= t_w:  # "valid" conv of kernel (1 + s_h - t_h, 1 + s_w - t_w)
        return "valid", (t_h, t_w)
    return "none", (0, 0)


class ConvReg(nn.Module):
    """FitNet's regressor (MDistiller's ConvReg): maps a student map (N, C_s, H_s, W_s) to the teacher's
    (N, C_t, H_t, W_t) by a conv chosen from the shapes, then BatchNorm2d(C_t) and, if `use_relu`, ReLU.

    H_s == 2 H_t: Conv2d 3x3 stride 2 padding 1; 2 H_s == H_t: ConvTranspose2d 4x4 stride 2 padding 1;
    H_s >= H_t: Conv2d of kernel (1 + H_s - H_t, 1 + W_s - W_t), no padding. PyTorch default init, conv
    bias on. s_shape, t_shape: (N, C, H, W) (N is ignored). Where no branch yields the teacher's size
    (MDistiller raises a TypeError, or builds a regressor whose output does not match), raises ValueError
    naming both shapes.
    """

    def __init__(self, s_shape, t_shape, use_relu: bool = True):
        super().__init__()
        self.use_relu = use_relu
        _, s_c, s_h, s_w = (int(v) for v in s_shape)
        _, t_c, t_h, t_w = (int(v) for v in t_shape)
        branch, out_hw = _conv_reg_out_hw((s_h, s_w), (t_h, t_w))
        if out_hw != (t_h, t_w):
            raise ValueError(
                f"ConvReg cannot map a student map {s_c} x {s_h} x {s_w} to a teacher map {t_c} x {t_h} x {t_w} "
                "(it handles student height = 2x, 1/2x or >= the teacher's, with the width following)")
        if branch == "down":
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif branch == "up":
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        else:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        self.bn = nn.BatchNorm2d(t_c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.relu(x) if self.use_relu else x
