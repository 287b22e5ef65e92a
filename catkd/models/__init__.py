"""Model zoo (docs/contracts.md, C1): `build_model(name, num_classes, head_bias, family)`.

Every model returns `logits, feats = model(x)` with feats["cams"] (N, K, H, W) computed by the
shared CAM head (`catkd.models.cam_head`), and exposes its Linear classifier as `model.head`.
"""
from __future__ import annotations

from torch import nn

from catkd.models import cifar, imagenet  # noqa: F401  (their modules register into the registries)
from catkd.models.cam_head import init_cam_head
from catkd.models.registry import CIFAR_MODELS, IMAGENET_MODELS, ModelFactory
from catkd.models.weights import TeacherWeightsError, load_teacher_weights
from catkd.registry import Registry, UnknownNameError

_FAMILIES: dict[str, Registry[ModelFactory]] = {"cifar": CIFAR_MODELS, "imagenet": IMAGENET_MODELS}


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

    head_bias=False gives a bias-free CAM head (state_dict has no head bias key), initialised as the
    reference initialises a CAT/CAT-KD student's head (`init_cam_head`); use True for teachers,
    whose checkpoints carry the bias (their head keeps the classifier's own init). Aliases (the
    reference's spellings) are accepted; unknown names raise UnknownNameError.
    """
    model = _family(family).get(name)(num_classes, head_bias)
    if not head_bias:
        init_cam_head(model)
    return model


def canonical_model_name(name: str, family: str = "cifar") -> str:
    """The registered name behind `name` (an alias such as the reference's ImageNet "MobileNetV2")."""
    return _family(family).canonical(name)


def model_alias_note(name: str, family: str = "cifar") -> str | None:
    """Why an alias maps where it does, when that is worth a notice (None otherwise)."""
    return _family(family).alias_note(name)


def model_names(family: str = "cifar") -> list[str]:
    """Sorted registered names of `family`."""
    return _family(family).names()


__all__ = [
    "CIFAR_MODELS",
    "IMAGENET_MODELS",
    "TeacherWeightsError",
    "UnknownNameError",
    "build_model",
    "canonical_model_name",
    "init_cam_head",
    "model_alias_note",
    "load_teacher_weights",
    "model_names",
]
