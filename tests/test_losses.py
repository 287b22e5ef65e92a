"""Golden values and invariants of the loss functions (docs/contracts.md, C2) and the distillers (C3)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from catkd.distillers.cat_kd import CATKD, binarize_cams, cat_loss, select_cams
from catkd.distillers.dkd import DKD, dkd_loss
from catkd.distillers.kd import KD, kd_loss
from catkd.distillers.vanilla import Vanilla


# ---- cat_loss -------------------------------------------------------------------------------
def test_cat_loss_pools_to_resolution_then_mse_mean_golden():
    s = torch.arange(16.0).view(1, 1, 4, 4)  # 2x2 pooling -> [[2.5, 4.5], [10.5, 12.5]]
    assert cat_loss(s, torch.zeros_like(s), resolution=2, normalize=False).item() == pytest.approx(73.25)


def test_cat_loss_normalizes_each_map_by_its_l2_norm_golden():
    s = torch.arange(16.0).view(1, 1, 4, 4)
    t = torch.ones(1, 1, 4, 4)  # pooled and normalised: 0.5 everywhere
    assert cat_loss(s, t, resolution=2, normalize=True).item() == pytest.approx(0.0618453212, rel=1e-6)


def test_cat_loss_averages_over_samples_classes_and_positions_golden():
    s = torch.tensor([[[[1.0, 2], [3, 4]], [[-1, 0], [0, 1]]]])
    t = torch.tensor([[[[0.0, 1], [0, 1]], [[2, 2], [2, -2]]]])
    # R=1: pooled s = [2.5, 0], t = [0.5, 1.0] -> ((2)^2 + (-1)^2) / 2
    assert cat_loss(s, t, 1, False).item() == pytest.approx(2.5)
    assert cat_loss(s, t, 2, True).item() == pytest.approx(0.4831275940, rel=1e-6)


def test_cat_loss_compares_maps_of_different_sizes_at_the_common_resolution():
    s = torch.randn(3, 5, 8, 8)
    t = F.interpolate(F.adaptive_avg_pool2d(s, 4), size=4)  # teacher 4x4 with the same 2x2 content
    assert cat_loss(s, t, 2, True).item() == pytest.approx(0.0, abs=1e-10)
    assert cat_loss(s, t, 2, False).item() == pytest.approx(0.0, abs=1e-10)


def test_cat_loss_normalize_is_scale_invariant_and_zero_maps_do_not_nan():
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert cat_loss(7.0 * s, t, 2, True).item() == pytest.approx(cat_loss(s, t, 2, True).item(), rel=1e-5)
    z = cat_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4), 2, True)
    assert torch.isfinite(z) and z.item() == 0.0


def test_cat_loss_gradient_flows_to_student_only_when_teacher_detached():
    s = torch.randn(2, 4, 4, 4, requires_grad=True)
    loss = cat_loss(s, torch.randn(2, 4, 4, 4), 2, True)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


# ---- binarize -------------------------------------------------------------------------------
def test_binarize_thresholds_at_mean_absolute_value_per_map():
    cams = torch.tensor([[[[1.0, -3.0], [2.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    # map 0: mean |A| = 1.5 -> only 2.0 is above; map 1: all equal the threshold -> none strictly above
    out = binarize_cams(cams)
    assert out.tolist() == [[[[0.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]]
    assert out.dtype == cams.dtype


def test_binarize_output_is_zero_one_and_per_sample_class():
    cams = torch.randn(4, 6, 5, 5)
    out = binarize_cams(cams)
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    t = cams.abs().mean((2, 3), keepdim=True)
    assert torch.equal(out.bool(), cams > t)


# ---- select_cams ----------------------------------------------------------------------------
@pytest.mark.parametrize("k", [2, 7, 100, 1000])
@pytest.mark.parametrize("strategy", [0, 1])
def test_select_cams_keeps_exactly_n_classes_for_any_class_count(k, strategy):
    torch.manual_seed(k)
    n_batch = 3
    logits = torch.randn(n_batch, k)
    s, t = torch.randn(n_batch, k, 4, 4), torch.randn(n_batch, k, 2, 2)
    for n in sorted({1, max(1, k // 2), k - 1 if k > 1 else 1, k}):
        ss, tt = select_cams(s, t, logits, n, strategy)
        assert ss.shape == (n_batch, n, 4, 4) and tt.shape == (n_batch, n, 2, 2)
        for i in range(n_batch):
            ranked = logits[i].argsort(descending=strategy == 0)[:n]
            assert set(ranked.tolist()) == {int((s[i] == ss[i, j]).all((1, 2)).nonzero()[0]) for j in range(n)}
            for j in range(n):  # same class in student and teacher
                c = int((s[i] == ss[i, j]).all((1, 2)).nonzero()[0])
                assert torch.equal(t[i, c], tt[i, j])


def test_select_cams_breaks_ties_by_class_index_and_counts_stay_exact():
    logits = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0]])  # three-way tie at the top
    cams = torch.arange(5.0).view(1, 5, 1, 1).expand(1, 5, 2, 2).contiguous()
    top, _ = select_cams(cams, cams, logits, 2, strategy=0)
    assert top[0, :, 0, 0].tolist() == [1.0, 2.0]
    low, _ = select_cams(cams, cams, torch.zeros(1, 5), 3, strategy=1)  # all tied
    assert low[0, :, 0, 0].tolist() == [0.0, 1.0, 2.0]


def test_select_cams_rejects_n_out_of_range():
    x = torch.randn(1, 4, 2, 2)
    with pytest.raises(ValueError, match="1..4"):
        select_cams(x, x, torch.randn(1, 4), 5, 0)
    with pytest.raises(ValueError, match="Strategy"):
        select_cams(x, x, torch.randn(1, 4), 2, 2)


# ---- KD -------------------------------------------------------------------------------------
def test_kd_loss_golden_value_and_zero_for_equal_logits():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])  # softmax(t/1) = [0.75, 0.25]
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_loss(s, t, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # float64 and a fixed draw: in float32, 16 x (rounding of a zero KL) can reach 1e-6
    z = torch.randn(4, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert kd_loss(z, z, 4.0).item() == pytest.approx(0.0, abs=1e-12)
    # temperature scaling: multiplied by T^2
    assert kd_loss(s * 2, t * 2, 2.0).item() == pytest.approx(4 * expected, rel=1e-5)


# ---- DKD (docs/contracts.md, C2b) ---------------------------------------------------------------------
# By hand, K = 3, target 0, T = 1: student logits 0 -> p_s = (1/3, 1/3, 1/3), binary (1/3, 2/3),
# non-target (1/2, 1/2); teacher logits (ln 4, ln 2, 0) -> p_t = (4/7, 2/7, 1/7), binary
# (4/7, 3/7), non-target (2/3, 1/3).
_TCKD = 4 / 7 * math.log((4 / 7) / (1 / 3)) + 3 / 7 * math.log((3 / 7) / (2 / 3))  # 0.118641
_NCKD = 2 / 3 * math.log((2 / 3) / (1 / 2)) + 1 / 3 * math.log((1 / 3) / (1 / 2))  # 0.056633
_S = torch.tensor([[0.0, 0.0, 0.0]])
_T = torch.tensor([[math.log(4.0), math.log(2.0), 0.0]])


def test_dkd_loss_golden_value_alpha_tckd_plus_beta_nckd():
    y = torch.tensor([0])
    assert _TCKD == pytest.approx(0.1186411, abs=1e-6) and _NCKD == pytest.approx(0.0566330, abs=1e-6)
    assert dkd_loss(_S, _T, y, 1.0, 0.0, 1.0).item() == pytest.approx(_TCKD, rel=1e-5)
    assert dkd_loss(_S, _T, y, 0.0, 1.0, 1.0).item() == pytest.approx(_NCKD, rel=1e-5)
    assert dkd_loss(_S, _T, y, 1.0, 8.0, 1.0).item() == pytest.approx(_TCKD + 8 * _NCKD, rel=1e-5)  # 0.571705


def test_dkd_loss_scales_by_t_squared_and_averages_over_the_batch():
    y = torch.tensor([0])
    # logits x T at temperature T: same distributions, loss times T^2
    assert dkd_loss(_S * 4, _T * 4, y, 1.0, 8.0, 4.0).item() == pytest.approx(16 * (_TCKD + 8 * _NCKD), rel=1e-4)
    # a second sample whose distributions agree adds 0: the batch mean halves the loss
    s2, t2, y2 = torch.cat([_S, _T]), torch.cat([_T, _T]), torch.tensor([0, 0])
    assert dkd_loss(s2, t2, y2, 1.0, 8.0, 1.0).item() == pytest.approx((_TCKD + 8 * _NCKD) / 2, rel=1e-5)
    # equal logits: both parts vanish, whichever class is the target
    z = torch.randn(4, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert dkd_loss(z, z, torch.tensor([1, 2, 3, 4]), 1.0, 8.0, 4.0).item() == pytest.approx(0.0, abs=1e-10)


def _mdistiller_dkd(logits_student, logits_teacher, target, alpha, beta, temperature):
    """MDistiller's dkd_loss as published (mdistiller/distillers/DKD.py), for an equality check."""
    gt_mask = torch.zeros_like(logits_student).scatter_(1, target.unsqueeze(1), 1).bool()
    other_mask = torch.ones_like(logits_student).scatter_(1, target.unsqueeze(1), 0).bool()

    def cat_mask(t, m1, m2):
        return torch.cat([(t * m1).sum(dim=1, keepdims=True), (t * m2).sum(1, keepdims=True)], dim=1)

    pred_student = cat_mask(F.softmax(logits_student / temperature, dim=1), gt_mask, other_mask)
    pred_teacher = cat_mask(F.softmax(logits_teacher / temperature, dim=1), gt_mask, other_mask)
    tckd = F.kl_div(torch.log(pred_student), pred_teacher, reduction="sum") * temperature**2 / target.shape[0]
    pt2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    ls2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
    nckd = F.kl_div(ls2, pt2, reduction="sum") * temperature**2 / target.shape[0]
    return alpha * tckd + beta * nckd


def test_dkd_loss_equals_mdistillers_code_on_random_logits():
    g = torch.Generator().manual_seed(0)
    for k, n in ((5, 3), (100, 64)):
        s, t = torch.randn(n, k, generator=g) * 3, torch.randn(n, k, generator=g) * 3
        y = torch.randint(0, k, (n,), generator=g)
        for alpha, beta, temp in ((1.0, 8.0, 4.0), (0.5, 2.0, 1.0)):
            assert dkd_loss(s, t, y, alpha, beta, temp).item() == pytest.approx(
                _mdistiller_dkd(s, t, y, alpha, beta, temp).item(), rel=1e-5)


def test_dkd_distiller_ramps_the_dkd_term_over_warmup_epochs_and_uses_teacher_logits_with_bias():
    torch.manual_seed(0)
    d = DKD(TinyCAMNet(5, 4, True), TinyCAMNet(5, 2, True), ce_weight=1.0, alpha=1.0, beta=8.0,
            temperature=4.0, warmup=20)
    nn.init.constant_(d.teacher.fc.bias, 0.5)
    d.teacher.fc.bias.data[0] = 3.0  # a bias that changes the teacher's distribution
    d.train()
    assert not d.teacher.training
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    full = dkd_loss(d.student(x)[0], d.teacher(x)[0], y, 1.0, 8.0, 4.0).item()
    for epoch, ramp in ((1, 1 / 20), (10, 0.5), (20, 1.0), (41, 1.0)):
        logits, losses = d.forward_train(x, y, {"epoch": epoch})
        assert set(losses) == {"loss_ce", "loss_dkd"}
        assert losses["loss_dkd"].item() == pytest.approx(ramp * full, rel=1e-5)
        assert losses["loss_ce"].item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in d.teacher.parameters())


# ---- distillers (docs/contracts.md, C3) ---------------------------------------------------------------
class TinyCAMNet(nn.Module):
    """A minimal model with the C1 forward contract, for distiller tests without the zoo."""

    def __init__(self, k: int, hw: int, bias: bool):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(hw)
        self.fc = nn.Linear(8, k, bias=bias)

    def forward(self, x):
        f = self.pool(torch.relu(self.bn(self.conv(x))))
        cams = torch.einsum("kc,nchw->nkhw", self.fc.weight, f)
        return self.fc(f.mean((2, 3))), {"cams": cams}


def _catkd(**kw):
    torch.manual_seed(0)
    return CATKD(TinyCAMNet(5, 4, False), TinyCAMNet(5, 2, True), **{"beta": 10.0, "resolution": 2, **kw})


def test_catkd_returns_weighted_ce_and_cat_terms_and_teacher_stays_eval():
    d = _catkd(ce_weight=0.5)
    d.train()
    assert d.student.training and not d.teacher.training
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    logits, losses = d.forward_train(x, y, {})
    assert set(losses) == {"loss_ce", "loss_cat"}
    assert losses["loss_ce"].item() == pytest.approx(0.5 * F.cross_entropy(logits, y).item(), rel=1e-6)
    _, sf = d.student(x)
    _, tf = d.teacher(x)
    raw = cat_loss(sf["cams"], tf["cams"], 2, True)
    assert losses["loss_cat"].item() == pytest.approx(10.0 * raw.item(), rel=1e-5)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in d.teacher.parameters())
    assert any(p.grad is not None for p in d.student.parameters())


@pytest.mark.parametrize("make", [lambda: _catkd(), lambda: KD(TinyCAMNet(5, 4, True), TinyCAMNet(5, 2, True), 4.0, 0.1, 0.9)])
def test_teacher_runs_before_the_student_so_its_activations_reuse_free_memory(make):
    # measured: student-first made a CPU CAT-KD step 1.15-1.19x its compute floor, teacher-first 1.02x
    d = make()
    d.train()
    order = []
    d.teacher.register_forward_hook(lambda *a: order.append("teacher"))
    d.student.register_forward_hook(lambda *a: order.append("student"))
    d.forward_train(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), {})
    assert order == ["teacher", "student"]


def test_catkd_only_cat_has_no_ce_term_whatever_ce_weight():
    d = _catkd(only_cat=True, ce_weight=1.0)
    _, losses = d.forward_train(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), {})
    assert set(losses) == {"loss_cat"}


def test_catkd_binarize_and_partial_use_teacher_bias_free_logits():
    d = _catkd(binarize=True, partial_n=2, strategy=1, normalize=True)
    x = torch.randn(3, 3, 8, 8)
    _, losses = d.forward_train(x, torch.tensor([0, 1, 2]), {})
    _, sf = d.student(x)
    _, tf = d.teacher(x)
    t_logits = tf["cams"].mean((2, 3))  # bias dropped
    ss, tt = select_cams(sf["cams"], binarize_cams(tf["cams"]), t_logits, 2, 1)
    assert losses["loss_cat"].item() == pytest.approx(10.0 * cat_loss(ss, tt, 2, True).item(), rel=1e-5)


def test_kd_and_vanilla_distillers_follow_the_contract():
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    logits, losses = Vanilla(TinyCAMNet(5, 4, True)).forward_train(x, y, {})
    assert set(losses) == {"loss_ce"} and logits.shape == (2, 5)
    kd = KD(TinyCAMNet(5, 4, True), TinyCAMNet(5, 2, True), temperature=4.0, ce_weight=0.1, kd_weight=0.9)
    kd.train()
    assert not kd.teacher.training
    _, losses = kd.forward_train(x, y, {})
    assert set(losses) == {"loss_ce", "loss_kd"}
