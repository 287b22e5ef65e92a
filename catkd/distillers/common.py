"""Helpers the feature distillers share (MDistiller's distillers/_common.py): probing feature shapes.

MDistiller probes with the models in whatever mode they are in; the teacher arrives in train mode,
so one probe moves its BatchNorm running statistics a step towards the statistics of random noise.
Here the probe runs in eval mode unless `train_mode=True` asks for MDistiller's behaviour.
"""
from __future__ import annotations

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


def get_feat_shapes(student: nn.Module, teacher: nn.Module, input_size: tuple[int, int],
                    train_mode: bool = False) -> tuple[list[torch.Size], list[torch.Size]]:
    """The shapes of feats["feats"] of both models for one input of `input_size` (H, W):
    (student shapes, teacher shapes), each a list of torch.Size (1, C, H, W)."""
    shapes = []
    for model in (student, teacher):
        feats = _probe(model, tuple(input_size), train_mode)
        shapes.append([torch.Size((1, *f.shape[1:])) for f in feats["feats"]])
    return shapes[0], shapes[1]


def feature_shapes(model: nn.Module, input_size: tuple[int, int], train_mode: bool = False) -> dict[str, Any]:
    """{"feats": [torch.Size], "preact_feats": [torch.Size], "pooled_feat": torch.Size} of one
    input of `input_size` (batch dimension 1)."""
    feats = _probe(model, tuple(input_size), train_mode)
    one = lambda t: torch.Size((1, *t.shape[1:]))  # noqa: E731
    return {"feats": [one(f) for f in feats["feats"]],
            "preact_feats": [one(f) for f in feats.get("preact_feats", [])],
            "pooled_feat": one(feats["pooled_feat"])}


def stage_count(model: nn.Module, input_size: tuple[int, int] = (32, 32)) -> int:
    """len(feats["feats"]): the number of stage outputs the model returns (stem included)."""
    return len(_probe(model, tuple(input_size), False)["feats"])
