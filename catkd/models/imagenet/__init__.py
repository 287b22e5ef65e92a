"""ImageNet models (torchvision ResNet18/34/50, MDistiller MobileNetV1); importing registers them.

The ResNets are registered by name only: torchvision (about 1 s to import) is imported when one is
built, so CIFAR trials and the study driver never pay for it.
"""
from catkd.models.registry import IMAGENET_MODELS
from catkd.models.imagenet import mobilenetv1  # noqa: F401  (registration)


def _resnet(block: str, layers: list[int]):
    def build(num_classes: int, head_bias: bool):
        from catkd.models.imagenet.resnet import build_resnet

        return build_resnet(block, layers, num_classes, head_bias)

    return build


IMAGENET_MODELS.add("ResNet18", _resnet("basic", [2, 2, 2, 2]))
IMAGENET_MODELS.add("ResNet34", _resnet("basic", [3, 4, 6, 3]))
IMAGENET_MODELS.add("ResNet50", _resnet("bottleneck", [3, 4, 6, 3]))

# The CAT-KD reference's ImageNet config r50_mv2.yaml names its student "MobileNetV2"; the network it
# builds is MDistiller's MobileNetV1 (depthwise-separable, 1024 channels at 7x7).
IMAGENET_MODELS.alias("MobileNetV2", "MobileNetV1",
                      "the CAT-KD reference's ImageNet name for its MobileNetV1-style student")
