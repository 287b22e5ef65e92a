"""The features every model gives the feature distillers, as MDistiller's models give them:
feats["feats"] (stage outputs), feats["preact_feats"] (the same before the last ReLU),
feats["pooled_feat"] (the classifier's input), get_stage_channels() and get_bn_before_relu().
Odd corners are MDistiller's unless the docstring of the test says we deliberately differ."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from catkd.models import build_model, model_names
from catkd.models.cifar.shufflenetv1 import channel_shuffle

# name: (channels of feats, spatial sizes at 32 px, pooled width, get_stage_channels())
CIFAR = {
    **{f"resnet{d}": ([16, 16, 32, 64], [32, 32, 16, 8], 64, [16, 16, 32, 64]) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": ([32, 64, 128, 256], [32, 32, 16, 8], 256, [32, 64, 128, 256]),
    "resnet32x4": ([32, 64, 128, 256], [32, 32, 16, 8], 256, [32, 64, 128, 256]),
    "ResNet18": ([64, 64, 128, 256, 512], [32, 32, 16, 8, 4], 512, [64, 128, 256, 512]),
    "ResNet50": ([64, 256, 512, 1024, 2048], [32, 32, 16, 8, 4], 2048, [256, 512, 1024, 2048]),
    "wrn_16_1": ([16, 16, 32, 64], [32, 32, 16, 8], 64, [16, 16, 32, 64]),
    "wrn_40_1": ([16, 16, 32, 64], [32, 32, 16, 8], 64, [16, 16, 32, 64]),
    "wrn_16_2": ([16, 32, 64, 128], [32, 32, 16, 8], 128, [16, 32, 64, 128]),
    "wrn_40_2": ([16, 32, 64, 128], [32, 32, 16, 8], 128, [16, 32, 64, 128]),
    **{f"vgg{d}": ([64, 128, 256, 512, 512], [32, 16, 8, 4, 4], 512, [64, 128, 256, 512, 512]) for d in (8, 11, 13, 16, 19)},
    "MobileNetV2": ([16, 12, 16, 48, 160], [16, 16, 8, 4, 2], 1280, [16, 12, 16, 48, 160]),
    "ShuffleV1": ([24, 240, 480, 960], [32, 16, 8, 4], 960, [24, 240, 480, 960]),
    "ShuffleV2": ([24, 116, 232, 464], [32, 16, 8, 4], 1024, [24, 116, 232, 464]),
}
POST_RELU = [n for n in CIFAR if not n.startswith(("wrn", "MobileNetV2", "ShuffleV2"))]


def _run(name, family="cifar", size=32, train=False, n=2):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, family=family).train(train)
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, feats = model(x)
    return model, logits, feats


def test_every_cifar_model_is_in_the_table():
    assert sorted(CIFAR) == model_names("cifar")


@pytest.mark.parametrize("name", sorted(CIFAR))
def test_feature_lists_have_mdistillers_lengths_shapes_pooled_width_and_stage_channels(name):
    channels, sizes, width, stage_channels = CIFAR[name]
    model, _, feats = _run(name)
    assert [tuple(f.shape[1:]) for f in feats["feats"]] == [(c, s, s) for c, s in zip(channels, sizes)]
    assert [p.shape for p in feats["preact_feats"]] == [f.shape for f in feats["feats"]]
    assert feats["pooled_feat"].shape == (2, width)
    torch.testing.assert_close(feats["pooled_feat"], feats["fmap"].mean((2, 3)), rtol=0, atol=0)
    assert model.get_stage_channels() == stage_channels
    # the stem entry of preact is the stem output itself, in every family that has a stem
    assert torch.equal(feats["preact_feats"][0], feats["feats"][0])


@pytest.mark.parametrize("name", POST_RELU)
def test_post_relu_families_stage_outputs_are_relu_of_their_preact(name):
    _, _, feats = _run(name, train=True)
    for f, p in zip(feats["feats"][1:], feats["preact_feats"][1:]):
        assert torch.equal(f, F.relu(p))
        assert (p < 0).any()  # a real pre-activation, not the output again


def test_resnet_preact_is_the_last_blocks_residual_sum_seen_from_outside():
    """Independent of the model's own code: hooks read the last block's bn2 output and its input."""
    model = build_model("resnet20", num_classes=10).eval()
    seen = {}
    last = model.layer1[-1]
    last.bn2.register_forward_hook(lambda m, i, o: seen.__setitem__("bn2", o))
    last.conv1.register_forward_pre_hook(lambda m, i: seen.__setitem__("input", i[0]))
    with torch.no_grad():
        _, feats = model(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(feats["preact_feats"][1], seen["bn2"] + seen["input"], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["wrn_16_1", "wrn_40_2"])
def test_wrn_feats_are_signed_residual_sums_and_preact_is_the_next_batchnorm_of_them(name):
    model, _, feats = _run(name)
    f, p = feats["feats"], feats["preact_feats"]
    assert all((t < 0).any() for t in f)  # pre-activation network: stage outputs are not post-ReLU
    with torch.no_grad():
        for i, bn in enumerate(model.get_bn_before_relu(), start=1):
            torch.testing.assert_close(p[i], bn(f[i]), rtol=0, atol=0)


def test_wrn_batchnorms_move_once_per_training_forward_not_twice():
    """MDistiller recomputes WRN's preact by calling the next BatchNorms a second time, which moves
    their running statistics twice per step; here each BatchNorm runs once (same values)."""
    model, _, _ = _run("wrn_16_2", train=True)
    assert {int(m.num_batches_tracked) for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {1}


def test_mobilenetv2_stages_are_linear_bottlenecks_and_their_own_preact():
    """MDistiller's MobileNetV2 has no preact_feats; its stages 1-4 end without a ReLU, so here
    preact_feats are the stage outputs themselves (OFD and ReviewKD can then use it)."""
    _, _, feats = _run("MobileNetV2")
    assert all((f < 0).any() for f in feats["feats"][1:])
    assert all(torch.equal(f, p) for f, p in zip(feats["feats"], feats["preact_feats"]))


def test_shufflev2_preact_is_unshuffled_and_half_activated():
    _, _, feats = _run("ShuffleV2", train=True)
    for f, p in zip(feats["feats"][1:], feats["preact_feats"][1:]):
        c = p.shape[1] // 2
        assert torch.equal(p[:, :c], F.relu(p[:, :c]))  # the pass-through half arrives activated
        assert (p[:, c:] < 0).any()
        assert torch.equal(f, channel_shuffle(F.relu(p), 2))


@pytest.mark.parametrize("name", sorted(set(CIFAR) - {"ShuffleV2"}))
def test_batchnorms_before_relu_match_the_stages_they_end(name):
    model, _, feats = _run(name)
    bns = model.get_bn_before_relu()
    assert all(isinstance(b, nn.BatchNorm2d) for b in bns)
    deep = feats["preact_feats"][-len(bns):]
    assert [b.num_features for b in bns] == [p.shape[1] for p in deep]


def test_shufflev2_has_no_batchnorm_before_its_stage_outputs():
    with pytest.raises(NotImplementedError, match="OFD cannot use it as a teacher"):
        build_model("ShuffleV2").get_bn_before_relu()


def test_imagenet_resnet_first_feature_is_the_stem_before_max_pool():
    model, _, feats = _run("ResNet18", family="imagenet", size=224, n=1)
    shapes = [tuple(f.shape[1:]) for f in feats["feats"]]
    assert shapes == [(64, 112, 112), (64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)]
    assert torch.equal(feats["preact_feats"][0], feats["feats"][0])  # post-ReLU, as MDistiller's aliasing
    for f, p in zip(feats["feats"][1:], feats["preact_feats"][1:]):
        assert torch.equal(f, F.relu(p)) and (p < 0).any()
    assert feats["pooled_feat"].shape == (1, 512)
    assert model.get_stage_channels() == [64, 128, 256, 512]  # MDistiller: ResNet50's list for every depth
    assert [b.num_features for b in model.get_bn_before_relu()] == [128, 256, 512]  # layer1 skipped


def test_imagenet_mobilenetv1_has_four_stages_without_stem():
    model, _, feats = _run("MobileNetV1", family="imagenet", size=224, n=1)
    assert [tuple(f.shape[1:]) for f in feats["feats"]] == [(128, 56, 56), (256, 28, 28), (512, 14, 14), (1024, 7, 7)]
    for f, p in zip(feats["feats"], feats["preact_feats"]):
        assert torch.equal(f, F.relu(p)) and (p < 0).any()
    assert model.get_stage_channels() == [128, 256, 512, 1024]
    assert [b.num_features for b in model.get_bn_before_relu()] == [128, 256, 512, 1024]


def test_feature_shapes_probe_a_model_once_per_input_size_in_eval_mode_and_every_time_in_train_mode():
    """A study's checks build every method of a pair on the same untrained models: eval-mode shapes are
    probed once per model and size. A train-mode probe (MDistiller's own behaviour) moves BatchNorm
    statistics, so it is never skipped."""
    from catkd.distillers.common import feature_shapes, get_feat_shapes, stage_count

    model = build_model("resnet8", num_classes=4)
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    first = feature_shapes(model, (32, 32))
    assert get_feat_shapes(model, model, (32, 32))[0] == first["feats"] and stage_count(model) == len(first["feats"])
    assert calls == [(1, 3, 32, 32)]
    first["feats"].clear()  # a caller's copy: the cache is not touched
    assert feature_shapes(model, (32, 32))["feats"] and len(calls) == 1
    assert feature_shapes(model, (16, 16))["feats"][-1][2:] == (4, 4) and len(calls) == 2
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    for n in (1, 2):
        get_feat_shapes(model, model, (32, 32), train_mode=True)
        assert int(bn.num_batches_tracked) == 2 * n  # both probes ran, each moving the statistics once
