"""Model zoo (contract C1): `build_model(name, num_classes, head_bias, family)`.

Every model returns `logits, feats = model(x)` with feats["cams"] (N, K, H, W) computed by the
shared CAM head (`catkd.models.cam_head`), and exposes its Linear classifier as `model.head`.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from catkd.registry import Registry, UnknownNameError

ModelFactory = Callable[[int, bool], nn.Module]  # (num_classes, head_bias) -> model

# Defined before the family packages are imported: their modules register into these.
CIFAR_MODELS: Registry[ModelFactory] = Registry("CIFAR model")
IMAGENET_MODELS: Registry[ModelFactory] = Registry("ImageNet model")
_FAMILIES: dict[str, Registry[ModelFactory]] = {"cifar": CIFAR_MODELS, "imagenet": IMAGENET_MODELS}

from catkd.models import cifar, imagenet  # noqa: E402,F401  (registrations)
from catkd.models.weights import TeacherWeightsError, load_teacher_weights  # noqa: E402


def _family(family: str) -> Registry[ModelFactory]:
    try:
        return _FAMILIES[family]
    except KeyError:
        raise UnknownNameError(
            f"unknown model family {family!r}; known: {', '.join(sorted(_FAMILIES))}"
        ) from None


def build_model(name: str, num_classes: int = 100, head_bias: bool = True,
                family: str = "cifar") -> nn.Module:
    """Build model `name` of `family` ("cifar" or "imagenet") with a (num_classes)-way head.

    head_bias=False gives a bias-free head (state_dict has no head bias key); use True for
    teachers, whose checkpoints carry the bias. Unknown names raise UnknownNameError.
    """
    return _family(family).get(name)(num_classes, head_bias)


def model_names(family: str = "cifar") -> list[str]:
    """Sorted registered names of `family`."""
    return _family(family).names()


__all__ = [
    "CIFAR_MODELS",
    "IMAGENET_MODELS",
    "TeacherWeightsError",
    "UnknownNameError",
    "build_model",
    "load_teacher_weights",
    "model_names",
]
