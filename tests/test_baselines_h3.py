"""OFD and ReviewKD as MDistiller computes them: golden values of the pure losses (worked by hand, or
against plain numpy / math re-implementations of the formulas), the fusion module, the extra
parameter counts, the per-pair ReviewKD lists, and one training step on a real pair."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from catkd.config import ConfigError
from catkd.distillers.ofd import OFD, OFDCfg, bn_margin, feat_loss, ofd_loss
from catkd.distillers.reviewkd import (
    ABF, REVIEWKD_PAIRS, ReviewKD, ReviewKDCfg, build_abfs, hcl_loss, pair_lists, resolve_lists, review)


# ---- OFD: feat_loss ---------------------------------------------------------------------------------
def _feat_loss_numpy(s: np.ndarray, t: np.ndarray, margin: np.ndarray) -> float:
    """The partial L2 distance element by element (N, C, H, W), margin per channel; mean over N."""
    n, c, h, w = s.shape
    total = 0.0
    for i in range(n):
        for ch in range(c):
            m = float(margin.reshape(-1)[ch])
            for y in range(h):
                for x in range(w):
                    sv, tv = float(s[i, ch, y, x]), float(t[i, ch, y, x])
                    if sv > m and tv <= m:
                        total += (sv - m) ** 2
                    if sv > tv and m < tv <= 0:
                        total += (sv - tv) ** 2
                    if tv > 0:
                        total += (sv - tv) ** 2
    return total / n


def test_feat_loss_each_case_of_the_partial_l2_golden():
    # margin -1; (s, t) per position of two samples:
    #   sample 0: (0.5, -2) teacher below margin, student above it: (0.5 + 1)^2 = 2.25
    #             (-1.5, -3) both below the margin: 0
    #             (0, -0.5) teacher between margin and 0, student above it: 0.5^2 = 0.25
    #   sample 1: (-0.7, -0.5) teacher between margin and 0, student below it: 0
    #             (-1, 1) teacher positive: 2^2 = 4
    #             (3, 2) teacher positive: 1
    s = torch.tensor([[[[0.5, -1.5, 0.0]]], [[[-0.7, -1.0, 3.0]]]])
    t = torch.tensor([[[[-2.0, -3.0, -0.5]]], [[[-0.5, 1.0, 2.0]]]])
    out = feat_loss(s, t, torch.full((1, 1, 1, 1), -1.0))
    assert out.dim() == 0
    assert out.item() == pytest.approx((2.25 + 0 + 0.25 + 0 + 4 + 1) / 2)  # summed over C, H, W, mean over N


def test_feat_loss_uses_each_channels_margin_golden():
    s = torch.tensor([[[[1.0]], [[1.0]]]])  # (1, 2, 1, 1)
    t = torch.tensor([[[[-5.0]], [[-5.0]]]])  # teacher far below both margins
    margin = torch.tensor([-1.0, -2.0]).view(1, 2, 1, 1)
    assert feat_loss(s, t, margin).item() == pytest.approx(2.0**2 + 3.0**2)


def test_feat_loss_matches_an_elementwise_numpy_reimplementation():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    margin = -torch.rand(1, 4, 1, 1, generator=g)
    expected = _feat_loss_numpy(s.numpy(), t.numpy(), margin.numpy())
    assert feat_loss(s, t, margin).item() == pytest.approx(expected, rel=1e-6)


def test_feat_loss_is_zero_where_the_student_matches_an_active_teacher_or_stays_below_the_margin():
    t = torch.tensor([[[[0.5, -3.0]]]])
    s = torch.tensor([[[[0.5, -4.0]]]])
    assert feat_loss(s, t, torch.full((1, 1, 1, 1), -1.0)).item() == 0.0


# ---- OFD: ofd_loss ----------------------------------------------------------------------------------
def test_ofd_loss_pools_the_teacher_and_halves_shallower_stages_golden():
    margin = torch.full((1, 1, 1, 1), -1.0)
    s0 = torch.tensor([[[[1.0]]]])  # stage 0 of 2: weight 1/2
    t0 = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])  # pooled to 1x1: 0.5 > 0 -> (1 - 0.5)^2 = 0.25
    s1 = torch.tensor([[[[2.0]]]])  # stage 1 of 2: weight 1
    t1 = torch.tensor([[[[-0.5]]]])  # between margin and 0: (2 + 0.5)^2 = 6.25
    out = ofd_loss([s0, s1], [t0, t1], [margin, margin])
    assert out.dim() == 0
    assert out.item() == pytest.approx(0.25 / 2 + 6.25)


def test_ofd_loss_weights_are_powers_of_two_counted_from_the_deepest_stage():
    margin = torch.full((1, 1, 1, 1), -1.0)
    ones, zeros = torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1) + 1e-3  # active teacher, each stage ~1
    out = ofd_loss([ones] * 3, [zeros] * 3, [margin] * 3)
    assert out.item() == pytest.approx((1 - 1e-3) ** 2 * (1 / 4 + 1 / 2 + 1))


def test_ofd_loss_rejects_lists_of_different_lengths():
    x, m = torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)
    with pytest.raises(ValueError, match="2 student maps, 1 teacher maps, 2 margins"):
        ofd_loss([x, x], [x], [m, m])


# ---- OFD: bn_margin ---------------------------------------------------------------------------------
def _phi(x: float) -> float:
    return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def _cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def _margin_closed_form(gamma: float, beta: float) -> float:
    s, m = abs(gamma), beta
    if _cdf(-m / s) > 0.001:
        return m - s * _phi(m / s) / _cdf(-m / s)  # the mean of N(m, s^2) below 0
    return -3 * s


@pytest.mark.parametrize("gamma, beta", [(1.0, 0.0), (-1.0, 0.0), (2.0, -1.0), (1.0, 3.0), (0.5, 0.3)])
def test_bn_margin_is_the_mean_of_the_negative_part_where_it_has_mass(gamma, beta):
    expected = _margin_closed_form(gamma, beta)
    assert _cdf(-beta / abs(gamma)) > 0.001  # this branch
    out = bn_margin(torch.tensor([gamma]), torch.tensor([beta]))
    assert out.shape == (1, 1, 1, 1) and out.dtype == torch.float32
    assert out.item() == pytest.approx(expected, rel=1e-6)


def test_bn_margin_golden_values_by_hand():
    # gamma 1, beta 0: half-normal mean -sqrt(2 / pi); beta 3: 3 - pdf(3) / cdf(-3)
    out = bn_margin(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 3.0])).view(-1)
    assert out[0].item() == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-6)
    assert out[1].item() == pytest.approx(3 - 0.0044318484 / 0.0013498980, rel=1e-6)


@pytest.mark.parametrize("gamma, beta", [(1.0, 3.2), (1.0, 5.0), (-2.0, 10.0), (0.1, 1.0)])
def test_bn_margin_is_minus_three_sigma_where_the_negative_part_is_negligible(gamma, beta):
    assert _cdf(-beta / abs(gamma)) <= 0.001  # this branch
    assert bn_margin(torch.tensor([gamma]), torch.tensor([beta])).item() == pytest.approx(-3 * abs(gamma))


def test_bn_margin_per_channel_and_a_zero_gamma_is_finite():
    gamma, beta = torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([0.0, 5.0, -1.0, 1.0])
    out = bn_margin(gamma, beta)
    assert out.shape == (1, 4, 1, 1)
    expected = [_margin_closed_form(1.0, 0.0), -3.0, -1.0, 0.0]  # zero gamma: min(beta, 0)
    assert out.view(-1).tolist() == pytest.approx(expected, rel=1e-6)


# ---- ReviewKD: hcl_loss -------------------------------------------------------------------------------
def _pool_numpy(x: np.ndarray, level: int) -> np.ndarray:
    n, c, h, w = x.shape  # sizes divisible by level
    return x.reshape(n, c, level, h // level, level, w // level).mean(axis=(3, 5))


def _hcl_numpy(fs_list, ft_list) -> float:
    total = 0.0
    for fs, ft in zip(fs_list, ft_list):
        h = fs.shape[2]
        levels = [lv for lv in (4, 2, 1) if lv < h]
        weights = [0.5 ** (k + 1) for k in range(len(levels))]
        terms = [np.mean((fs - ft) ** 2)] + [
            wgt * np.mean((_pool_numpy(fs, lv) - _pool_numpy(ft, lv)) ** 2) for lv, wgt in zip(levels, weights)]
        total += sum(terms) / (1 + sum(weights))
    return total


def test_hcl_loss_golden_2x2():
    fs = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    # full: (1 + 4 + 9 + 16) / 4 = 7.5; only level 1 is below H = 2: mean 2.5 -> 6.25, weight 1/2
    out = hcl_loss([fs], [torch.zeros_like(fs)])
    assert out.dim() == 0
    assert out.item() == pytest.approx((7.5 + 6.25 / 2) / 1.5)


def test_hcl_loss_at_1x1_is_the_plain_mse():
    fs, ft = torch.tensor([[[[3.0]], [[1.0]]]]), torch.tensor([[[[1.0]], [[1.0]]]])
    assert hcl_loss([fs], [ft]).item() == pytest.approx(2.0)


@pytest.mark.parametrize("h", [4, 8, 16])
def test_hcl_loss_levels_below_h_and_weights_match_numpy(h):
    g = torch.Generator().manual_seed(h)
    fs, ft = torch.randn(2, 3, h, h, generator=g), torch.randn(2, 3, h, h, generator=g)
    expected = _hcl_numpy([fs.numpy()], [ft.numpy()])
    assert hcl_loss([fs], [ft]).item() == pytest.approx(expected, rel=1e-5)


def test_hcl_loss_sums_pairs_and_is_zero_for_no_pair():
    g = torch.Generator().manual_seed(1)
    pairs = [(torch.randn(2, 4, h, h, generator=g), torch.randn(2, 4, h, h, generator=g)) for h in (8, 4, 1)]
    fs, ft = [p[0] for p in pairs], [p[1] for p in pairs]
    expected = _hcl_numpy([f.numpy() for f in fs], [f.numpy() for f in ft])
    assert hcl_loss(fs, ft).item() == pytest.approx(expected, rel=1e-5)
    assert hcl_loss([], []) == 0.0


# ---- ReviewKD: ABF ------------------------------------------------------------------------------------
def test_abf_without_fusion_takes_the_pooled_vector():
    abf = ABF(256, 128, 64, fuse=False)
    assert abf.att_conv is None
    out, res = abf(torch.randn(2, 256, 1, 1), out_shape=1)
    assert out.shape == (2, 64, 1, 1) and res.shape == (2, 128, 1, 1)


def test_abf_with_fusion_resizes_the_residual_and_the_output():
    abf = ABF(32, 16, 8, fuse=True)
    x, residual = torch.randn(2, 32, 4, 4), torch.randn(2, 16, 2, 2)
    out, res = abf(x, residual, shape=4, out_shape=8)  # student 4x4, teacher 8x8
    assert out.shape == (2, 8, 8, 8) and res.shape == (2, 16, 8, 8)
    out, res = abf(x, residual, shape=4, out_shape=4)
    assert out.shape == (2, 8, 4, 4) and res.shape == (2, 16, 4, 4)


def test_abf_attention_weighs_this_level_against_the_residual():
    abf = ABF(4, 3, 2, fuse=True).eval()
    x, y = torch.randn(2, 4, 2, 2), torch.randn(2, 3, 1, 1)
    conv = abf.att_conv[0]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor([50.0, -50.0]))  # z ~ (1, 0): this level only
        _, only_x = abf(x, y, 2, 2)
        conv.bias.copy_(torch.tensor([-50.0, 50.0]))  # z ~ (0, 1): the (upsampled) residual only
        _, only_y = abf(x, y, 2, 2)
    assert torch.allclose(only_x, abf.conv1(x), atol=1e-5)
    assert torch.allclose(only_y, y.expand(-1, -1, 2, 2), atol=1e-5)


def test_build_abfs_deepest_first_and_only_it_without_fusion():
    abfs = build_abfs([16, 32, 64, 64], [8, 16, 32, 32], mid_channel=64)
    assert [a.att_conv is None for a in abfs] == [True, False, False, False]
    assert [a.conv1[0].in_channels for a in abfs] == [64, 64, 32, 16]
    assert [a.conv2[0].out_channels for a in abfs] == [32, 32, 16, 8]


def test_review_outputs_shallow_to_deep_at_the_teacher_sizes():
    abfs = build_abfs([8, 16, 16], [4, 6, 6], mid_channel=16)
    x = [torch.randn(2, 16, 1, 1), torch.randn(2, 16, 2, 2), torch.randn(2, 8, 4, 4), torch.randn(2, 3, 8, 8)]
    outs = review(abfs, x, shapes=[1, 2, 4], out_shapes=[1, 4, 8])  # the 8x8 student map is unused
    assert [tuple(o.shape) for o in outs] == [(2, 4, 8, 8), (2, 6, 4, 4), (2, 6, 1, 1)]


def test_reviewkd_abfs_extra_parameters_resnet32x4_to_resnet8x4_as_mdistiller():
    abfs = build_abfs([64, 128, 256, 256], [64, 128, 256, 256], mid_channel=min(512, 256))
    assert sum(p.numel() for p in abfs.parameters()) == 1_808_774


# ---- ReviewKD: config and per-pair lists ---------------------------------------------------------------
def test_reviewkd_section_defaults_are_mdistillers():
    c = ReviewKDCfg()
    assert (c.CE_WEIGHT, c.REVIEWKD_WEIGHT, c.WARMUP_EPOCHS, c.MAX_MID_CHANNEL, c.STU_PREACT) == (1.0, 1.0, 20, 512, False)
    assert c.SHAPES == c.OUT_SHAPES == [1, 8, 16, 32]
    assert c.IN_CHANNELS == c.OUT_CHANNELS == [64, 128, 256, 256]
    assert "LOSS" not in ReviewKDCfg.model_fields


def test_ofd_section_defaults_are_mdistillers():
    c = OFDCfg()
    assert (c.LOSS.CE_WEIGHT, c.LOSS.FEAT_WEIGHT, c.CONNECTOR.KERNEL_SIZE) == (1.0, 0.001, 1)
    assert c.TEACHER_TRAIN_MODE  # ours; True is MDistiller's behaviour
    with pytest.raises(ValueError):
        OFDCfg.model_validate({"CONNECTOR": {"KERNEL_SIZE": 2}})


def _shapes(feats, preact, pooled):
    return {"feats": [torch.Size(s) for s in feats], "preact_feats": [torch.Size(s) for s in preact],
            "pooled_feat": torch.Size(pooled)}


_R8X4 = _shapes([(1, 32, 32, 32), (1, 64, 32, 32), (1, 128, 16, 16), (1, 256, 8, 8)],
                [(1, 32, 32, 32), (1, 64, 32, 32), (1, 128, 16, 16), (1, 256, 8, 8)], (1, 256))
_SHUFFLE_V1 = _shapes([(1, 24, 32, 32), (1, 240, 16, 16), (1, 480, 8, 8), (1, 960, 4, 4)],
                      [(1, 24, 32, 32), (1, 240, 16, 16), (1, 480, 8, 8), (1, 960, 4, 4)], (1, 960))


def test_pair_lists_from_feature_shapes():
    assert pair_lists(_R8X4, _R8X4) == {"IN_CHANNELS": [64, 128, 256, 256], "OUT_CHANNELS": [64, 128, 256, 256],
                                        "SHAPES": [1, 8, 16, 32], "OUT_SHAPES": [1, 8, 16, 32]}
    assert pair_lists(_SHUFFLE_V1, _R8X4) == {"IN_CHANNELS": [240, 480, 960, 960],
                                              "OUT_CHANNELS": [64, 128, 256, 256],
                                              "SHAPES": [1, 4, 8, 16], "OUT_SHAPES": [1, 8, 16, 32]}


def test_pair_lists_rejects_a_student_with_fewer_maps_and_a_missing_preact():
    short = _shapes([(1, 64, 8, 8), (1, 64, 4, 4)], [], (1, 64))
    with pytest.raises(ValueError, match="student s has 2 feature maps, teacher t 3 stages"):
        pair_lists(short, _R8X4, names=("s", "t"))
    with pytest.raises(ValueError, match=r"student s has 0 pre-activation maps \(STU_PREACT\)"):
        pair_lists(short, _R8X4, stu_preact=True, names=("s", "t"))
    with pytest.raises(ValueError, match="teacher t returns no pre-activation"):
        pair_lists(_R8X4, short, names=("s", "t"))


def test_resolve_lists_keeps_fitting_values_derives_defaults_and_rejects_explicit_misfits(capsys):
    needed = pair_lists(_SHUFFLE_V1, _R8X4)
    # all defaults: the channels and SHAPES do not fit the ShuffleV1 student, OUT_SHAPES does
    assert resolve_lists(ReviewKDCfg(), needed, ("ShuffleV1", "resnet32x4")) == needed
    err = capsys.readouterr().err
    assert "REVIEWKD.IN_CHANNELS: the default" in err and "REVIEWKD.SHAPES: the default" in err
    assert "OUT_SHAPES" not in err and "OUT_CHANNELS" not in err
    explicit = ReviewKDCfg(**needed)
    assert resolve_lists(explicit, needed, ("ShuffleV1", "resnet32x4")) == needed
    assert capsys.readouterr().err == ""
    with pytest.raises(ConfigError, match=r"REVIEWKD.SHAPES: \[1, 8, 8, 16\] does not fit teacher resnet32x4 "
                                          r"-> student ShuffleV1, whose features need \[1, 4, 8, 16\]"):
        resolve_lists(ReviewKDCfg(SHAPES=[1, 8, 8, 16]), needed, ("ShuffleV1", "resnet32x4"))


def test_reviewkd_pairs_table_has_every_row_and_mdistillers_preset_weight():
    assert len(REVIEWKD_PAIRS) == 11
    assert REVIEWKD_PAIRS[("resnet32x4", "resnet8x4")] == {
        "IN_CHANNELS": [64, 128, 256, 256], "OUT_CHANNELS": [64, 128, 256, 256],
        "SHAPES": [1, 8, 16, 32], "OUT_SHAPES": [1, 8, 16, 32], "REVIEWKD_WEIGHT": 5.0}
    assert "REVIEWKD_WEIGHT" not in REVIEWKD_PAIRS[("vgg13", "vgg8")]  # the ReviewKD repo gives none
    for row in REVIEWKD_PAIRS.values():
        n = len(row["IN_CHANNELS"])
        assert len(row["OUT_CHANNELS"]) == len(row["SHAPES"]) == len(row["OUT_SHAPES"]) == n


# ---- distillers on real pairs -------------------------------------------------------------------------
def _models(teacher: str, student: str, family: str = "cifar"):
    from catkd.models import build_model

    torch.manual_seed(0)
    return build_model(student, family=family), build_model(teacher, family=family)


def _distiller(method: str, teacher: str, student: str, **section):
    from catkd.distillers import build_distiller
    from catkd.engine.validate import build_run_config

    cfg = build_run_config({"DISTILLER": {"TYPE": method, "TEACHER": teacher, "STUDENT": student},
                            **({method: section} if section else {})}, quiet=True)
    s, t = _models(teacher, student)
    return build_distiller(cfg, s, t, num_classes=100)


def _batch(n: int = 3):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 100, (n,), generator=g)


def _check_step(d, epoch: int = 1):
    """One training step: the two keys, finite 0-d losses, gradients to the student and every extra
    module, none to the teacher."""
    d.train()
    images, labels = _batch()
    logits, losses = d.forward_train(images, labels, {"epoch": epoch, "index": None})
    assert logits.shape == (3, 100)
    assert set(losses) == {"loss_ce", "loss_kd"}
    for v in losses.values():
        assert v.dim() == 0 and torch.isfinite(v)
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in d.student.parameters())
    extra = [(n, p) for n, p in d.named_parameters() if not n.startswith(("student.", "teacher."))]
    assert extra and all(p.grad is not None for _, p in extra), [n for n, p in extra if p.grad is None]
    assert all(p.grad is None for p in d.teacher.parameters())
    return losses


def test_ofd_resnet32x4_to_resnet8x4_extra_parameters_and_margins_as_mdistiller():
    d = _distiller("OFD", "resnet32x4", "resnet8x4")
    assert d.extra_parameter_count() == 86_912
    bns = d.teacher.get_bn_before_relu()
    assert [m.shape for m in d.margins] == [(1, 64, 1, 1), (1, 128, 1, 1), (1, 256, 1, 1)]
    for m, bn in zip(d.margins, bns):
        assert torch.equal(m, bn_margin(bn.weight, bn.bias))
    # margins are buffers: saved with the extra modules and moved with the distiller
    assert {"margin_0", "margin_1", "margin_2"} <= set(d.extra_state_dict())
    assert d.target_spec() == {"targets": "features", "layers": ("preact_feats.1", "preact_feats.2", "preact_feats.3")}


def test_ofd_connector_is_a_conv_then_bn_initialised_as_mdistiller():
    d = _distiller("OFD", "resnet32x4", "resnet8x4", CONNECTOR={"KERNEL_SIZE": 3})
    conv, bn = d.connectors[2]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.padding, conv.bias) == (256, 256, (3, 3), (1, 1), None)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 256)), rel=0.05)
    assert torch.equal(bn.weight, torch.ones(256)) and torch.equal(bn.bias, torch.zeros(256))


def test_ofd_keeps_the_teacher_in_train_mode_and_is_not_cacheable():
    d = _distiller("OFD", "resnet32x4", "resnet8x4")
    assert OFD.cacheable is False
    assert d.teacher.training  # from construction on, as MDistiller
    d.eval()
    assert not d.teacher.training and not d.student.training
    d.train()
    assert d.teacher.training and all(m.training for m in d.teacher.modules())
    bn = d.teacher.get_bn_before_relu()[0]
    before = bn.num_batches_tracked.item()
    _check_step(d)
    assert bn.num_batches_tracked.item() == before + 1  # batch statistics: the running stats drift


def test_ofd_switch_keeps_the_teacher_in_eval_mode_and_cacheable():
    d = _distiller("OFD", "resnet32x4", "resnet8x4", TEACHER_TRAIN_MODE=False)
    assert d.cacheable and OFD.cacheable is False  # this instance only
    d.train()
    assert d.student.training and not d.teacher.training
    bn = d.teacher.get_bn_before_relu()[0]
    before = bn.num_batches_tracked.item()
    _check_step(d)
    assert bn.num_batches_tracked.item() == before  # running statistics, untouched


def test_ofd_forward_reads_the_teacher_only_through_its_targets():
    d = _distiller("OFD", "resnet32x4", "resnet8x4")
    images, labels = _batch()
    d.train()
    live = d.live_targets(images)
    torch.manual_seed(0)
    _, a = d.forward_train(images, labels, {"epoch": 1, "index": None, "teacher_targets": live})
    zero = {k: torch.zeros_like(v) for k, v in live.items()}
    _, b = d.forward_train(images, labels, {"epoch": 1, "index": None, "teacher_targets": zero})
    assert a["loss_kd"].item() != b["loss_kd"].item()
    assert a["loss_ce"].item() == pytest.approx(b["loss_ce"].item())


def test_ofd_cuts_margins_like_the_features_for_a_cifar_resnet50_teacher():
    # 4 BNs before ReLUs against 3 paired stages: MDistiller indexes the margins from the first BN
    # (256 channels against the 512 of the first paired stage) and fails; the deepest three fit
    s, t = _models("ResNet50", "resnet8x4")
    d = OFD(s, t)
    assert d.teacher_layers == (2, 3, 4) and d.student_layers == (1, 2, 3)
    bns = t.get_bn_before_relu()
    assert len(bns) == 4 and [m.shape[1] for m in d.margins] == [512, 1024, 2048]
    for m, bn in zip(d.margins, bns[1:]):
        assert torch.equal(m, bn_margin(bn.weight, bn.bias))
    images, labels = _batch(2)
    _, losses = d.forward_train(images, labels, {"epoch": 1, "index": None})
    assert torch.isfinite(losses["loss_kd"])


class _NoPreact(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        f = self.conv(x)
        return f.mean((2, 3)), {"feats": [f, f], "pooled_feat": f.mean((2, 3))}


def test_ofd_names_the_models_of_a_pair_it_cannot_run():
    s, t = _models("resnet32x4", "resnet8")
    with pytest.raises(ValueError, match="student tiny returns no pre-activation stage features"):
        OFD(_NoPreact(), t, names=("tiny", "resnet32x4"))
    t.get_bn_before_relu = lambda: (_ for _ in ()).throw(NotImplementedError("no single BN"))
    with pytest.raises(ValueError, match=r"teacher T does not name the BNs before its ReLUs \(get_bn_before_relu: no single BN\)"):
        OFD(s, t, names=("S", "T"))


def test_reviewkd_resnet32x4_to_resnet8x4_from_the_defaults_as_mdistiller(capsys):
    d = _distiller("REVIEWKD", "resnet32x4", "resnet8x4")
    assert isinstance(d, ReviewKD)
    assert "REVIEWKD" not in capsys.readouterr().err  # the defaults fit this pair: nothing derived
    assert d.extra_parameter_count() == 1_808_774
    assert [a.conv1[0].out_channels for a in d.abfs] == [256] * 4  # mid = min(512, 256)
    assert d.target_spec() == {"targets": "features",
                               "layers": ("preact_feats.1", "preact_feats.2", "preact_feats.3", "pooled_feat")}
    _check_step(d)


def test_reviewkd_warmup_counts_epochs_from_one():
    d = _distiller("REVIEWKD", "resnet32x4", "resnet8x4", REVIEWKD_WEIGHT=5.0)
    d.train()
    images, labels = _batch()
    with torch.no_grad():
        kd = {e: d.forward_train(images, labels, {"epoch": e, "index": None})[1]["loss_kd"].item() for e in (1, 10, 20, 40)}
    assert kd[1] == pytest.approx(kd[20] / 20, rel=1e-5)  # the first epoch already has 1/20
    assert kd[10] == pytest.approx(kd[20] / 2, rel=1e-5)
    assert kd[40] == pytest.approx(kd[20], rel=1e-5)


def test_reviewkd_derives_default_lists_that_do_not_fit_the_pair(capsys):
    d = _distiller("REVIEWKD", "resnet32x4", "resnet8")
    err = capsys.readouterr().err
    assert "REVIEWKD.IN_CHANNELS: the default [64, 128, 256, 256] does not fit teacher resnet32x4 -> " \
           "student resnet8; using [16, 32, 64, 64]" in err
    assert "OUT_CHANNELS" not in err  # the teacher's lists fit
    assert [a.conv1[0].in_channels for a in d.abfs] == [64, 64, 32, 16]
    assert [a.conv1[0].out_channels for a in d.abfs] == [64] * 4  # mid = min(512, 64)
    _check_step(d)


def test_reviewkd_rejects_explicit_lists_that_do_not_fit_the_pair():
    with pytest.raises(ConfigError, match=r"REVIEWKD.IN_CHANNELS: \[16, 32, 64, 128\] does not fit teacher "
                                          r"resnet32x4 -> student resnet8, whose features need \[16, 32, 64, 64\]"):
        _distiller("REVIEWKD", "resnet32x4", "resnet8", IN_CHANNELS=[16, 32, 64, 128])


def test_reviewkd_honours_an_explicit_max_mid_channel_with_a_warning():
    with pytest.warns(UserWarning, match="REVIEWKD.MAX_MID_CHANNEL: 128 is used .* MDistiller ignores"):
        d = _distiller("REVIEWKD", "resnet32x4", "resnet8x4", MAX_MID_CHANNEL=128)
    assert [a.conv1[0].out_channels for a in d.abfs] == [128] * 4
    assert [a.att_conv[0].in_channels for a in d.abfs[1:]] == [256] * 3


def test_reviewkd_student_preact_switch():
    d = _distiller("REVIEWKD", "resnet32x4", "resnet8x4", STU_PREACT=True)
    assert d.stu_preact
    images, labels = _batch()
    d.train()
    with torch.no_grad():
        pre = d.forward_train(images, labels, {"epoch": 20, "index": None})[1]["loss_kd"]
        d.stu_preact = False
        post = d.forward_train(images, labels, {"epoch": 20, "index": None})[1]["loss_kd"]
    assert torch.isfinite(pre) and pre.item() != post.item()


def test_reviewkd_same_loss_from_cached_targets():
    d = _distiller("REVIEWKD", "resnet32x4", "resnet8x4")
    d.eval()  # deterministic student
    images, labels = _batch()
    cached = {k: v.to(torch.bfloat16).float() for k, v in d.live_targets(images).items()}
    with torch.no_grad():
        live = d.forward_train(images, labels, {"epoch": 20, "index": None})[1]["loss_kd"]
        from_cache = d.forward_train(images, labels, {"epoch": 20, "index": None, "teacher_targets": cached})[1]["loss_kd"]
    assert from_cache.item() == pytest.approx(live.item(), rel=1e-2)


@pytest.mark.parametrize("pair", sorted(REVIEWKD_PAIRS), ids=lambda p: f"{p[0]}-{p[1]}")
def test_reviewkd_pairs_table_equals_the_lists_derived_from_the_models(pair):
    from catkd.distillers.common import feature_shapes

    s, t = _models(*pair)
    row = REVIEWKD_PAIRS[pair]
    derived = pair_lists(feature_shapes(s, (32, 32)), feature_shapes(t, (32, 32)), names=(pair[1], pair[0]))
    assert derived == {k: row[k] for k in derived}
