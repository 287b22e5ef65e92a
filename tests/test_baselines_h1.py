"""AT, NST, SP, PKT, RKD: golden values of the pure losses (worked out by hand, or from a plain
numpy re-implementation of the published formula), MDistiller's defaults, and the distillers on a
real pair (resnet20 -> resnet8, 32 px)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import catkd.distillers  # noqa: F401  (registers the sections)
from catkd.config import SECTIONS
from catkd.distillers import DISTILLERS
from catkd.distillers.at import AT, at_loss, single_stage_at_loss
from catkd.distillers.nst import NST, nst_loss, poly_kernel, single_stage_nst_loss
from catkd.distillers.pkt import PKT, pkt_loss
from catkd.distillers.rkd import RKD, _pdist, rkd_loss
from catkd.distillers.sp import SP, similarity_loss, sp_loss
from catkd.engine.validate import build_run_config
from catkd.models import build_model

SQ2 = math.sqrt(2.0)


# ---- independent numpy references (loops over samples / pairs, float64) -----------------------
def _block_mean(x: np.ndarray, h: int) -> np.ndarray:
    n, c, H, _ = x.shape
    return x.reshape(n, c, h, H // h, h, H // h).mean(axis=(3, 5))


def _square_pair(s: np.ndarray, t: np.ndarray):
    if s.shape[2] > t.shape[2]:
        return _block_mean(s, t.shape[2]), t
    if s.shape[2] < t.shape[2]:
        return s, _block_mean(t, s.shape[2])
    return s, t


def at_ref(g_s, g_t, p):
    total = 0.0
    for s, t in zip(g_s, g_t):
        s, t = _square_pair(s, t)
        sq, count = 0.0, 0
        for i in range(s.shape[0]):
            a = (s[i] ** p).mean(axis=0).ravel()
            b = (t[i] ** p).mean(axis=0).ravel()
            a, b = a / max(np.linalg.norm(a), 1e-12), b / max(np.linalg.norm(b), 1e-12)
            sq += ((a - b) ** 2).sum()
            count += a.size
        total += sq / count
    return total


def nst_ref(g_s, g_t):
    total = 0.0
    for s, t in zip(g_s, g_t):
        s, t = _square_pair(s, t)
        per = []
        for i in range(s.shape[0]):
            S = s[i].reshape(s.shape[1], -1)
            T = t[i].reshape(t.shape[1], -1)
            S = S / np.maximum(np.linalg.norm(S, axis=1, keepdims=True), 1e-12)
            T = T / np.maximum(np.linalg.norm(T, axis=1, keepdims=True), 1e-12)
            per.append(((T @ T.T) ** 2).mean() + ((S @ S.T) ** 2).mean() - 2 * ((S @ T.T) ** 2).mean())
        total += np.mean(per)
    return total


def pkt_ref(f_s, f_t, eps=1e-7):
    def dist(f):
        n = len(f)
        u = [v / (np.linalg.norm(v) + eps) for v in f]
        P = np.array([[(u[i] @ u[j] + 1) / 2 for j in range(n)] for i in range(n)])
        return P / P.sum(axis=1, keepdims=True)

    ps, pt = dist(f_s), dist(f_t)
    return np.mean(pt * np.log((pt + eps) / (ps + eps)))


def _smooth_l1(x):
    x = np.abs(x)
    return np.where(x < 1, 0.5 * x**2, x - 0.5).mean()


def rkd_ref(f_s, f_t, squared=False, eps=1e-12, dw=25.0, aw=50.0):
    def dists(e):
        n = len(e)
        d = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                if i != j:
                    q = max(((e[i] - e[j]) ** 2).sum(), eps)
                    d[i, j] = q if squared else math.sqrt(q)
        return d / d[d > 0].mean()

    def angles(e):
        n = len(e)
        out = np.zeros((n, n, n))
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    u, v = e[j] - e[i], e[k] - e[i]
                    out[i, j, k] = (u / max(np.linalg.norm(u), 1e-12)) @ (v / max(np.linalg.norm(v), 1e-12))
        return out

    s, t = f_s.reshape(len(f_s), -1), f_t.reshape(len(f_t), -1)
    return dw * _smooth_l1(dists(s) - dists(t)) + aw * _smooth_l1(angles(s) - angles(t))


def sp_ref(f_s, f_t):
    n = len(f_s)
    s, t = f_s.reshape(n, -1), f_t.reshape(n, -1)
    total = 0.0
    for i in range(n):
        gs = np.array([s[i] @ s[j] for j in range(n)])
        gt = np.array([t[i] @ t[j] for j in range(n)])
        total += ((gt / np.linalg.norm(gt) - gs / np.linalg.norm(gs)) ** 2).sum()
    return total / n**2


def _t(x):
    return torch.from_numpy(x)


# ---- AT -------------------------------------------------------------------------------------
def test_at_hand_golden_one_map_against_a_flat_teacher():
    f_s = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # p=2: a = [1, 4, 9, 16] / sqrt(354)
    f_t = torch.ones(1, 1, 2, 2)  # a = [1/2] * 4
    # mean((a_s - 1/2)^2) = (|a_s|^2 - sum(a_s) + 1) / 4 = (2 - 30 / sqrt(354)) / 4
    expected = 0.5 - 7.5 / math.sqrt(354)
    assert single_stage_at_loss(f_s, f_t, 2).item() == pytest.approx(expected, rel=1e-6)
    assert at_loss([f_s], [f_t], 2).item() == pytest.approx(expected, rel=1e-6)


def test_at_pools_the_larger_map_to_the_smaller_hand_golden():
    f_s = torch.arange(16.0).view(1, 1, 4, 4)  # p=1, pooled 2x2: [2.5, 4.5, 10.5, 12.5]
    f_t = torch.ones(1, 3, 2, 2)
    a = torch.tensor([2.5, 4.5, 10.5, 12.5])
    expected = ((a / a.norm() - 0.5) ** 2).mean().item()
    assert single_stage_at_loss(f_s, f_t, 1).item() == pytest.approx(expected, rel=1e-6)
    assert single_stage_at_loss(f_t, f_s, 1).item() == pytest.approx(expected, rel=1e-6)  # symmetric rule


@pytest.mark.parametrize("p", [1, 2, 3])
def test_at_matches_numpy_reference_on_stage_lists_of_unequal_length(p):
    rng = np.random.default_rng(p)
    g_s = [rng.standard_normal((3, 4, 8, 8)), rng.standard_normal((3, 5, 4, 4)), rng.standard_normal((3, 2, 2, 2))]
    g_t = [rng.standard_normal((3, 6, 4, 4)), rng.standard_normal((3, 3, 4, 4))]  # zip: 2 pairs
    got = at_loss([_t(x) for x in g_s], [_t(x) for x in g_t], p)
    assert got.shape == () and got.item() == pytest.approx(at_ref(g_s, g_t, p), rel=1e-10)


def test_at_and_nst_reject_non_square_maps():
    sq, rect = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 2)
    for fn in (lambda s, t: single_stage_at_loss(s, t, 2), single_stage_nst_loss):
        with pytest.raises(ValueError, match="student feature map is 4 x 2"):
            fn(rect, sq)
        with pytest.raises(ValueError, match="teacher feature map is 4 x 2"):
            fn(sq, rect)


def test_at_loss_is_zero_for_equal_maps_and_gradient_reaches_student_only():
    f = torch.rand(2, 3, 4, 4)
    assert at_loss([f], [f.clone()], 2).item() == pytest.approx(0.0, abs=1e-12)
    s = torch.rand(2, 3, 4, 4, requires_grad=True)
    at_loss([s], [torch.rand(2, 5, 2, 2)], 2).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


# ---- NST ------------------------------------------------------------------------------------
def test_nst_hand_golden_two_one_hot_channels_against_a_flat_channel():
    f_s = torch.zeros(1, 2, 2, 2)
    f_s[0, 0, 0, 0] = 5.0  # normalised: e_1
    f_s[0, 1, 0, 1] = 2.0  # normalised: e_2
    f_t = torch.full((1, 1, 2, 2), 3.0)  # normalised: [1/2] * 4
    # k(t,t) = 1; k(s,s) = I -> mean 1/2; k(s,t) = (1/2)^2 each -> mean 1/4: 1 + 1/2 - 2/4
    assert single_stage_nst_loss(f_s, f_t).item() == pytest.approx(1.0, rel=1e-6)


def test_poly_kernel_is_squared_dot_product_of_every_row_pair():
    a = torch.tensor([[[1.0, 2.0], [0.0, 1.0], [1.0, 1.0]]])  # (1, 3, 2)
    b = torch.tensor([[[2.0, 0.0], [1.0, -1.0]]])  # (1, 2, 2)
    k = poly_kernel(a, b)  # (N, C_b, C_a): entry [j, i] = (a_i . b_j)^2
    assert k.tolist() == [[[4.0, 0.0, 4.0], [1.0, 1.0, 0.0]]]


def test_nst_matches_numpy_reference_with_pooling_and_unequal_channels():
    rng = np.random.default_rng(0)
    g_s = [rng.random((3, 4, 8, 8)), rng.standard_normal((3, 5, 2, 2))]
    g_t = [rng.random((3, 6, 4, 4)), rng.standard_normal((3, 3, 4, 4)), rng.random((3, 2, 2, 2))]
    got = nst_loss([_t(x) for x in g_s], [_t(x) for x in g_t])
    assert got.shape == () and got.item() == pytest.approx(nst_ref(g_s, g_t), rel=1e-10)


def test_nst_teacher_term_carries_no_gradient():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(2, 3, 4, 4, generator=g).requires_grad_(True)
    t = torch.rand(2, 3, 4, 4, generator=g).requires_grad_(True)
    single_stage_nst_loss(s, t).backward()
    assert s.grad.abs().sum() > 0
    # only the cross term reaches the teacher (k(t, t) is detached, as MDistiller)
    t2 = t.detach().clone().requires_grad_(True)
    cross = -2 * poly_kernel(F.normalize(s.detach().flatten(2), dim=2), F.normalize(t2.flatten(2), dim=2)).mean()
    cross.backward()
    assert torch.allclose(t.grad, t2.grad, atol=1e-7)


# ---- PKT ------------------------------------------------------------------------------------
def test_pkt_hand_golden_orthogonal_student_identical_teacher():
    f_s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # P_s = [[2/3, 1/3], [1/3, 2/3]]
    f_t = torch.tensor([[3.0, 0.0], [1.0, 0.0]])  # P_t = 1/2 everywhere
    # mean of 1/2 log((1/2) / P_s) over 4 entries = (log(3/4) + log(3/2)) / 4 = log(9/8) / 4
    assert pkt_loss(f_s, f_t).item() == pytest.approx(math.log(9 / 8) / 4, abs=1e-6)


def test_pkt_matches_numpy_reference_with_unequal_widths():
    rng = np.random.default_rng(1)
    f_s, f_t = rng.standard_normal((6, 5)), rng.standard_normal((6, 9))
    got = pkt_loss(_t(f_s), _t(f_t))
    assert got.shape == () and got.item() == pytest.approx(pkt_ref(f_s, f_t), rel=1e-9)


def test_pkt_zero_and_nan_rows_stay_finite():
    f_s = torch.tensor([[0.0, 0.0], [1.0, 2.0], [2.0, -1.0]])  # a zero row: 0 / (0 + eps) = 0
    f_t = torch.tensor([[1.0, 1.0], [float("nan"), 0.0], [0.0, 1.0]])  # its norm is NaN: the whole row -> 0
    got = pkt_loss(f_s, f_t)
    assert torch.isfinite(got)
    fixed = f_t.clone()
    fixed[1] = 0.0
    assert got.item() == pytest.approx(pkt_ref(f_s.numpy().astype(np.float64), fixed.numpy().astype(np.float64)),
                                       rel=1e-5)


# ---- RKD ------------------------------------------------------------------------------------
_LINE = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
_CORNER = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)


def test_rkd_distance_term_hand_golden():
    # line: distances 1, 2, 1 (mean 4/3) -> 3/4, 3/2, 3/4; corner: 1, 1, sqrt2 (mean (2+sqrt2)/3)
    # -> 3 - 1.5 sqrt2, 3 - 1.5 sqrt2, 3 sqrt2 - 3. All differences < 1: smooth-L1 = x^2 / 2,
    # each pair twice among the 9 entries.
    x = [1.5 * SQ2 - 2.25, 1.5 * SQ2 - 1.5, 3.75 - 3 * SQ2]
    expected = sum(v * v for v in x) / 9
    got = rkd_loss(_LINE, _CORNER, distance_weight=1, angle_weight=0)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_rkd_angle_term_hand_golden():
    # cosines at each vertex between the two other points: line (1, -1, 1), corner (0, 1/sqrt2, 1/sqrt2);
    # entries with j == k != i are 1 on both sides and the rest 0: 6 of the 27 entries differ.
    diffs = [1.0, -1.0 - 1 / SQ2, 1.0 - 1 / SQ2]
    sl1 = [0.5 * d * d if abs(d) < 1 else abs(d) - 0.5 for d in diffs]
    expected = 2 * sum(sl1) / 27
    got = rkd_loss(_LINE, _CORNER, distance_weight=0, angle_weight=1)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_rkd_default_weights_and_squared_switch_match_numpy_reference():
    rng = np.random.default_rng(2)
    f_s, f_t = rng.standard_normal((5, 3, 1, 1)), rng.standard_normal((5, 7))
    assert rkd_loss(_t(f_s), _t(f_t)).item() == pytest.approx(rkd_ref(f_s, f_t), rel=1e-10)
    sq = rkd_loss(_t(f_s), _t(f_t), squared=True, distance_weight=2.0, angle_weight=3.0)
    assert sq.item() == pytest.approx(rkd_ref(f_s, f_t, squared=True, dw=2.0, aw=3.0), rel=1e-10)
    assert rkd_loss(_t(f_s), _t(f_t)).item() != pytest.approx(rkd_loss(_t(f_s), _t(f_t), squared=True).item())


def test_rkd_is_scale_invariant_and_zero_for_any_two_samples():
    assert rkd_loss(_CORNER, 7.0 * _CORNER).item() == pytest.approx(0.0, abs=1e-12)
    g = torch.Generator().manual_seed(0)
    two_s, two_t = torch.randn(2, 4, generator=g), torch.randn(2, 9, generator=g)  # one distance, angles 0 or 1 whatever the points
    assert rkd_loss(two_s, two_t).item() == pytest.approx(0.0, abs=1e-6)


def test_rkd_zero_difference_vectors_give_angle_zero_and_pdist_diagonal_is_zero():
    same = torch.ones(3, 4, requires_grad=True)  # every difference vector is 0: every cosine is 0
    spread = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 0, 0, 0], [0.0, 1, 0, 0]])
    got = rkd_loss(same, spread, distance_weight=0, angle_weight=1)
    # the spread teacher (a right-angled corner) has 6 entries of cosine 1 (j == k != i; smooth-L1 1/2)
    # and 4 of cosine 1/sqrt2 (at the two acute vertices; smooth-L1 1/4); the rest are 0
    assert got.item() == pytest.approx((6 * 0.5 + 4 * 0.25) / 27, rel=1e-6)
    got.backward()
    assert torch.isfinite(same.grad).all()
    d = _pdist(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), squared=False, eps=1e-12)
    assert d.tolist() == [[0.0, 5.0], [5.0, 0.0]]
    assert _pdist(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), True, 1e-12).tolist() == [[0.0, 25.0], [25.0, 0.0]]


# ---- SP -------------------------------------------------------------------------------------
def test_sp_hand_golden_and_zero_d():
    f_s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # G_s rows: e_1, e_2
    f_t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # G_t rows: [1, 1] / sqrt2
    # 2 (1/sqrt2 - 1)^2 + 2 (1/sqrt2)^2 = 4 - 2 sqrt2, divided by N^2 = 4
    got = sp_loss([f_s], [f_t])
    assert got.shape == ()  # MDistiller's has shape (1,)
    assert got.item() == pytest.approx(1 - SQ2 / 2, rel=1e-6)


def test_sp_equals_sum_of_squared_gram_differences_over_n_squared():
    rng = np.random.default_rng(3)
    f_s, f_t = rng.standard_normal((5, 3, 4, 4)), rng.standard_normal((5, 8, 2, 2))
    got = similarity_loss(_t(f_s), _t(f_t))
    assert got.shape == () and got.item() == pytest.approx(sp_ref(f_s, f_t), rel=1e-10)
    two = sp_loss([_t(f_s), _t(f_s)], [_t(f_t), _t(f_s)])  # zip over pairs, summed
    assert two.item() == pytest.approx(sp_ref(f_s, f_t), rel=1e-10)


# ---- config sections: MDistiller's names, keys and defaults ---------------------------------
def test_sections_and_defaults_are_mdistillers():
    dump = {name: SECTIONS[name]().model_dump() for name in ("AT", "NST", "SP", "PKT", "RKD")}
    assert dump == {
        "AT": {"P": 2, "LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 1000.0}},
        "NST": {"LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 50.0}},
        "SP": {"LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 3000.0}},
        "PKT": {"LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 30000.0}},
        "RKD": {"DISTANCE_WEIGHT": 25, "ANGLE_WEIGHT": 50, "LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 1.0},
                "PDIST": {"EPSILON": 1e-12, "SQUARED": False}},
    }


def test_pure_function_defaults_are_mdistillers():
    import inspect

    assert inspect.signature(pkt_loss).parameters["eps"].default == 1e-7
    sig = inspect.signature(rkd_loss).parameters
    assert {k: sig[k].default for k in ("squared", "eps", "distance_weight", "angle_weight")} == {
        "squared": False, "eps": 1e-12, "distance_weight": 25, "angle_weight": 50}
    assert list(inspect.signature(at_loss).parameters) == ["g_s", "g_t", "p"]


@pytest.mark.parametrize("kind,cls", [("AT", AT), ("NST", NST), ("SP", SP), ("PKT", PKT), ("RKD", RKD)])
def test_registered_under_mdistillers_type_and_built_from_config(kind, cls):
    over = {"DISTILLER.TYPE": kind, "DISTILLER.TEACHER": "resnet20", "DISTILLER.STUDENT": "resnet8",
            f"{kind}.LOSS.CE_WEIGHT": 0.5, f"{kind}.LOSS.FEAT_WEIGHT": 7.0}
    cfg = build_run_config({}, "<test>", over, quiet=True)
    assert DISTILLERS.get(kind) is cls
    d = catkd.distillers.build_distiller(cfg, build_model("resnet8", 10), build_model("resnet20", 10), 10)
    assert isinstance(d, cls) and (d.ce_weight, d.feat_weight) == (0.5, 7.0)


def test_rkd_and_at_read_their_own_keys_from_config():
    base = {"DISTILLER.TEACHER": "resnet20", "DISTILLER.STUDENT": "resnet8"}
    cfg = build_run_config({}, "<test>", {**base, "DISTILLER.TYPE": "RKD", "RKD.DISTANCE_WEIGHT": 3,
                                          "RKD.ANGLE_WEIGHT": 4, "RKD.PDIST.SQUARED": True,
                                          "RKD.PDIST.EPSILON": 1e-8}, quiet=True)
    d = catkd.distillers.build_distiller(cfg, build_model("resnet8", 10), build_model("resnet20", 10), 10)
    assert (d.distance_weight, d.angle_weight, d.squared, d.eps) == (3, 4, True, 1e-8)
    cfg = build_run_config({}, "<test>", {**base, "DISTILLER.TYPE": "AT", "AT.P": 4}, quiet=True)
    d = catkd.distillers.build_distiller(cfg, build_model("resnet8", 10), build_model("resnet20", 10), 10)
    assert d.p == 4


# ---- the distillers on a real pair ----------------------------------------------------------
def _pair():
    torch.manual_seed(0)
    return build_model("resnet8", 10), build_model("resnet20", 10)


_MAKERS = {
    "AT": lambda s, t: AT(s, t), "NST": lambda s, t: NST(s, t), "SP": lambda s, t: SP(s, t),
    "PKT": lambda s, t: PKT(s, t), "RKD": lambda s, t: RKD(s, t),
}


@pytest.mark.parametrize("kind", sorted(_MAKERS))
def test_forward_train_gives_finite_scalars_grads_student_only(kind):
    s, t = _pair()
    d = _MAKERS[kind](s, t)
    d.train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    logits, losses = d.forward_train(x, y, {"epoch": 1, "index": None})
    assert logits.shape == (4, 10) and set(losses) == {"loss_ce", "loss_kd"}
    for v in losses.values():
        assert v.shape == () and torch.isfinite(v) and v.dtype == torch.float32
    assert losses["loss_kd"].item() > 0
    losses["loss_kd"].backward()  # the distillation term alone reaches the student's first stage
    first = next(d.student.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert all(p.grad is None for p in d.teacher.parameters())
    assert not d.teacher.training and d.extra_parameter_count() == 0


@pytest.mark.parametrize("kind", sorted(_MAKERS))
def test_teacher_side_comes_only_from_the_targets(kind):
    s, t = _pair()
    d = _MAKERS[kind](s, t)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    live = d.live_targets(x)
    assert set(live) == set(d.target_spec()["layers"])
    _, ref = d.forward_train(x, y, {"epoch": 1})

    def no_teacher(*a, **k):
        raise AssertionError("the teacher ran although the targets were given")

    d.teacher.forward = no_teacher
    _, got = d.forward_train(x, y, {"epoch": 1, "teacher_targets": live})
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_target_specs_name_mdistillers_teacher_layers_and_are_shared():
    s, t = _pair()
    specs = {k: m(s, t).target_spec() for k, m in _MAKERS.items()}
    assert specs["AT"] == specs["NST"] == {"targets": "features", "layers": ("feats.1", "feats.2", "feats.3")}
    assert specs["SP"] == {"targets": "features", "layers": ("feats.3",)}
    assert specs["PKT"] == specs["RKD"] == {"targets": "features", "layers": ("pooled_feat",)}


def test_construction_probe_leaves_modes_and_teacher_statistics_alone():
    s, t = _pair()
    s.train()
    t.train()  # as MDistiller hands it over
    before = {k: v.clone() for k, v in t.state_dict().items()}
    AT(s, t)
    SP(s, t)
    assert s.training
    assert all(torch.equal(before[k], v) for k, v in t.state_dict().items())


def test_at_weighted_loss_equals_feat_weight_times_pure_loss():
    s, t = _pair()
    d = AT(s, t, p=2, ce_weight=0.25, feat_weight=1000.0)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    logits, losses = d.forward_train(x, y, {"epoch": 1})
    with torch.no_grad():
        _, fs = s(x)
        _, ft = t(x)
    assert losses["loss_kd"].item() == pytest.approx(1000.0 * at_loss(fs["feats"][1:], ft["feats"][1:], 2).item(),
                                                     rel=1e-5)
    assert losses["loss_ce"].item() == pytest.approx(0.25 * F.cross_entropy(logits, y).item(), rel=1e-6)


def test_losses_are_float32_under_bf16_autocast():
    s, t = _pair()
    d = RKD(s, t)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, losses = d.forward_train(x, y, {"epoch": 1})
    assert losses["loss_kd"].dtype == torch.float32 and torch.isfinite(losses["loss_kd"])


# ---- stage pairing: unequal lists warn, non-square maps and no pairs are refused ------------
class StageNet(nn.Module):
    """feats["feats"] of chosen (C, H, W) shapes (pooled from the input by 1x1 convs), MDistiller's contract."""

    def __init__(self, shapes, k=4):
        super().__init__()
        self.shapes = shapes
        self.convs = nn.ModuleList(nn.Conv2d(3, c, 1) for c, _, _ in shapes)
        self.fc = nn.Linear(shapes[-1][0], k)

    def forward(self, x):
        feats = [torch.relu(conv(F.adaptive_avg_pool2d(x, (h, w)))) for conv, (_, h, w) in zip(self.convs, self.shapes)]
        pooled = feats[-1].mean((2, 3))
        return self.fc(pooled), {"feats": feats, "pooled_feat": pooled}


_FOUR = [(4, 8, 8), (4, 8, 8), (6, 4, 4), (8, 2, 2)]


@pytest.mark.parametrize("cls", [AT, NST])
def test_unequal_stage_lists_warn_once_and_pair_from_the_front(cls):
    s, t = StageNet(_FOUR), StageNet(_FOUR + [(8, 2, 2)])
    with pytest.warns(UserWarning, match="paired by position") as rec:
        d = cls(s, t, input_size=(8, 8), names=("small", "big"))
    assert len(rec) == 1 and "student small has 4" in str(rec[0].message)
    assert d.target_spec()["layers"] == ("feats.1", "feats.2", "feats.3", "feats.4")
    x, y = torch.randn(3, 3, 8, 8), torch.tensor([0, 1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no further warning at step time
        _, losses = d.forward_train(x, y, {"epoch": 1})
    with torch.no_grad():
        fs, ft = s(x)[1]["feats"], t(x)[1]["feats"]
    pure = at_loss(fs[1:], ft[1:4], d.p) if cls is AT else nst_loss(fs[1:], ft[1:4])
    assert losses["loss_kd"].item() == pytest.approx(d.feat_weight * pure.item(), rel=1e-5)


def test_equal_stage_lists_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AT(StageNet(_FOUR), StageNet(_FOUR), input_size=(8, 8))


@pytest.mark.parametrize("cls", [AT, NST])
def test_non_square_maps_are_refused_at_construction_naming_models_and_stage(cls):
    rect = [(4, 8, 8), (4, 8, 8), (6, 4, 2), (8, 2, 2)]
    with pytest.raises(ValueError, match=r"teacher wide feature entry 2 is 4 x 2 for 8 x 8 inputs"):
        cls(StageNet(_FOUR), StageNet(rect), input_size=(8, 8), names=("narrow", "wide"))
    with pytest.raises(ValueError, match=r"student StageNet feature entry 2 is 4 x 2"):
        cls(StageNet(rect), StageNet(_FOUR), input_size=(8, 8))


def test_a_model_without_stages_after_the_stem_is_refused():
    with pytest.raises(ValueError, match="at least one stage after the first"):
        AT(StageNet([(4, 8, 8)]), StageNet(_FOUR), input_size=(8, 8))


def test_sp_uses_the_last_entry_of_each_list_whatever_their_lengths():
    s, t = StageNet(_FOUR), StageNet(_FOUR + [(5, 2, 2)])
    d = SP(s, t, input_size=(8, 8))
    assert d.target_spec()["layers"] == ("feats.4",)
    x, y = torch.randn(3, 3, 8, 8), torch.tensor([0, 1, 2])
    _, losses = d.forward_train(x, y, {"epoch": 1})
    with torch.no_grad():
        fs, ft = s(x)[1]["feats"][-1], t(x)[1]["feats"][-1]
    assert losses["loss_kd"].item() == pytest.approx(3000.0 * similarity_loss(fs, ft).item(), rel=1e-5)
