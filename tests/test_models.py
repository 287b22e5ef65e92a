"""Model zoo (docs/contracts.md, C1): MDistiller parameter names, the CAM identity, safe teacher loading."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from catkd.models import (
    TeacherWeightsError,
    UnknownNameError,
    build_model,
    load_teacher_weights,
    model_names,
)

ZOO_KEYS = json.loads((Path(__file__).parent / "data" / "model_zoo_keys.json").read_text())["models"]
CIFAR_NAMES = sorted(ZOO_KEYS)

# docs/method.md, "Class activation maps": channels and H x W of the CAM feature map at 32x32 input.
CIFAR_FMAP = {
    **{f"resnet{d}": (64, 8) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": (256, 8), "resnet32x4": (256, 8),
    "ResNet18": (512, 4), "ResNet50": (2048, 4),
    "wrn_16_1": (64, 8), "wrn_16_2": (128, 8), "wrn_40_1": (64, 8), "wrn_40_2": (128, 8),
    **{f"vgg{d}": (512, 4) for d in (8, 11, 13, 16, 19)},
    "MobileNetV2": (1280, 2),
    "ShuffleV1": (960, 4),
    "ShuffleV2": (1024, 4),
}
# ImageNet models at 64x64 (stride 32 -> 2x2; 7x7 at 224px).
IMAGENET_FMAP = {"ResNet18": (512, 2), "ResNet34": (512, 2), "ResNet50": (2048, 2),
                 "MobileNetV1": (1024, 2)}
HEAD_NAMES = {"ResNet18": "linear", "ResNet50": "linear", "ShuffleV1": "linear",
              "ShuffleV2": "linear", "MobileNetV2": "classifier.0",
              **{f"vgg{d}": "classifier" for d in (8, 11, 13, 16, 19)}}


def test_registry_lists_exactly_the_23_cifar_models_of_the_zoo():
    assert model_names("cifar") == CIFAR_NAMES
    assert len(CIFAR_NAMES) == 23 == len(CIFAR_FMAP)
    assert model_names("imagenet") == sorted(IMAGENET_FMAP)


@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_state_dict_names_shapes_and_order_equal_mdistiller(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=100, head_bias=True)
    got = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert got == ZOO_KEYS[name]
    head = HEAD_NAMES.get(name, "fc")
    assert model.head is model.get_submodule(head)
    assert isinstance(model.head, nn.Linear)


def _check_cam_identity(model: nn.Module, x: torch.Tensor, num_classes: int, channels: int,
                        size: int, head_bias: bool) -> None:
    # float64: freshly initialised deep nets in eval mode (BN running stats 0/1) blow activations
    # up to ~1e7, where float32 rounding alone exceeds atol 1e-4; in float64 the identity must
    # hold to that tolerance whatever the scale.
    model = model.double().eval()
    with torch.no_grad():
        logits, feats = model(x.double())
    n = x.shape[0]
    cams, pooled = feats["cams"], feats["pooled"]
    assert logits.shape == (n, num_classes)
    assert cams.shape == (n, num_classes, size, size)
    assert pooled.shape == (n, channels)
    assert isinstance(feats["feats"], list) and feats["feats"]
    head = model.head
    assert head.out_features == num_classes and head.in_features == channels
    expected = cams.mean((2, 3))
    if head_bias:
        assert head.bias is not None
        expected = expected + head.bias
    else:
        assert head.bias is None
        assert f"{model.head_name}.bias" not in model.state_dict()
    torch.testing.assert_close(expected, logits, atol=1e-4, rtol=1e-7)
    # logits are GAP-then-Linear of the feature map the CAMs were computed from
    torch.testing.assert_close(pooled, feats["fmap"].mean((2, 3)))


@pytest.mark.parametrize("head_bias", [True, False])
@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_cifar_cams_average_to_logits_minus_bias_at_the_method_feature_map_size(name, head_bias):
    torch.manual_seed(0)
    channels, size = CIFAR_FMAP[name]
    model = build_model(name, num_classes=7, head_bias=head_bias)  # 7: no hard-coded 100
    _check_cam_identity(model, torch.randn(2, 3, 32, 32), 7, channels, size, head_bias)


@pytest.mark.parametrize("head_bias", [True, False])
@pytest.mark.parametrize("name", sorted(IMAGENET_FMAP))
def test_imagenet_cams_average_to_logits_minus_bias(name, head_bias):
    torch.manual_seed(0)
    channels, size = IMAGENET_FMAP[name]
    model = build_model(name, num_classes=5, head_bias=head_bias, family="imagenet")
    assert model.head is model.fc
    _check_cam_identity(model, torch.randn(1, 3, 64, 64), 5, channels, size, head_bias)


def test_imagenet_resnet_parameter_names_equal_torchvision():
    torchvision = pytest.importorskip("torchvision")
    ours = build_model("ResNet18", num_classes=1000, family="imagenet").state_dict()
    theirs = torchvision.models.resnet18(weights=None).state_dict()
    assert [(k, v.shape) for k, v in ours.items()] == [(k, v.shape) for k, v in theirs.items()]


def test_cifar_and_imagenet_resnet18_are_different_models():
    cifar = build_model("ResNet18", num_classes=10)
    imnet = build_model("ResNet18", num_classes=10, family="imagenet")
    assert cifar.conv1.kernel_size == (3, 3) and imnet.conv1.kernel_size == (7, 7)


def test_unknown_model_name_lists_known_names():
    with pytest.raises(UnknownNameError) as err:
        build_model("resnet9")
    msg = str(err.value)
    assert "resnet9" in msg and "resnet8" in msg and "ShuffleV2" in msg
    with pytest.raises(UnknownNameError, match="MobileNetV1"):
        build_model("MobileNetV3", family="imagenet")
    with pytest.raises(UnknownNameError, match="cifar, imagenet"):
        build_model("resnet8", family="tinyimagenet")


# --- load_teacher_weights -----------------------------------------------------------------------

def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)[0]


def test_mdistiller_checkpoint_with_module_prefix_loads_and_reproduces_outputs(tmp_path):
    torch.manual_seed(0)
    teacher = build_model("resnet8", num_classes=100)
    # make BN running stats non-trivial so a forgotten buffer would show in the outputs
    teacher.train()
    with torch.no_grad():
        teacher(torch.randn(4, 3, 32, 32))
    ckpt = {"model": {f"module.{k}": v for k, v in teacher.state_dict().items()},
            "epoch": 240, "best_acc": 70.0}
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save(ckpt, path)

    torch.manual_seed(1)
    fresh = build_model("resnet8", num_classes=100)
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(_outputs(fresh, x), _outputs(teacher, x))
    load_teacher_weights(fresh, path)
    torch.testing.assert_close(_outputs(fresh, x), _outputs(teacher, x), rtol=0, atol=0)


@pytest.mark.parametrize("wrap", ["bare", "state_dict"])
def test_bare_or_state_dict_wrapped_checkpoint_loads(tmp_path, wrap):
    torch.manual_seed(0)
    teacher = build_model("wrn_16_1", num_classes=10)
    sd = teacher.state_dict()
    path = tmp_path / "w.pth"
    torch.save(sd if wrap == "bare" else {"state_dict": sd, "epoch": 3}, path)
    torch.manual_seed(1)
    fresh = build_model("wrn_16_1", num_classes=10)
    load_teacher_weights(fresh, str(path))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_outputs(fresh, x), _outputs(teacher, x), rtol=0, atol=0)


def test_wrong_class_count_names_the_key_and_both_shapes(tmp_path):
    path = tmp_path / "c10.pth"
    torch.save({"model": build_model("resnet8", num_classes=10).state_dict()}, path)
    with pytest.raises(TeacherWeightsError) as err:
        load_teacher_weights(build_model("resnet8", num_classes=100), path)
    msg = str(err.value)
    assert "fc.weight" in msg and "(10, 64)" in msg and "(100, 64)" in msg
    assert "num_classes" in msg


def test_wrong_architecture_lists_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "r8.pth"
    torch.save({"model": build_model("resnet8").state_dict()}, path)
    with pytest.raises(TeacherWeightsError) as err:
        load_teacher_weights(build_model("resnet14"), path)
    assert "missing keys" in str(err.value) and "layer1.1.conv1.weight" in str(err.value)
    with pytest.raises(TeacherWeightsError, match="unexpected keys fc.bias.*head_bias=True"):
        load_teacher_weights(build_model("resnet8", head_bias=False), path)


def test_missing_file_error_says_where_it_looked(tmp_path):
    path = tmp_path / "resnet56_vanilla" / "ckpt_epoch_240.pth"
    with pytest.raises(TeacherWeightsError) as err:
        load_teacher_weights(build_model("resnet8"), path)
    msg = str(err.value)
    assert str(path) in msg and "cifar_teachers.tar" in msg
    assert "<arch>_vanilla/ckpt_epoch_240.pth" in msg


@pytest.mark.parametrize("content", [b"this is not a torch checkpoint\n", b"garbage", b""])
def test_file_that_is_not_a_checkpoint_is_reported_unreadable(tmp_path, content):
    path = tmp_path / "notes.pth"
    path.write_bytes(content)
    with pytest.raises(TeacherWeightsError, match="unreadable") as err:
        load_teacher_weights(build_model("resnet8"), path)
    assert str(path) in str(err.value)


class _Payload:
    """Unpickling this creates `marker` (open(marker, "w")): code execution on load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_code_executing_pickle_is_refused_without_side_effect(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pth"
    torch.save({"model": _Payload(marker), "epoch": 240}, path)
    with pytest.raises(TeacherWeightsError, match="refused as unsafe"):
        load_teacher_weights(build_model("resnet8"), path)
    assert not marker.exists()
    # control: the payload is live, an unsafe load would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()


# ---- student CAM heads start where the reference's start -----------------------------------------
# The reference makes a CAT/CAT-KD student's head a 1x1 conv: Kaiming-normal fan_out (std sqrt(2/K))
# where its init loop covers it, PyTorch's default conv init (U(+-1/sqrt(C))) where it does not.
CONV_DEFAULT_HEADS = {"cifar": {"vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "ShuffleV1", "ShuffleV2"},
                      "imagenet": {"MobileNetV1"}}
# The teacher (Linear, with bias) keeps its classifier init: N(0, 0.01) in VGG and MobileNetV2,
# PyTorch's Linear default (U(+-1/sqrt(C))) elsewhere.
LINEAR_STD_001 = {"vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "MobileNetV2"}
ALL_MODELS = [("cifar", n) for n in CIFAR_NAMES] + [("imagenet", n) for n in sorted(IMAGENET_FMAP)]


@pytest.mark.parametrize("family, name", ALL_MODELS)
def test_student_cam_head_is_initialised_as_the_reference_initialises_its_1x1_conv(family, name):
    torch.manual_seed(0)
    k = 100
    w = build_model(name, num_classes=k, head_bias=False, family=family).head.weight.detach()
    c = w.shape[1]
    # at least 6,400 weights: the sample std is within ~1 % of the true one; 5 % cannot pass by luck
    if name in CONV_DEFAULT_HEADS[family]:
        bound = 1 / c**0.5
        assert w.abs().max() <= bound
        assert w.std().item() == pytest.approx(bound / 3**0.5, rel=0.05)
    else:
        assert w.std().item() == pytest.approx((2 / k) ** 0.5, rel=0.05)
        assert w.mean().abs().item() < 0.01


@pytest.mark.parametrize("family, name", ALL_MODELS)
def test_teacher_head_keeps_its_classifier_init(family, name):
    torch.manual_seed(0)
    head = build_model(name, num_classes=100, head_bias=True, family=family).head
    c = head.weight.shape[1]
    expected = 0.01 if name in LINEAR_STD_001 and family == "cifar" else 1 / (3 * c) ** 0.5
    assert head.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert head.bias is not None


def test_reference_imagenet_name_mobilenetv2_is_mobilenetv1():
    from catkd.models import canonical_model_name

    assert canonical_model_name("MobileNetV2", "imagenet") == "MobileNetV1"
    assert canonical_model_name("MobileNetV2", "cifar") == "MobileNetV2"  # the CIFAR model is a real V2
    m = build_model("MobileNetV2", num_classes=10, family="imagenet")
    assert type(m).__name__ == "MobileNetV1"
    assert "MobileNetV2" not in model_names("imagenet")  # aliases are not listed as models
