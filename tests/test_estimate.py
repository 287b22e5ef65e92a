"""--dry-run's wall model: a stage's trials start in order as slots free, so the end of a stage, where
slots wait for its last trials (the confirm stage's last wave, ASHA's longest trials), is counted."""
from __future__ import annotations

import pytest

from types import SimpleNamespace

import numpy as np

from catkd.study.estimate import asha_trial_epochs, asha_trial_lengths, estimate, makespan, stage_packing
from catkd.study.load import load_study


def _ray_asha_trial_epochs(n: int, grace: int, rf: float, max_t: int, reps: int, seed: int) -> float:
    """Mean trial-epochs of n trials under Ray's own ASHA bracket, results drawn at random (each
    trial's result the same at every rung), the trials reaching each rung in a random order."""
    from ray.tune.schedulers.async_hyperband import _Bracket
    from ray.tune.schedulers.trial_scheduler import TrialScheduler

    rng = np.random.default_rng(seed)
    rungs = sorted(m for m, _ in _Bracket(grace, max_t, rf, 0)._rungs)
    total = 0
    for _ in range(reps):
        bracket = _Bracket(grace, max_t, rf, 0)
        alive = [SimpleNamespace(trial_id=str(i), value=rng.normal()) for i in range(n)]
        done = 0
        for rung in rungs:
            rng.shuffle(alive)
            go_on = [t for t in alive if bracket.on_result(t, rung, t.value) == TrialScheduler.CONTINUE]
            done += (len(alive) - len(go_on)) * rung
            alive = go_on
        total += done + len(alive) * max_t
    return total / reps


def test_the_asha_model_matches_rays_asynchronous_asha_which_lets_early_arrivals_go_on():
    # Ray's rung rule: an arrival goes on unless below the (1 - 1/rf) percentile of those recorded
    # before it, so more than 1/rf go on (the synchronous 1/rf model said 1,564 for beta_sweep)
    for n, grace, rf, max_t in ((32, 20, 3, 240), (6, 2, 3, 5), (12, 1, 4, 9)):
        ray_mean = _ray_asha_trial_epochs(n, grace, rf, max_t, reps=300, seed=n)
        assert sum(asha_trial_epochs(n, grace, rf, max_t)) == pytest.approx(ray_mean, rel=0.04), (n, grace, rf)


def test_asha_whole_trial_lengths_stop_most_at_the_first_rung_and_at_least_one_runs_to_the_end():
    # beta_sweep: 32 samples, grace 20, reduction factor 3, 240 epochs: rungs at 20, 60, 180
    lengths = asha_trial_lengths(32, 20, 3, 240)
    assert [lengths.count(e) for e in (20, 60, 180, 240)] == [20, 7, 2, 3]
    assert len(lengths) == 32
    # the fractional model's expected epochs, in whole trials: within a few percent
    assert sum(lengths) == pytest.approx(sum(asha_trial_epochs(32, 20, 3, 240)), rel=0.05)
    assert asha_trial_lengths(1, 2, 3, 5) == [5]


def test_makespan_starts_each_trial_when_a_slot_frees_so_the_order_matters():
    assert makespan([3, 1, 1, 1], 2) == 3  # the long trial first: the short ones fill the other slot
    assert makespan([1, 1, 1, 3], 2) == 4  # the long trial last: it runs alone at the end
    assert makespan([5] * 9, 8) == 10


def test_a_confirm_stage_of_9_trials_on_8_slots_takes_two_trial_times_not_nine_eighths():
    assert stage_packing([240.0] * 9, 8) == pytest.approx(2 * 8 / 9)
    assert stage_packing([240.0] * 8, 8) == 1.0
    assert stage_packing([240.0] * 3, 1) == 1.0


def test_an_asha_search_ends_with_slots_waiting_for_the_trials_it_kept():
    lengths = asha_trial_lengths(32, 20, 3, 240)
    f = stage_packing(lengths, 8)
    # at least the even spread, at most one whole trial of 240 epochs after it
    assert 1.0 < f <= (sum(lengths) / 8 + 240) / (sum(lengths) / 8)
    assert f == stage_packing(lengths, 8)  # seeded: the same figure every time


def test_the_dry_run_says_when_the_confirm_stage_leaves_slots_waiting_and_what_would_fill_them():
    spec = load_study("studies/beta_sweep.yaml", smoke=True, sets={
        "smoke.resources.cpu": 0.25, "smoke.max_concurrent": 8, "smoke.confirm": {"top_k": 3, "seeds": [1, 2, 3]}})
    lines: list[str] = []
    est = estimate(spec, say=lines.append)
    assert est["concurrency"] == 8
    text = "\n".join(lines)
    assert "[confirm] 9 trials on 8 slots run in 2 waves, the last with 1 trial(s) while 7 slot(s) wait" in text
    assert "top_k 2 x 4 seeds (8 trials) would fill every wave" in text
    assert est["stage_packing"]["confirm"] == pytest.approx(16 / 9)
    # the wall counts the waves: above the device time spread evenly on the slots
    assert est["wall_hours"] > est["device_hours"] / 8


def _study(tmp_path, base, weight_key, **fixed):
    import yaml

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s", "description": "a baseline's loss weight", "base": base, "fixed": {"DATASET.VAL_SIZE": 5000, **fixed},
        "space": {weight_key: {"choice": [1.0, 2.0]}}, "search": {"algorithm": "optuna", "num_samples": 2, "seed": 0},
        "metric": "val_acc", "seeds": [0]}))
    return load_study(path, smoke=True)


@pytest.mark.parametrize("base, key, fixed, cached", [
    ("cifar100/PKT/res56_res20", "PKT.LOSS.FEAT_WEIGHT", {}, True),  # pooled features: a small store
    ("cifar100/AT/res56_res20", "AT.LOSS.FEAT_WEIGHT", {"RUN.TEACHER_CACHE_MAX_GB": 1e-4}, False),  # over the cap
    ("cifar100/OFD/res56_res20", "OFD.LOSS.FEAT_WEIGHT", {}, False),  # its teacher's output depends on the batch
    # CRD's step needs its memory bound to the training set and the batch's indices (it crashed the dry run)
    ("cifar100/CRD/res56_res20", "CRD.LOSS.FEAT_WEIGHT", {"CRD.NCE.K": 64}, None),
])
def test_the_estimate_counts_the_cache_only_where_the_run_would_use_it(tmp_path, base, key, fixed, cached):
    lines: list[str] = []
    est = estimate(_study(tmp_path, base, key, **fixed), say=lines.append)
    text = "\n".join(lines)
    if cached is None:
        assert est["device_hours"] > 0 and "x CRD resnet20 -> resnet8" in text
    elif cached:  # counted with the cache warm, plus the teacher's one pass to fill it (which is cheaper is
        # a measurement, not asserted: on a loaded machine either can come out ahead for these small models)
        assert "with the teacher cache" in text and "img/s with the cache warm" in text
        assert "teacher cache: resnet" in text and "distinct (image, view) pairs once" in text
    else:  # the headline is the live teacher's cost, never the cache's
        assert est["device_hours"] == est["device_hours_live"] and "with the teacher cache" not in text
    if "RUN.TEACHER_CACHE_MAX_GB" in fixed:
        assert "(over the cap: live teacher)" in text
