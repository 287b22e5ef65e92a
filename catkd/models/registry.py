"""The model registries, one per family: the architecture modules register into them."""
from __future__ import annotations

from typing import Callable

from torch import nn

from catkd.registry import Registry

ModelFactory = Callable[[int, bool], nn.Module]  # (num_classes, head_bias) -> model

CIFAR_MODELS: Registry[ModelFactory] = Registry("CIFAR model")
IMAGENET_MODELS: Registry[ModelFactory] = Registry("ImageNet model")
