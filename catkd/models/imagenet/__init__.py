"""ImageNet models (torchvision ResNet18/34/50, MDistiller MobileNetV1); importing registers them."""
from catkd.models.imagenet import mobilenetv1, resnet  # noqa: F401  (registrations)
