"""FitNet, VID and KDSVD (MDistiller's): golden values of the pure losses, the regressor's shapes, the
construction probe, the deviations' switches, and one training step of each distiller on a real pair."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from catkd.config import ConfigError
from catkd.distillers import build_distiller
from catkd.distillers.common import ConvReg
from catkd.distillers.fitnet import FitNet, FitNetCfg, hint_loss
from catkd.distillers.kdsvd import KDSVD, KDSVDCfg, align_rsv, kdsvd_loss, removenan, svd
from catkd.distillers.vid import VID, VIDCfg, conv1x1, init_log_scale, vid_loss
from catkd.engine.validate import build_run_config
from catkd.models import build_model


def _pair(student="resnet8", teacher="resnet20"):
    torch.manual_seed(0)
    return build_model(student, num_classes=10), build_model(teacher, num_classes=10)


def _bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


# ---- config sections: MDistiller's keys and defaults ---------------------------------------------
def test_sections_hold_mdistillers_defaults_and_our_switches_default_to_the_fixes():
    f, v, k = FitNetCfg(), VIDCfg(), KDSVDCfg()
    assert (f.HINT_LAYER, f.INPUT_SIZE, f.LOSS.CE_WEIGHT, f.LOSS.FEAT_WEIGHT) == (2, (32, 32), 1.0, 100.0)
    assert (v.LOSS.CE_WEIGHT, v.LOSS.FEAT_WEIGHT, v.EPS, v.INIT_PRED_VAR) == (1.0, 1.0, 1e-5, 5.0)
    assert v.INPUT_SIZE == (32, 32)
    assert (k.K, k.LOSS.CE_WEIGHT, k.LOSS.FEAT_WEIGHT) == (1, 1.0, 1.0)
    assert f.PROBE_TRAIN_MODE is False and v.PROBE_TRAIN_MODE is False and v.LEARN_VARIANCE is True
    assert k.SVD_LAYOUT == "CHxW"  # MDistiller's matrix
    assert FitNetCfg(INPUT_SIZE=[16, 24]).INPUT_SIZE == (16, 24)  # yaml lists read as (H, W)
    with pytest.raises(ValueError, match="INIT_PRED_VAR"):
        VIDCfg(INIT_PRED_VAR=1e-6)


# ---- FitNet: hint_loss and ConvReg ---------------------------------------------------------------
def test_hint_loss_is_the_mean_squared_error_over_every_element_golden():
    s = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert hint_loss(s, torch.zeros_like(s)).item() == pytest.approx(7.5)  # (1 + 4 + 9 + 16) / 4
    t = torch.tensor([[[[1.0, 0.0], [3.0, 2.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    s2 = torch.cat([s, torch.ones_like(s)])
    assert hint_loss(s2, t).item() == pytest.approx((0 + 4 + 0 + 4 + 4 * 1) / 8)


@pytest.mark.parametrize("s_shape, t_shape, conv, kernel, stride", [
    ((1, 8, 16, 16), (1, 4, 8, 8), nn.Conv2d, (3, 3), (2, 2)),  # H_s == 2 H_t
    ((1, 8, 4, 4), (1, 4, 8, 8), nn.ConvTranspose2d, (4, 4), (2, 2)),  # 2 H_s == H_t
    ((1, 8, 8, 8), (1, 4, 8, 8), nn.Conv2d, (1, 1), (1, 1)),  # equal: 1x1
    ((1, 8, 7, 9), (1, 4, 5, 6), nn.Conv2d, (3, 4), (1, 1)),  # H_s >= H_t: kernel (1 + dH, 1 + dW)
])
def test_convreg_picks_mdistillers_branch_and_reaches_the_teacher_shape(s_shape, t_shape, conv, kernel, stride):
    reg = ConvReg(s_shape, t_shape)
    assert type(reg.conv) is conv and reg.conv.kernel_size == kernel and reg.conv.stride == stride
    assert reg.conv.bias is not None and isinstance(reg.bn, nn.BatchNorm2d) and reg.bn.num_features == t_shape[1]
    out = reg(torch.randn(2, *s_shape[1:]))
    assert out.shape == (2, *t_shape[1:])
    assert out.min() >= 0  # the ReLU is kept (decision: MDistiller's regressor)


def test_convreg_without_relu_can_produce_negative_values():
    torch.manual_seed(0)
    out = ConvReg((1, 4, 8, 8), (1, 4, 8, 8), use_relu=False)(torch.randn(2, 4, 8, 8))
    assert out.min() < 0


@pytest.mark.parametrize("s_shape, t_shape", [
    ((1, 8, 4, 4), (1, 16, 16, 16)),  # teacher 4x larger: no branch (MDistiller: TypeError)
    ((1, 8, 5, 5), (1, 16, 8, 8)),  # smaller, not half
    ((1, 8, 8, 8), (1, 16, 4, 6)),  # the height picks the stride-2 branch, whose width would not match
    ((1, 8, 8, 4), (1, 16, 6, 6)),  # height larger, width smaller: no valid kernel
])
def test_convreg_rejects_shapes_no_branch_maps_naming_both(s_shape, t_shape):
    with pytest.raises(ValueError, match=r"student map 8 x .* teacher map 16 x"):
        ConvReg(s_shape, t_shape)


def test_fitnet_resnet32x4_to_resnet8x4_has_mdistillers_16768_extra_parameters():
    torch.manual_seed(0)
    d = FitNet(build_model("resnet8x4"), build_model("resnet32x4"))
    assert d.extra_parameter_count() == 16768  # 1x1 conv 128 -> 128 with bias, BN(128)
    assert d.target_spec() == {"targets": "features", "layers": ("feats.2",)}
    names = {n for n, _ in d.named_parameters()}
    assert {"conv_reg.conv.weight", "conv_reg.bn.weight"} <= names
    assert set(d.extra_state_dict()) >= {"conv_reg.conv.weight", "conv_reg.bn.running_mean"}


class FeatNet(nn.Module):
    """A model with the feature contract whose maps have the given (C, H, W) whatever the input."""

    def __init__(self, shapes, k=10):
        super().__init__()
        self.shapes = shapes
        self.convs = nn.ModuleList(nn.Conv2d(3, c, 1) for c, _, _ in shapes)
        self.fc = nn.Linear(shapes[-1][0], k)

    def forward(self, x):
        feats = [conv(F.adaptive_avg_pool2d(x, (h, w))) for conv, (_, h, w) in zip(self.convs, self.shapes)]
        return self.fc(feats[-1].mean((2, 3))), {"feats": feats}


def test_fitnet_rejects_a_hint_layer_either_model_lacks_or_cannot_map():
    s, t = _pair()
    with pytest.raises(ValueError, match=r"HINT_LAYER 4: student st has 4 .* teacher te 4"):
        FitNet(s, t, hint_layer=4, names=("st", "te"))
    s = FeatNet([(8, 32, 32), (8, 4, 4)])  # 4 x 4 against the teacher's 32 x 32: no ConvReg branch
    with pytest.raises(ValueError, match=r"HINT_LAYER 1: student st map \(8, 4, 4\) vs teacher te map "
                                         r"\(16, 32, 32\) at 32 x 32 inputs: ConvReg cannot map"):
        FitNet(s, t, hint_layer=1, names=("st", "te"))


# ---- the construction probe (FitNet, VID): eval mode unless PROBE_TRAIN_MODE ------------------------
@pytest.mark.parametrize("cls", [FitNet, VID])
def test_probe_leaves_teacher_bn_statistics_alone_by_default_and_moves_them_under_the_switch(cls):
    s, t = _pair()
    before = _bn_state(t)
    d = cls(s, t)
    assert _same(before, _bn_state(t)) and not t.training
    s, t = _pair()
    before = _bn_state(t)
    d = cls(s, t, probe_train_mode=True)  # MDistiller: one momentum step towards noise statistics
    after = _bn_state(t)
    assert not _same(before, after)
    assert after["bn1.num_batches_tracked"].item() == before["bn1.num_batches_tracked"].item() + 1
    assert not d.teacher.training  # mode restored


# ---- VID ---------------------------------------------------------------------------------------------
def test_vid_loss_golden_gaussian_nll_with_identity_regressor():
    f_t = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    ls = torch.tensor([init_log_scale(5.0, 1e-5)])  # variance exactly 5
    expected = 0.5 * (7.5 / 5.0 + math.log(5.0))  # mean of f_t^2 is 7.5
    assert vid_loss(nn.Identity(), ls, torch.zeros_like(f_t), f_t).item() == pytest.approx(expected, rel=1e-6)


def test_vid_loss_pools_the_larger_map_before_the_regressor_golden():
    big = torch.arange(16.0).view(1, 1, 4, 4)  # 2x2 average pooling -> [[2.5, 4.5], [10.5, 12.5]]
    small = torch.zeros(1, 1, 2, 2)
    var = math.log(2.0)  # softplus(0)
    expected = 0.5 * (73.25 / var + math.log(var))  # mean of the pooled squares is 73.25
    assert vid_loss(nn.Identity(), torch.zeros(1), big, small, eps=0.0).item() == pytest.approx(expected, rel=1e-6)
    assert vid_loss(nn.Identity(), torch.zeros(1), small, big, eps=0.0).item() == pytest.approx(expected, rel=1e-6)


def test_vid_loss_uses_one_variance_per_teacher_channel_numpy_reference():
    rng = np.random.default_rng(0)
    f_s, f_t = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 2, 2, 2))
    w = rng.normal(size=(2, 3))  # a linear 1x1 regressor, no bias
    log_scale = np.array([-1.0, 2.0])
    reg = conv1x1(3, 2)
    reg.weight.data = torch.tensor(w, dtype=torch.float32).view(2, 3, 1, 1)
    got = vid_loss(reg, torch.tensor(log_scale, dtype=torch.float32), torch.tensor(f_s, dtype=torch.float32),
                   torch.tensor(f_t, dtype=torch.float32), eps=1e-5).item()
    pooled = f_s.reshape(2, 3, 2, 2, 2, 2).mean(axis=(3, 5))  # 4x4 -> 2x2 blocks
    total = 0.0
    for n, c, h, x in itertools.product(range(2), range(2), range(2), range(2)):
        mu = sum(w[c, k] * pooled[n, k, h, x] for k in range(3))
        var = math.log1p(math.exp(log_scale[c])) + 1e-5
        total += 0.5 * ((mu - f_t[n, c, h, x]) ** 2 / var + math.log(var))
    assert got == pytest.approx(total / 16, rel=1e-5)


def test_vid_loss_rejects_unequal_non_square_maps_but_not_equal_ones():
    with pytest.raises(ValueError, match=r"square maps only: student map \(4, 6\), teacher map \(2, 2\)"):
        vid_loss(nn.Identity(), torch.zeros(1), torch.zeros(1, 1, 4, 6), torch.zeros(1, 1, 2, 2))
    same = torch.ones(1, 1, 2, 3)  # no pooling needed: allowed, as MDistiller computes it right
    assert vid_loss(nn.Identity(), torch.zeros(1), same, same, eps=0.0).item() == pytest.approx(
        0.5 * math.log(math.log(2.0)))


def test_vid_regressor_and_initial_variance_are_mdistillers():
    s, t = _pair("resnet8", "resnet8x4")
    d = VID(s, t)
    assert len(d.regressors) == 3 and len(d.log_scales) == 3
    convs = [m for m in d.regressors[0] if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.bias) for c in convs] == [
        (16, 64, (1, 1), None), (64, 64, (1, 1), None), (64, 64, (1, 1), None)]
    assert [type(m) for m in d.regressors[0]] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.Conv2d]
    for ls, c in zip(d.log_scales, (64, 128, 256)):
        assert ls.shape == (c,)
        assert ls[0].item() == pytest.approx(4.9932, abs=1e-4)  # inverse softplus of 5 - 1e-5
        assert torch.allclose(F.softplus(ls) + 1e-5, torch.full((c,), 5.0))


def test_vid_variance_learnable_by_default_fixed_buffer_under_the_switch_checkpointed_both_ways():
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    s, t = _pair()
    learn = VID(s, t)
    regressors = sum(p.numel() for p in learn.regressors.parameters())
    assert learn.extra_parameter_count() == regressors + 16 + 32 + 64  # the variances train and count
    assert any(p is learn.log_scales[0] for p in learn.learnable_parameters())
    s, t = _pair()
    fixed = VID(s, t, learn_variance=False)
    assert fixed.extra_parameter_count() == regressors  # MDistiller's count: regressors only
    assert not any(n.startswith("log_scales") for n, _ in fixed.named_parameters())
    for d in (learn, fixed):  # the same checkpoint keys either way
        assert {"log_scales.0", "log_scales.1", "log_scales.2"} <= set(d.extra_state_dict())
    sum(learn.forward_train(x, y, {})[1].values()).backward()
    assert learn.log_scales[0].grad is not None and learn.log_scales[0].grad.abs().sum() > 0
    state = fixed.extra_state_dict()
    state["log_scales.1"] = torch.zeros(32)
    fixed.load_extra_state_dict(state)  # restored on resume
    assert torch.equal(fixed.log_scales[1], torch.zeros(32))


def test_vid_rejects_a_pair_whose_unequal_maps_are_not_square_naming_the_entry():
    s, t = _pair("resnet8", "vgg8")  # resnet 32 x 48 vs vgg 16 x 24 at entry 1
    with pytest.warns(UserWarning, match="4 feature entries and teacher te 5; stages are paired by position"):
        with pytest.raises(ValueError, match=r"VID: feature entry 1: student st map \(16, 32, 48\) vs teacher te map"):
            VID(s, t, input_size=(32, 48), names=("st", "te"))


# ---- KDSVD -------------------------------------------------------------------------------------------
def test_removenan_zeroes_nan_and_infinities_only():
    x = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), -2.0])
    assert removenan(x).tolist() == [1.0, 0.0, 0.0, 0.0, -2.0]


def test_svd_reads_mdistillers_chxw_matrix_or_repdistillers_hwxc_and_normalises():
    torch.manual_seed(0)
    f = torch.randn(2, 3, 4, 5)
    u, s, v = svd(f, n=0)  # no truncation: reconstructs the (C*H) x W matrix
    assert u.shape == (2, 12, 5) and s.shape == (2, 5) and v.shape == (2, 5, 5)
    assert torch.allclose(u @ torch.diag_embed(s) @ v.transpose(1, 2), f.reshape(2, 12, 5), atol=1e-5)
    u, s, v = svd(f, n=0, layout="HWxC")  # (H*W) x C: rows are positions, columns channels
    assert v.shape == (2, 3, 3)
    m = f.permute(0, 2, 3, 1).reshape(2, 20, 3)
    assert torch.allclose(u @ torch.diag_embed(s) @ v.transpose(1, 2), m, atol=1e-5)
    u, s, v = svd(f, n=2)
    assert u.shape == (2, 12, 2) and s.shape == (2, 2) and v.shape == (2, 5, 2)
    assert torch.allclose(s.norm(dim=1), torch.ones(2)) and torch.allclose(v.norm(dim=1), torch.ones(2, 2))
    _, s1, _ = svd(f, n=1)
    assert torch.equal(s1, torch.ones(2, 1))  # one kept value normalises to 1


def test_align_rsv_keeps_the_student_vector_of_largest_abs_cosine_with_its_sign():
    a = torch.eye(3)[:, :2].unsqueeze(0)  # student vectors e0, e1
    b = torch.tensor([[[-0.6, -0.9, 0.5], [0.8, 0.1, -0.5], [0.0, 0.0, 0.0]]])  # three teacher vectors
    aligned, same_b = align_rsv(a, b)
    assert same_b is b and aligned.shape == (1, 3, 3)
    # cosines: [-0.6, 0.8] -> +e1; [-0.9, 0.1] -> -e0; [0.5, -0.5] a tie -> e0 - e1 (both kept)
    assert aligned[0].T.tolist() == [[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [1.0, -1.0, 0.0]]


def _kdsvd_hand_case():
    """Two stages, one sample, 2 x 2 matrices whose right singular vectors are known exactly.

    Teacher: stage A diag(3, 1) -> v = ±(1, 0); stage B diag(1, 2) -> v = ±(0, 1).
    Student: stage A diag(1, 3) -> columns (0, 1), (1, 0): aligned to teacher A it is the same ±(1, 0);
    stage B has right singular vectors (cos 30, sin 30) (value 2) and (-sin 30, cos 30) (value 1): the
    second has the larger |cosine| with (0, 1), so the aligned vector is ±(-0.5, 0.866).
    """
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    mats = {
        "tA": [[3.0, 0.0], [0.0, 1.0]], "tB": [[1.0, 0.0], [0.0, 2.0]],
        "sA": [[1.0, 0.0], [0.0, 3.0]], "sB": [[2 * c, 2 * s], [-s, c]],  # diag(2, 1) @ V^T
    }
    # the two stages' signs are LAPACK's: only their product r matters (the RBF reads differences)
    values = []
    for r in (1.0, -1.0):
        t_a, t_b = (1.0, 0.0), (0.0, r)
        s_a, s_b = (1.0, 0.0), (-s * r, c * r)
        total = 0.0
        for i, j in itertools.product(range(2), range(2)):
            t_rbf = math.exp(-((t_b[i] - t_a[j]) ** 2) / 8)
            s_rbf = math.exp(-((s_b[i] - s_a[j]) ** 2) / 8)
            total += (s_rbf - t_rbf) ** 2
        values.append(total)
    return {k: torch.tensor(v) for k, v in mats.items()}, values


def test_kdsvd_loss_golden_on_matrices_with_known_singular_vectors_both_layouts():
    m, values = _kdsvd_hand_case()
    assert abs(values[0] - values[1]) > 1e-3  # the two sign outcomes are told apart
    chxw = {k: v.view(1, 1, 2, 2) for k, v in m.items()}  # C = 1, H = 2, W = 2: the matrix itself
    got = kdsvd_loss([chxw["sA"], chxw["sB"]], [chxw["tA"], chxw["tB"]], k=1).item()
    assert min(abs(got - v) for v in values) < 1e-6
    hwxc = {k: v.T.reshape(1, 2, 1, 2) for k, v in m.items()}  # C = 2, H = 1, W = 2: rows = positions
    got_rep = kdsvd_loss([hwxc["sA"], hwxc["sB"]], [hwxc["tA"], hwxc["tB"]], k=1, layout="HWxC").item()
    assert min(abs(got_rep - v) for v in values) < 1e-6
    # the batch mean: the same sample twice gives the same value
    twice = kdsvd_loss([torch.cat([chxw["sA"]] * 2), torch.cat([chxw["sB"]] * 2)],
                       [torch.cat([chxw["tA"]] * 2), torch.cat([chxw["tB"]] * 2)], k=1).item()
    assert twice == pytest.approx(got, abs=1e-6)


def _numpy_kdsvd_candidates(g_s, g_t, k):
    """Every value KDSVD can take on these maps under some sign choice of the teacher's singular vectors
    (one sample; the student's follow the teacher's through the alignment). A plain re-statement of the
    method: per stage the (C*H) x W matrix, numpy's SVD, argmax alignment, RBF by explicit loops."""
    def right_vectors(f, n):
        _, c, h, w = f.shape
        _, sv, vt = np.linalg.svd(f[0].reshape(c * h, w).astype(np.float64), full_matrices=False)
        return vt[:n].T, sv[:n] / np.linalg.norm(sv[:n])  # (W, n) unit columns, normalised values

    stages = []
    for f_s, f_t in zip(g_s, g_t):
        v_t, s_t = right_vectors(f_t, k)
        v_s, _ = right_vectors(f_s, k + 3)
        stages.append((v_t, v_s, s_t))
    candidates = set()
    for signs in itertools.product((1.0, -1.0), repeat=len(stages) * k):
        vecs = []
        for i, (v_t, v_s, s_t) in enumerate(stages):
            t_cols, s_cols = [], []
            for j in range(k):
                t = v_t[:, j] * signs[i * k + j]
                cos = v_s.T @ t
                best = int(np.argmax(np.abs(cos)))
                t_cols.append(t * s_t[j])
                s_cols.append(v_s[:, best] * np.sign(cos[best]) * s_t[j])
            vecs.append((t_cols, s_cols))
        total = 0.0
        for (t_prev, s_prev), (t_cur, s_cur) in zip(vecs, vecs[1:]):
            for j in range(k):
                for a in range(len(t_cur[j])):
                    for b in range(len(t_prev[j])):
                        t_rbf = math.exp(-((t_cur[j][a] - t_prev[j][b]) ** 2) / 8)
                        s_rbf = math.exp(-((s_cur[j][a] - s_prev[j][b]) ** 2) / 8)
                        total += (s_rbf - t_rbf) ** 2
        candidates.add(round(total, 9))
    return sorted(candidates)


@pytest.mark.parametrize("k", [1, 2])
def test_kdsvd_loss_matches_a_numpy_restatement_up_to_the_svd_sign_convention(k):
    torch.manual_seed(k)
    shapes_s = [(1, 2, 3, 8), (1, 3, 2, 6), (1, 4, 2, 5)]
    shapes_t = [(1, 3, 4, 8), (1, 2, 5, 6), (1, 5, 1, 5)]  # channels and heights differ, widths equal
    g_s = [torch.randn(s, dtype=torch.float64).float() for s in shapes_s]
    g_t = [torch.randn(s, dtype=torch.float64).float() for s in shapes_t]
    got = kdsvd_loss(g_s, g_t, k).item()
    candidates = _numpy_kdsvd_candidates([f.numpy() for f in g_s], [f.numpy() for f in g_t], k)
    assert len(candidates) > 1  # the sign convention matters on these inputs
    assert min(abs(got - c) for c in candidates) < 1e-5 * max(1.0, got)


def test_kdsvd_loss_is_zero_for_a_student_equal_to_the_teacher_and_integer_zero_for_one_stage():
    torch.manual_seed(0)
    g = [torch.randn(2, 3, 4, 6), torch.randn(2, 2, 3, 6)]
    assert kdsvd_loss(g, [f.clone() for f in g], 1).item() == pytest.approx(0.0, abs=1e-10)
    assert kdsvd_loss(g[:1], g[:1], 1) == 0 and isinstance(kdsvd_loss(g[:1], g[:1], 1), int)


def test_kdsvd_loss_names_the_stage_whose_widths_or_channels_differ():
    a, b = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 2)
    with pytest.raises(ValueError, match=r"equal width: stage 1 student map \(4, 4, 4\), teacher map \(4, 4, 2\)"):
        kdsvd_loss([a, a], [a, b], 1)
    with pytest.raises(ValueError, match=r"HWxC\) needs equal channels: stage 0"):
        kdsvd_loss([torch.randn(1, 3, 4, 4)], [a], 1, layout="HWxC")


def test_kdsvd_distiller_checks_the_pair_at_construction_for_its_layout():
    s, t = _pair("resnet8", "vgg8")  # entry 1: width 32 vs 16
    with pytest.warns(UserWarning, match="paired by position"):
        with pytest.raises(ValueError, match=r"CHxW needs equal width .* entry 1 is \(16, 32, 32\) for student st "
                                             r"and \(128, 16, 16\) for teacher te"):
            KDSVD(s, t, names=("st", "te"))
    s, t = _pair("resnet8", "resnet8x4")  # equal widths, channels 16 vs 64
    assert KDSVD(s, t).layers == ("feats.1", "feats.2", "feats.3")
    with pytest.raises(ValueError, match=r"HWxC needs equal channels"):
        KDSVD(s, t, layout="HWxC")
    assert KDSVD(*_pair("resnet8", "resnet20"), layout="HWxC").extra_parameter_count() == 0


def test_from_config_builds_each_distiller_with_its_section_and_names_the_config_models():
    raw = {"DISTILLER": {"TYPE": "KDSVD", "TEACHER": "vgg8", "STUDENT": "resnet8"}}
    cfg = build_run_config(raw, quiet=True)
    s, t = _pair("resnet8", "vgg8")
    with pytest.warns(UserWarning), pytest.raises(
            ConfigError, match="KDSVD cannot distil vgg8 -> resnet8: .*student resnet8 and .* teacher vgg8"):
        build_distiller(cfg, s, t, 10)  # the constructor's ValueError, as the user sees it
    raw = {"DISTILLER": {"TYPE": "VID", "TEACHER": "resnet20", "STUDENT": "resnet8"},
           "VID": {"LEARN_VARIANCE": False, "EPS": 1e-4}, "FITNET": {"HINT_LAYER": 3, "LOSS": {"FEAT_WEIGHT": 7}},
           "KDSVD": {"K": 2, "SVD_LAYOUT": "HWxC"}}
    cfg = build_run_config(raw, quiet=True)
    vid = VID.from_config(cfg, *_pair(), 10)
    assert vid.eps == 1e-4 and not isinstance(vid.log_scales, nn.ParameterList)
    fit = FitNet.from_config(cfg, *_pair(), 10)
    assert fit.hint_layer == 3 and fit.feat_weight == 7 and fit.target_spec()["layers"] == ("feats.3",)
    kd = KDSVD.from_config(cfg, *_pair(), 10)
    assert (kd.k, kd.layout) == (2, "HWxC")


# ---- one training step of each on a real pair --------------------------------------------------------
@pytest.mark.parametrize("make, extra", [
    (lambda s, t: FitNet(s, t), "conv_reg."),
    (lambda s, t: VID(s, t), "regressors."),
    (lambda s, t: VID(s, t), "log_scales."),
    (lambda s, t: KDSVD(s, t), None),
])
def test_forward_train_gives_finite_weighted_losses_and_grads_reach_student_and_extras_not_teacher(make, extra):
    s, t = _pair()
    d = make(s, t)
    d.train()
    assert not d.teacher.training
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    logits, losses = d.forward_train(x, y, {})
    assert logits.shape == (4, 10) and set(losses) == {"loss_ce", "loss_kd"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    assert losses["loss_ce"].item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert losses["loss_kd"].item() > 0
    losses["loss_kd"].backward()  # the distillation term alone reaches the student and the extras
    assert all(p.grad is None for p in d.teacher.parameters())
    grads = {n: p.grad for n, p in d.named_parameters() if not n.startswith("teacher.")}
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("student.layer1"))
    if extra:
        assert any(n.startswith(extra) for n in grads)
        assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(extra))


@pytest.mark.parametrize("make", [lambda s, t: FitNet(s, t, feat_weight=3.0), lambda s, t: VID(s, t, feat_weight=3.0),
                                  lambda s, t: KDSVD(s, t, feat_weight=3.0, ce_weight=0.5)])
def test_losses_come_from_the_targets_alone_so_cached_targets_give_the_same_values(make):
    s, t = _pair()
    d = make(s, t)
    d.eval()  # deterministic BN for the comparison
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    _, live = d.forward_train(x, y, {})
    cached = {k: v.clone() for k, v in d.live_targets(x).items()}
    calls = []
    d.teacher.register_forward_hook(lambda *a: calls.append(1))
    _, from_cache = d.forward_train(x, y, {"teacher_targets": cached})
    assert calls == []  # the teacher is not run when the targets are given
    for k in live:
        assert from_cache[k].item() == pytest.approx(live[k].item(), rel=1e-6)
