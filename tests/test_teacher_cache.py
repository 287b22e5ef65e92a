"""The teacher cache (C8): exact, shared, safe under concurrent filling, rebuilt when damaged."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from catkd.engine.validate import build_run_config as build_config
from catkd.engine import Trainer
from catkd.train import main as train_main
from catkd.teacher_cache.provider import CachedTargets, LiveTargets, build_targets
from catkd.teacher_cache.store import Layout, TeacherStore

SMALL = {
    "DATASET.TYPE": "synthetic",
    "DATASET.SYNTHETIC.NUM_CLASSES": 4,
    "DATASET.SYNTHETIC.TRAIN_PER_CLASS": 24,
    "DATASET.SYNTHETIC.TEST_PER_CLASS": 10,
    "DATASET.SYNTHETIC.IMAGE_SIZE": 32,
    "SOLVER.BATCH_SIZE": 16,
    "SOLVER.LR": 0.05,
    "SOLVER.EPOCHS": 3,
    "RUN.PROGRESS": "none",
    "RUN.THREADS": 1,
    "LOG.SAVE_CHECKPOINT_FREQ": 0,
    "DISTILLER.TEACHER": "resnet8",
    "DISTILLER.STUDENT": "resnet8",
}

DISTILLERS = {
    "CAT-KD": {"DISTILLER.TYPE": "CAT_KD", "CAT_KD.LOSS.CAT_loss_weight": 5.0},
    "CAT (onlyCAT)": {"DISTILLER.TYPE": "CAT_KD", "CAT_KD.onlyCAT": True, "CAT_KD.LOSS.CAT_loss_weight": 5.0},
    "binarised CAMs": {"DISTILLER.TYPE": "CAT_KD", "CAT_KD.IF_BINARIZE": True},
    "partial CAMs": {"DISTILLER.TYPE": "CAT_KD", "CAT_KD.IF_OnlyTransferPartialCAMs": True, "CAT_KD.CAMs_Nums": 2},
    "KD": {"DISTILLER.TYPE": "KD"},
    "DKD": {"DISTILLER.TYPE": "DKD", "DKD.WARMUP": 2},
}


@pytest.fixture(scope="session")  # session: built once per worker, however the tests interleave
def teacher(tmp_path_factory) -> Path:
    """A resnet8 'teacher' for the 4 synthetic classes (random weights, BN statistics of the data)."""
    from catkd.models import build_model

    torch.manual_seed(0)
    m = build_model("resnet8", 4)
    p = tmp_path_factory.mktemp("teacher") / "resnet8.pth"
    torch.save({"model": m.state_dict()}, p)
    return p


def cfg(tmp: Path, teacher: Path, cache, **over):
    o = {**SMALL, "LOG.PREFIX": str(tmp), "DISTILLER.TEACHER_CKPT": str(teacher),
         "RUN.TEACHER_CACHE": str(cache)}
    o.update(over)
    return build_config({}, "<test>", o, quiet=True)


def step_losses(trainer: Trainer, epochs=(1, 2)) -> list[tuple[dict[str, float], dict[str, float]]]:
    """Per step of training (the optimiser steps with the provider's targets): the losses with the
    provider's targets and, on the same batch and the same weights, with the live teacher's."""
    out = []
    d = trainer.distiller
    d.train()
    for e in epochs:
        for s, batch in enumerate(trainer.data.train.epoch_batches(e, trainer.cfg.EXPERIMENT.SEED), 1):
            with torch.no_grad():
                live = {"epoch": e, "step": s, "teacher_targets": d.live_targets(batch.images)}
                _, live_losses = d.forward_train(batch.images, batch.labels, live)
            _, losses, _ = trainer.step(batch, e, s)
            out.append(({k: float(v.detach()) for k, v in losses.items()},
                        {k: float(v) for k, v in live_losses.items()}))
    return out


@pytest.mark.parametrize("name", list(DISTILLERS))
def test_per_step_losses_with_the_cache_equal_those_without(tmp_path, teacher, name):
    over = DISTILLERS[name]
    quiet = lambda s: None  # noqa: E731
    off = Trainer.from_config(cfg(tmp_path, teacher, "off", **over), log=quiet)
    assert type(off.targets) is LiveTargets
    first = Trainer.from_config(cfg(tmp_path, teacher, tmp_path / "cache", **over), log=quiet)
    assert isinstance(first.targets, CachedTargets)
    b = step_losses(first)
    assert first.targets.take_stats()["teacher_images"] == first.targets.store.filled() > 0
    # a second run on the filled store: every entry is a hit, and the values are the ones stored
    second = Trainer.from_config(cfg(tmp_path, teacher, tmp_path / "cache", **over), log=quiet)
    c = step_losses(second)
    stats = second.targets.take_stats()
    assert stats["teacher_images"] == 0 and stats["teacher_cache_hit_rate"] == 1.0
    assert len(b) == len(c) == 2 * len(first.data.train)
    for (cached, live), (hit, _) in zip(b, c):
        assert cached.keys() == live.keys()
        for k in cached:
            assert cached[k] == pytest.approx(live[k], rel=1e-3, abs=1e-6), (k, cached[k], live[k])
        assert hit == cached  # bitwise: a miss is written, then read back like a hit
    # and the off switch trains exactly like the live teacher inside the distiller always did
    losses_off = [{k: float(v.detach()) for k, v in off.step(bt, 1, i)[1].items()}
                  for i, bt in enumerate(off.data.train.epoch_batches(1, 0), 1)]
    assert losses_off[0] == b[0][1]


def test_live_targets_equal_the_old_teacher_path_exactly(tmp_path, teacher):
    # the targets refactor changed no number: binarise/select/pool on full maps == pool first (R x R)
    from catkd.distillers.cat_kd import binarize_cams, cat_loss, select_cams

    t = Trainer.from_config(cfg(tmp_path, teacher, "off", **DISTILLERS["partial CAMs"], **{"CAT_KD.IF_BINARIZE": True}),
                            log=lambda s: None)
    d = t.distiller
    x = next(iter(t.data.train.epoch_batches(1, 0))).images
    with torch.no_grad():
        _, tf = d.teacher(x)
        _, sf = d.student(x)
        full = tf["cams"].float()
        s_sel, t_sel = select_cams(sf["cams"].float(), binarize_cams(full), full.mean(dim=(2, 3)), 2, 0)
        old = cat_loss(s_sel, t_sel, d.resolution, d.normalize)
        new = d.transfer_loss(sf["cams"], d.live_targets(x))
    assert torch.equal(old, new)


def test_a_killed_and_resumed_run_with_the_cache_ends_bitwise_equal_to_an_uninterrupted_one(tmp_path, teacher):
    over = DISTILLERS["CAT-KD"]
    quiet = lambda s: None  # noqa: E731
    straight = Trainer.from_config(cfg(tmp_path, teacher, tmp_path / "c1", **over, **{"EXPERIMENT.NAME": "a"}), log=quiet)
    straight.fit()

    class Killed(Exception):
        pass

    cut = Trainer.from_config(cfg(tmp_path, teacher, tmp_path / "c2", **over, **{"EXPERIMENT.NAME": "b"}), log=quiet)
    forward, calls, epoch = cut.distiller.teacher_outputs, [], [0]
    train_epoch = cut.train_epoch

    def counting_epochs(e):
        epoch[0] = e
        return train_epoch(e)

    def dies_while_computing(images):  # killed inside a miss of the third epoch, entries claimed
        if epoch[0] == 3:
            calls.append(1)
            if len(calls) == 3:
                raise Killed
        return forward(images)

    cut.train_epoch = counting_epochs
    cut.distiller.teacher_outputs = dies_while_computing
    with pytest.raises(Killed):
        cut.fit()
    assert len(cut.history) == 2  # the checkpoint is epoch 2's; epoch 3 had filled part of the store
    partly = cut.targets.store.filled()
    resumed = Trainer.from_config(cfg(tmp_path, teacher, tmp_path / "c2", **over,
                                      **{"EXPERIMENT.NAME": "b", "RUN.RESUME": True}), log=quiet)
    assert resumed.targets.store.filled() == partly  # the store kept what the killed run filled
    resumed.fit()
    a = straight.distiller.student.state_dict()
    b = resumed.distiller.student.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [m["train_loss"] for m in straight.history] == [m["train_loss"] for m in resumed.history]


def test_store_key_is_shared_across_beta_student_seed_reduction_and_split_but_not_R_or_binarize(tmp_path, teacher):
    def name(**over):
        t = Trainer.from_config(cfg(tmp_path, teacher, tmp_path / "k", **{"DISTILLER.TYPE": "CAT_KD", **over}),
                                log=lambda s: None)
        return t.targets.store.dir.name

    base = name()
    assert name(**{"CAT_KD.LOSS.CAT_loss_weight": 123.0}) == base
    assert name(**{"DISTILLER.STUDENT": "resnet14"}) == base
    assert name(**{"EXPERIMENT.SEED": 7}) == base
    assert name(**{"DATASET.VAL_SIZE": 20}) == base
    assert name(**{"DATASET.REDUCTION": True, "DATASET.RESERVED_CLASS_NUM": 2, "DATASET.RESERVED_RATE": 0.5}) == base
    assert name(**{"CAT_KD.IF_OnlyTransferPartialCAMs": True, "CAT_KD.CAMs_Nums": 1}) == base
    assert name(**{"CAT_KD.onlyCAT": True}) == base
    # the memory format the run computes in (RUN.CHANNELS_LAST auto: channels-last on this CPU)
    others = {name(**{"CAT_KD.LOSS.CAM_RESOLUTION": 1}), name(**{"CAT_KD.IF_BINARIZE": True}),
              name(**{"DISTILLER.TYPE": "KD"}), name(**{"DATASET.SYNTHETIC.SEED": 5}),
              name(**{"RUN.CHANNELS_LAST": False})}
    assert len(others) == 5 and base not in others
    assert name(**{"RUN.CHANNELS_LAST": True}) == base
    assert name(**{"DISTILLER.TYPE": "KD"}) == name(**{"DISTILLER.TYPE": "DKD"})  # both use the logits
    assert sorted(p.name for p in (tmp_path / "k").iterdir() if not p.name.startswith(".")) == sorted({base, *others})


def _layout(n=6, views=4) -> Layout:
    return Layout(n, views, (("a", (2, 3)), ("b", (4,))), "float16")


def _values(rows: np.ndarray) -> np.ndarray:
    return np.sin(rows[:, None] * 0.37 + np.arange(10)[None, :]).astype(np.float32)


def test_a_truncated_or_mismatched_store_is_rebuilt_never_used(tmp_path):
    notes = []
    key = {"k": 1}
    s = TeacherStore(tmp_path, "x", key, _layout(), log=notes.append)
    rows = np.arange(24)
    vals, done = s.fetch(rows, lambda pos, _: (_values(rows[pos]), []))
    assert done == 24 and s.filled() == 24
    np.testing.assert_array_equal(vals, _values(rows).astype(np.float16))
    again = TeacherStore(tmp_path, "x", key, _layout(), log=notes.append)
    assert again.filled() == 24 and notes == []  # intact: reused
    with open(tmp_path / "x" / "data.bin", "r+b") as f:
        f.truncate(100)
    t = TeacherStore(tmp_path, "x", key, _layout(), log=notes.append)
    assert t.filled() == 0 and "truncated" in notes[-1] and "rebuilding" in notes[-1]
    header = json.loads((tmp_path / "x" / "header.json").read_text())
    header["key"]["k"] = 2
    (tmp_path / "x" / "header.json").write_text(json.dumps(header))
    TeacherStore(tmp_path, "x", key, _layout(), log=notes.append)
    assert "does not match its key" in notes[-1]
    TeacherStore(tmp_path, "x", key, _layout(n=7), log=notes.append)  # another shape under the same name
    assert "does not match" in notes[-1]


def test_claims_of_a_process_that_died_are_taken_over_at_once(tmp_path):
    s = TeacherStore(tmp_path, "x", {"k": 1}, _layout(), log=lambda m: None)
    dead = mp.get_context("spawn").Process(target=os.getpid)
    dead.start()
    dead.join()
    rows = np.arange(5)
    import time

    s.claims[rows] = (time.time(), dead.pid)  # claimed, never filled (the process was killed)
    t0 = time.time()
    _, done = s.fetch(rows, lambda pos, _: (_values(rows[pos]), []))
    assert done == 5 and time.time() - t0 < 5


def test_the_claims_lock_is_exclusive_across_processes_and_freed_when_its_holder_is_killed(tmp_path):
    import signal
    import subprocess
    import sys

    from filelock import Timeout

    s = TeacherStore(tmp_path, "x", {"k": 1}, _layout(), log=lambda m: None)
    code = ("import sys, time; from pathlib import Path; from catkd.teacher_cache.store import Layout, TeacherStore; "
            "s = TeacherStore(Path(sys.argv[1]), 'x', {'k': 1}, Layout(6, 4, (('a', (2, 3)), ('b', (4,))), 'float16')); "
            "s._claims_lock.acquire(); print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Timeout):
            s._claims_lock.acquire(timeout=0.2)  # another process holds it
        holder.send_signal(signal.SIGKILL)  # killed while holding the lock: the OS releases it
        holder.wait()
        rows = np.arange(4)
        _, done = s.fetch(rows, lambda pos, _: (_values(rows[pos]), []))
        assert done == 4
    finally:
        holder.kill()
        holder.wait()


def _fill(root: str, ready, go, out) -> None:
    """One of two processes filling the same store with a real (tiny) teacher."""
    torch.set_num_threads(1)
    from catkd.models import build_model

    torch.manual_seed(0)
    teacher = build_model("resnet8", 4).eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, 32, 32, generator=g)
    layout = Layout(8, 12, (("logits", (4,)),), "float16")
    store = TeacherStore(Path(root), "shared", {"k": "fill"}, layout, log=lambda m: None)
    ready.set()
    go.wait()
    computed = 0
    order = np.random.default_rng(os.getpid()).permutation(96)  # each process its own order
    for chunk in np.array_split(order, 12):
        def compute(pos, _, chunk=chunk):
            with torch.no_grad():
                x = images[torch.from_numpy(chunk[pos] // 12)]
                return teacher(x)[0].numpy(), []
        _, n = store.fetch(chunk, compute)
        computed += n
    out.put(computed)


def test_two_processes_filling_one_store_compute_each_entry_once_and_leave_no_half_written_entry(tmp_path):
    ctx = mp.get_context("spawn")
    ready, go, out = [ctx.Event(), ctx.Event()], ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_fill, args=(str(tmp_path), ready[i], go, out)) for i in range(2)]
    for p in procs:
        p.start()
    for r in ready:
        assert r.wait(120)
    go.set()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    counts = [out.get(timeout=5), out.get(timeout=5)]
    store = TeacherStore(tmp_path, "shared", {"k": "fill"}, Layout(8, 12, (("logits", (4,)),), "float16"),
                         log=lambda m: None)
    assert store.filled() == 96 and sum(counts) == 96  # claims: no entry computed twice
    from catkd.models import build_model

    torch.manual_seed(0)
    teacher = build_model("resnet8", 4).eval()
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = teacher(images)[0].numpy()
    got = np.asarray(store.data).reshape(8, 12, 4).astype(np.float32)
    np.testing.assert_allclose(got, np.repeat(want[:, None], 12, 1), rtol=2e-3, atol=2e-3)


def test_the_live_teacher_with_a_notice_when_the_store_would_exceed_the_cap(tmp_path, teacher):
    notes = []
    t = Trainer.from_config(cfg(tmp_path, teacher, tmp_path / "c", **{"DISTILLER.TYPE": "KD",
                                                                      "RUN.TEACHER_CACHE_MAX_GB": 0.0001}),
                            log=notes.append)
    assert type(t.targets) is LiveTargets and "RUN.TEACHER_CACHE_MAX_GB" in notes[-1]
    assert not (tmp_path / "c").exists()


def test_the_live_teacher_with_a_notice_without_a_finite_view_set(tmp_path, teacher):
    # ImageNet's loader declares no view set (random resized crops)
    import dataclasses

    t = Trainer.from_config(cfg(tmp_path, teacher, "off", **{"DISTILLER.TYPE": "KD"}), log=lambda s: None)
    data = dataclasses.replace(t.data, views=None)
    notes = []
    c = cfg(tmp_path, teacher, tmp_path / "c", **{"DISTILLER.TYPE": "KD", "DATASET.TYPE": "synthetic"})
    p = build_targets(c, t.distiller, data, torch.device("cpu"), t._autocast, log=notes.append)
    assert type(p) is LiveTargets and "no finite set of training views" in notes[-1]
    from catkd.data import DATASETS

    assert DATASETS["imagenet"].views(c) is None and DATASETS["cifar100"].views(c).count == 162


def test_epoch_metrics_carry_teacher_images_and_the_hit_rate(tmp_path, teacher):
    c = cfg(tmp_path, teacher, tmp_path / "c", **{"DISTILLER.TYPE": "KD", "SOLVER.EPOCHS": 2})
    r1 = Trainer.from_config(c, log=lambda s: None).fit()
    n = r1.history[0]["teacher_images"]
    assert n == 96 and r1.history[0]["teacher_cache_hit_rate"] == 0.0  # 96 training images, empty store
    r2 = Trainer.from_config(c.model_copy(update={}), out_dir=tmp_path / "again", log=lambda s: None).fit()
    assert [m["teacher_images"] for m in r2.history] == [0, 0]
    assert [m["teacher_cache_hit_rate"] for m in r2.history] == [1.0, 1.0]
    off = Trainer.from_config(cfg(tmp_path, teacher, "off", **{"DISTILLER.TYPE": "KD", "SOLVER.EPOCHS": 1,
                                                                "EXPERIMENT.NAME": "off"}), log=lambda s: None).fit()
    assert off.history[0]["teacher_images"] == 96 and off.history[0]["teacher_cache_hit_rate"] == 0.0


def test_no_store_that_would_fill_the_disk_the_live_teacher_says_why(tmp_path, teacher, monkeypatch):
    from catkd.teacher_cache import store

    monkeypatch.setattr(store, "FREE_MARGIN_BYTES", 1e18)  # as if the disk were nearly full
    notes = []
    t = Trainer.from_config(cfg(tmp_path, teacher, tmp_path / "c", **{"DISTILLER.TYPE": "KD"}), log=notes.append)
    assert type(t.targets) is LiveTargets
    assert "free" in notes[-1] and "using the live teacher" in notes[-1]
    assert not any(p.name.startswith("resnet8") for p in (tmp_path / "c").iterdir())  # nothing half-made


def test_one_teacher_forward_fills_the_stores_of_the_other_target_specs(tmp_path, teacher):
    # a CAT-KD R=2 run fills, from the same forwards, the stores of R=1 and of KD's logits that
    # already exist beside its own: a run of those then forwards no image, and trains on the same
    # values (within the store's float16 rounding) as with the live teacher
    quiet = lambda s: None  # noqa: E731
    mk = lambda **o: Trainer.from_config(cfg(tmp_path, teacher, tmp_path / "c", **o), log=quiet)  # noqa: E731
    cat2 = mk(**{"DISTILLER.TYPE": "CAT_KD", "CAT_KD.LOSS.CAM_RESOLUTION": 2})
    cat1 = mk(**{"DISTILLER.TYPE": "CAT_KD", "CAT_KD.LOSS.CAM_RESOLUTION": 1})
    kd = mk(**{"DISTILLER.TYPE": "KD"})
    cat2.train_epoch(1)
    assert cat2.targets.store.filled() == cat1.targets.store.filled() == kd.targets.store.filled() == 96
    for t in (cat1, kd):
        pairs = step_losses(t, epochs=(1,))
        assert t.targets.take_stats()["teacher_images"] == 0
        for cached, live in pairs:
            for k in cached:
                assert cached[k] == pytest.approx(live[k], rel=1e-3, abs=1e-6), (k, cached[k], live[k])


def test_off_written_bare_in_yaml_means_the_live_teacher(tmp_path, teacher):
    # yaml reads `off` as False: it must mean the switch, not a directory named "False"
    from catkd.engine.validate import load_run_config as load_config

    p = tmp_path / "run.yaml"
    p.write_text("RUN:\n  TEACHER_CACHE: off\n")
    assert load_config(str(p), {}, quiet=True).RUN.TEACHER_CACHE == "off"
    assert build_config({}, "<test>", {"RUN.TEACHER_CACHE": False}, quiet=True).RUN.TEACHER_CACHE == "off"
    assert train_main(["--cfg", str(p), "RUN.TEACHER_CACHE", "", "SOLVER.EPOCHS", "1"]) == 2  # empty: exit 2


def test_on_several_nodes_each_keeps_its_own_store_unless_a_directory_is_named(monkeypatch):
    import ray

    from catkd.study.stages import teacher_cache_env
    from catkd.teacher_cache.provider import ENV_DIR

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}, {"Alive": True}, {"Alive": False}])
    env = {ENV_DIR: "/shared/storage/.cache/teacher"}
    teacher_cache_env(env, explicit=False)
    assert ENV_DIR not in env  # trials fall back to their node's user cache directory
    env = {ENV_DIR: "/nfs/teacher"}
    teacher_cache_env(env, explicit=True)
    assert env[ENV_DIR] == "/nfs/teacher"
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}])
    env = {ENV_DIR: "/storage/.cache/teacher"}
    teacher_cache_env(env, explicit=False)
    assert env[ENV_DIR] == "/storage/.cache/teacher"  # one node: the study's storage directory


def test_a_store_created_after_a_run_started_is_filled_by_that_runs_next_missing_batch(tmp_path, teacher):
    # ASHA starts an R=2 and an R=4 trial together: whichever opens its store second must share
    # the first pass at once, not after a periodic rescan (which left every first-pass epoch of two
    # concurrent trials of different R computed twice)
    quiet = lambda s: None  # noqa: E731
    mk = lambda r: Trainer.from_config(cfg(tmp_path, teacher, tmp_path / "c", **{  # noqa: E731
        "DISTILLER.TYPE": "CAT_KD", "CAT_KD.LOSS.CAM_RESOLUTION": r}), log=quiet)
    first = mk(2)
    batches = list(first.data.train.epoch_batches(1, first.cfg.EXPERIMENT.SEED))
    first.targets(batches[0], batches[0].images)  # the first batch: no other store yet
    second = mk(1)  # created now, beside a run already filling
    first.targets(batches[1], batches[1].images)
    rows = second.targets.store.rows(batches[1].index.numpy(), batches[1].view.numpy())
    assert second.targets.store.flags[rows].all()  # filled by the first run's forward
    first_rows = second.targets.store.rows(batches[0].index.numpy(), batches[0].view.numpy())
    assert not second.targets.store.flags[first_rows].any()  # (before it existed: nothing to fill)
    second.targets(batches[1], batches[1].images)
    assert second.targets.take_stats()["teacher_images"] == 0


def test_an_entrys_bits_do_not_depend_on_which_images_missed_beside_it(tmp_path, teacher, monkeypatch):
    # two runs of one study fill the same entries in different company (a trial that finds 1-3 of
    # a batch's images missing, another that finds all 16): float32 kernels round differently at
    # other batch sizes, so unless the teacher always sees the same shape, which trial filled an
    # entry changes its last bits and the same-seed trial of two runs trains on different values.
    # Stored as float32 here: float16 rounding hides most (not all) of those differences.
    from catkd.data.loader import TrainBatch
    from catkd.teacher_cache import provider

    monkeypatch.setattr(provider, "STORE_DTYPE", "float32")
    quiet = lambda s: None  # noqa: E731
    over = {"DISTILLER.TYPE": "CAT_KD", "CAT_KD.LOSS.CAM_RESOLUTION": 2}
    whole = Trainer.from_config(cfg(tmp_path, teacher, tmp_path / "a", **over), log=quiet)
    bit = Trainer.from_config(cfg(tmp_path, teacher, tmp_path / "b", **over), log=quiet)
    # an R=1 store beside each: filled from the same forwards (a sibling), so the same must hold there
    sibs = [Trainer.from_config(cfg(tmp_path, teacher, tmp_path / d, **{**over, "CAT_KD.LOSS.CAM_RESOLUTION": 1}),
                                log=quiet).targets.store for d in ("a", "b")]
    batches = list(whole.data.train.epoch_batches(1, 0))[:3]
    for b in batches:
        whole.targets(b, b.images)  # every image of the batch missing at once
        for lo, hi in ((0, 1), (1, 3), (3, 6), (6, 11), (11, len(b.index))):  # 1, 2, 3, 5, ... at a time
            part = TrainBatch(b.images[lo:hi], b.labels[lo:hi], b.index[lo:hi], b.view[lo:hi])
            bit.targets(part, part.images)
    rows = np.concatenate([whole.targets.store.rows(b.index.numpy(), b.view.numpy()) for b in batches])
    assert bit.targets.store.flags[rows].all()
    a, c = np.asarray(whole.targets.store.data[rows]), np.asarray(bit.targets.store.data[rows])
    assert a.tobytes() == c.tobytes()
    assert sibs[1].flags[rows].all() and np.asarray(sibs[0].data[rows]).tobytes() == np.asarray(sibs[1].data[rows]).tobytes()
    # and on a hit the values are what the live teacher gives (within the store's float16 rounding)
    live = whole.distiller.live_targets(batches[0].images)["cams"].flatten(1)
    stored = whole.targets(batches[0], batches[0].images)["cams"].flatten(1)
    assert torch.allclose(stored, live, rtol=1e-5, atol=1e-6)
