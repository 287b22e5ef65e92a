"""CIFAR model zoo (MDistiller / RepDistiller names); importing registers all 23 models."""
from catkd.models.cifar import (  # noqa: F401  (imported for their registrations)
    mobilenetv2,
    resnet,
    resnetv2,
    shufflenetv1,
    shufflenetv2,
    vgg,
    wrn,
)
