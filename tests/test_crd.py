"""CRD as MDistiller computes it: NCE loss, embeddings, the memory bank, and contrast indices that are
reproducible from (seed, epoch, sample index)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from catkd.config import ConfigError
from catkd.distillers.contrast_sampling import ContrastSampler, first_k_of_permutation, sample_keys
from catkd.distillers.crd import CRD, ContrastMemory, Embed, nce_loss
from catkd.models import build_model


def test_nce_loss_golden_value_by_hand():
    # N = 1, K = 2, num_data = 4: m Pn = 0.5; positive 1.5 -> log(1.5 / 2.0); negatives 0.5, 1.5 ->
    # log(0.5 / 1.0) + log(0.5 / 2.0)
    x = torch.tensor([[1.5, 0.5, 1.5]])
    want = -(math.log(1.5 / 2.0) + math.log(0.5 / 1.0) + math.log(0.5 / 2.0))
    got = nce_loss(x, num_data=4, eps=0.0)
    assert got.shape == () and got.item() == pytest.approx(want, rel=1e-6)
    # the batch mean: two identical rows give the same value
    assert nce_loss(x.repeat(2, 1), 4, eps=0.0).item() == pytest.approx(want, rel=1e-6)


def test_embed_is_linear_then_unit_norm():
    e = Embed(6, 3)
    x = torch.randn(5, 6, 1, 1)
    out = e(x)
    raw = x.flatten(1) @ e.linear.weight.T + e.linear.bias
    torch.testing.assert_close(out, raw / raw.norm(dim=1, keepdim=True))


def test_memory_scores_normalisation_fixed_after_first_batch_and_momentum_update():
    torch.manual_seed(0)
    mem = ContrastMemory(dim=4, num_data=10, k=3, temperature=0.5, momentum=0.25)
    b = 1 / math.sqrt(4 / 3)
    assert mem.memory_v1.abs().max() <= b and mem.params.tolist()[2:4] == [-1.0, -1.0]
    v1 = torch.nn.functional.normalize(torch.randn(2, 4), dim=1)
    v2 = torch.nn.functional.normalize(torch.randn(2, 4), dim=1)
    rows = torch.tensor([1, 7])
    contrast = torch.tensor([[1, 2, 3, 4], [7, 0, 5, 6]])
    m1, m2 = mem.memory_v1.clone(), mem.memory_v2.clone()
    s1, s2 = mem(v1, v2, rows, contrast)
    raw1 = torch.exp(torch.einsum("nkd,nd->nk", m2[contrast], v1) / 0.5)  # student scored by teacher memory
    raw2 = torch.exp(torch.einsum("nkd,nd->nk", m1[contrast], v2) / 0.5)
    z1, z2 = raw1.mean() * 10, raw2.mean() * 10
    torch.testing.assert_close(s1, raw1 / z1)
    torch.testing.assert_close(s2, raw2 / z2)
    upd = 0.25 * m1[rows] + 0.75 * v1
    torch.testing.assert_close(mem.memory_v1[rows], upd / upd.norm(dim=1, keepdim=True))
    untouched = [i for i in range(10) if i not in (1, 7)]
    assert torch.equal(mem.memory_v1[untouched], m1[untouched])
    mem(v1, v2, rows, contrast)
    torch.testing.assert_close(mem.params[2], z1)  # fixed after the first batch


def test_keyed_permutation_is_a_permutation_for_every_key_and_size():
    for size in (1, 7, 100, 1000):
        key = torch.tensor([[1], [2], [12345]])
        out = first_k_of_permutation(size, key, torch.full((3, 1), size))
        for row in out:
            assert sorted(row.tolist()) == list(range(size))
        if size >= 100:
            assert not torch.equal(out[0], out[1])  # the key chooses the permutation
            # its first k values are a prefix of the whole permutation
            assert torch.equal(first_k_of_permutation(10, key, torch.full((3, 1), size)), out[:, :10])


def test_negatives_are_distinct_other_class_rows_and_reproducible_per_sample():
    labels = torch.arange(60) % 4  # 4 classes x 15
    sampler = ContrastSampler(labels, k=40)
    rows = torch.tensor([0, 5, 10, 33])
    idx = rows + 1000  # dataset indices differ from rows
    c = sampler(rows, sample_keys(7, 3, idx))
    assert c.shape == (4, 41) and torch.equal(c[:, 0], rows)
    for r, line in zip(rows, c):
        neg = line[1:]
        assert len(set(neg.tolist())) == 40  # without replacement (pool of 45)
        assert (labels[neg] != labels[r]).all()
    # the same sample draws the same negatives in another batch; another epoch or seed draws others
    alone = sampler(rows[2:3], sample_keys(7, 3, idx[2:3]))
    assert torch.equal(alone[0], c[2])
    assert not torch.equal(sampler(rows, sample_keys(7, 4, idx)), c)
    assert not torch.equal(sampler(rows, sample_keys(8, 3, idx)), c)


def test_negatives_cover_the_pool_uniformly():
    labels = torch.arange(40) % 2
    sampler = ContrastSampler(labels, k=5)
    rows = torch.zeros(4000, dtype=torch.int64)  # row 0, class 0: pool = the 20 odd rows
    c = sampler(rows, sample_keys(0, 1, torch.arange(4000)))
    counts = np.bincount(c[:, 1:].reshape(-1).numpy(), minlength=40)
    assert counts[0::2].sum() == 0
    expected = 4000 * 5 / 20
    assert np.abs(counts[1::2] - expected).max() < 5 * math.sqrt(expected)


def test_k_above_the_pool_draws_with_replacement_and_relax_mode_draws_a_same_class_positive():
    labels = torch.arange(12) % 3
    c = ContrastSampler(labels, k=20, mode="relax")(torch.tensor([0, 4]), sample_keys(0, 1, torch.tensor([0, 4])))
    assert c.shape == (2, 21)
    assert (labels[c[:, 0]] == labels[torch.tensor([0, 4])]).all()
    assert (labels[c[0, 1:]] != 0).all() and (labels[c[1, 1:]] != 1).all()


class _Train:  # what CRD reads of a training loader
    def __init__(self, n, classes=100):
        self.labels = torch.arange(n) % classes
        self.source_index = torch.arange(n)


class _Data:
    def __init__(self, n):
        self.train = _Train(n)


def _crd(student="resnet8x4", teacher="resnet32x4", **kw):
    s, t = build_model(student), build_model(teacher)
    args = dict(feat_dim=128, student_dim=s.fc.in_features, teacher_dim=t.fc.in_features, k=16384,
                temperature=0.07, momentum=0.5, mode="exact", ce_weight=1.0, feat_weight=0.8)
    return CRD(s, t, **{**args, **kw})


def test_extra_parameters_counted_as_mdistiller_counts_them():
    d = _crd()
    d.bind_data(_Data(50000))
    # MDistiller, resnet32x4 -> resnet8x4 on CIFAR-100: 2 x (256*128 + 128) + 2 x 50,000 x 128 + 5
    assert d.extra_parameter_count() == 12_865_797
    assert set(d.extra_state_dict()) >= {"memory.memory_v1", "memory.memory_v2", "memory.params", "embed_s.linear.weight"}


def test_forward_train_gives_finite_losses_and_trains_the_embeddings_not_the_teacher():
    torch.manual_seed(0)
    d = _crd("resnet8", "resnet20", k=50).train()
    d.bind_data(_Data(200))
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    logits, losses = d.forward_train(x, y, {"epoch": 1, "step": 1, "index": torch.tensor([0, 1, 2, 3])})
    assert set(losses) == {"loss_ce", "loss_kd"} and all(v.shape == () and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert d.embed_s.linear.weight.grad.abs().sum() > 0 and d.embed_t.linear.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in d.teacher.parameters())
    assert d.memory.params[2] > 0  # Z set


def test_widths_follow_the_pair_and_a_conflicting_setting_is_named():
    from catkd.engine.validate import load_run_config

    cfg = load_run_config("cifar100/KD/res32x4_res8x4", {"DISTILLER.TYPE": "CRD", "DISTILLER.TEACHER": "wrn_40_2",
                                                          "DISTILLER.STUDENT": "wrn_16_2"})
    d = CRD.from_config(cfg, build_model("wrn_16_2"), build_model("wrn_40_2"), 100)
    assert d.embed_s.linear.in_features == 128 and d.embed_t.linear.in_features == 128
    bad = cfg.model_copy(deep=True)
    bad.CRD.FEAT.STUDENT_DIM = 256
    with pytest.raises(ConfigError, match="CRD.FEAT.STUDENT_DIM is 256.*128 channels"):
        CRD.from_config(bad, build_model("wrn_16_2"), build_model("wrn_40_2"), 100)
