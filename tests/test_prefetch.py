"""The teacher prefetch: the entries a study's seeds will draw (catkd.study.prefetch), filled ahead
from idle CPU time (catkd.teacher_cache.prefetch), exactly the values a trial computes, never racing
a trial for a claim."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch
import yaml

from catkd.engine import Trainer
from catkd.study.checks import run_config
from catkd.study.load import load_study
from catkd.study import prefetch as study_prefetch
from catkd.teacher_cache import prefetch
from catkd.teacher_cache.store import Layout, TeacherStore

from _helpers import TINY
from test_teacher_cache import step_losses


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """The tiny smoke study with a random resnet8 teacher, its cache under tmp_path/cache."""
    from catkd.models import build_model

    torch.manual_seed(0)
    ckpt = tmp_path / "teacher.pth"
    torch.save({"model": build_model("resnet8", 4).state_dict()}, ckpt)
    data = yaml.safe_load(TINY)
    data["confirm"] = {"top_k": 1, "seeds": [1]}
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    spec = load_study(p, smoke=True)
    spec = spec.model_copy(update={"fixed": {**spec.fixed, "DISTILLER.TEACHER_CKPT": str(ckpt)}})
    monkeypatch.setenv("CATKD_TEACHER_CACHE", str(tmp_path / "cache"))
    return spec


def test_the_plan_is_the_search_seeds_then_the_confirm_seeds(tiny):
    job = study_prefetch.plan(tiny)
    assert job["seeds"] == [0, 1, 2] and job["stages"] == [[0], [1, 2]]  # smoke: confirm with the next two seeds
    cfgs, _ = study_prefetch.prefetch_configs(tiny)
    assert job["configs"] == [c.model_dump(mode="json") for c in cfgs] and len(cfgs) == 1  # β needs no other store


def test_prefetched_entries_are_what_a_trial_of_that_seed_draws_and_it_then_forwards_no_image(tiny, tmp_path):
    job = {**study_prefetch.plan(tiny), "stages": [[3]], "gate": False}
    stats = prefetch.run(job, tmp_path / "prefetch.json", log=lambda s: None)
    assert stats["done"] and json.loads((tmp_path / "prefetch.json").read_text())["teacher_images"] == \
        stats["teacher_images"]
    cfg = run_config(tiny, {"CAT_KD.LOSS.CAT_loss_weight": 7.0, "CAT_KD.IF_OnlyTransferPartialCAMs": False,
                                "EXPERIMENT.SEED": 3}).model_copy(deep=True)
    cfg.RUN.PROGRESS = "none"
    trial = Trainer.from_config(cfg, out_dir=tmp_path / "trial", log=lambda s: None)
    assert trial.targets.store.filled() == stats["teacher_images"]  # each entry forwarded once
    want = set()
    for e in range(1, cfg.SOLVER.EPOCHS + 1):
        idx, view = trial.data.train.epoch_views(e, 3)
        want |= set(zip(idx.tolist(), view.tolist()))
    assert stats["teacher_images"] == len(want)  # exactly the entries the trial's epochs draw
    pairs = step_losses(trial, epochs=range(1, cfg.SOLVER.EPOCHS + 1))
    assert trial.targets.take_stats()["teacher_images"] == 0
    for cached, live in pairs:  # the values a trial computes itself (within the store's float16)
        for k in cached:
            assert cached[k] == pytest.approx(live[k], rel=1e-3, abs=1e-6), (k, cached[k], live[k])
    other = run_config(tiny, {"CAT_KD.LOSS.CAT_loss_weight": 7.0, "CAT_KD.IF_OnlyTransferPartialCAMs": False,
                                  "EXPERIMENT.SEED": 4}).model_copy(deep=True)
    other.RUN.PROGRESS = "none"
    t4 = Trainer.from_config(other, out_dir=tmp_path / "t4", log=lambda s: None)
    assert t4.train_epoch(1)["teacher_images"] > 0  # a seed not in the plan was not prefetched


def test_the_prefetcher_never_waits_for_or_takes_an_entry_a_live_process_claimed(tmp_path):
    s = TeacherStore(tmp_path, "x", {"k": 1}, Layout(4, 3, (("v", (2,)),), "float16"), log=lambda m: None)
    rows = np.arange(12)
    s.claims[rows[:8]] = (time.time(), os.getppid())  # a trial (alive) is computing these
    computed = []

    def compute(pos, _):
        computed.extend(rows[pos].tolist())
        return np.ones((len(pos), 2), np.float32), []

    t0 = time.time()
    values, done = s.fetch(rows, compute, wait=False)
    assert values is None and done == 4 and sorted(computed) == [8, 9, 10, 11]
    assert time.time() - t0 < 1.0 and s.flags[:8].sum() == 0  # returned at once, the claims untouched


def test_stores_of_every_target_spec_the_study_can_use_and_no_guessing_sampled_data(tiny):
    from catkd.study.spec import StudySpec

    base = tiny.model_dump(mode="json")
    spec = StudySpec.model_validate({**base, "space": {**base["space"], "CAT_KD.LOSS.CAM_RESOLUTION": {"choice": [1, 2]}}})
    cfgs, why = study_prefetch.prefetch_configs(spec)
    assert why is None and sorted(c.CAT_KD.LOSS.CAM_RESOLUTION for c in cfgs) == [1, 2]
    sampled = StudySpec.model_validate({**base, "space": {**base["space"], "DATASET.RESERVED_RATE": {"uniform": [0.2, 1.0]}}})
    cfgs, why = study_prefetch.prefetch_configs(sampled)
    assert cfgs == [] and "not known ahead" in why


def test_the_idle_gate_counts_idle_cores_and_this_process_own_cpu_as_spare(monkeypatch):
    gate = prefetch.IdleGate(need=0.5)
    cores = gate.cores
    seq = iter([(0.0, 0.0, 0.0),  # CPU seconds: all cores, their idle time, this process
                (0.2 * cores, 0.0, 0.2),  # 0.2 s: no core idle, this process used one: spare 1
                (0.4 * cores, 0.0, 0.2),  # 0.2 s: no core idle, none used here: busy
                (0.6 * cores, 0.2, 0.2)])  # 0.2 s: one core idle: spare 1
    monkeypatch.setattr(prefetch.IdleGate, "_sample", staticmethod(lambda: next(seq)))
    gate._last = gate._sample()
    assert gate.spare() == pytest.approx(1.0)
    assert gate.spare() == pytest.approx(0.0)
    assert gate.spare() == pytest.approx(1.0)


def test_the_idle_gate_waits_for_a_spare_core_and_gives_up_when_told_to_stop(monkeypatch):
    gate = prefetch.IdleGate(need=0.5, poll_s=0.0)
    spare = iter([0.0, 0.0, 1.0])
    monkeypatch.setattr(gate, "spare", lambda: next(spare))
    assert gate.wait(lambda: False) is True  # after two busy looks
    monkeypatch.setattr(gate, "spare", lambda: 0.0)
    stops = iter([False, False, True])
    assert gate.wait(lambda: next(stops)) is False


def test_the_idle_gate_reads_this_machines_cpu_times():
    gate = prefetch.IdleGate(need=0.5)
    total, idle, own = gate._sample()
    assert total >= idle >= 0 and own >= 0
    time.sleep(0.05)
    assert 0 <= gate.spare() <= gate.cores + 1  # +1: this process's own time is counted as spare too


def test_the_prefetch_process_runs_at_the_lowest_cpu_priority():
    import subprocess
    import sys

    code = ("from catkd.teacher_cache.prefetch import lowest_priority; import os; p = lowest_priority(); "
            "print(p, os.sched_getscheduler(0) == os.SCHED_IDLE if p == 'SCHED_IDLE' else os.nice(0))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out in (["SCHED_IDLE", "True"], ["nice", "19", "19"])


def test_a_prefetch_process_fills_its_job_and_leaves_its_counts_beside_it(tiny, tmp_path):
    job = {**study_prefetch.plan(tiny), "stages": [[3]], "gate": False}
    procs = prefetch.start(job, tmp_path, {}, tmp_path / "prefetch.log")
    assert len(procs) == prefetch.PROCS
    for p in procs:
        assert p.wait(120) == 0, (tmp_path / "prefetch.log").read_text()
    prefetch.stop(procs)  # already gone: nothing to do
    counts = prefetch.totals(tmp_path)
    assert counts["done"] and counts["teacher_images"] > 0 and counts["priority"] in ("SCHED_IDLE", "nice 19")
    assert counts["pids"] == [p.pid for p in procs]
    assert prefetch.totals(tmp_path / "elsewhere") is None


def test_a_job_without_configs_is_done_at_once(tmp_path):
    lines = []
    stats = prefetch.run({"configs": [], "stages": [[0, 1]]}, tmp_path / "prefetch-0.json", log=lines.append)
    assert stats["done"] and stats["teacher_images"] == 0 and "nothing to do" in lines[0]
