"""Safe resume: a study killed at any moment continues with --resume, and only the same study does."""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
import yaml

from _helpers import TINY, epoch_rows, kill_orphans, leave_checkpoint_race, restorable, train_straight

from catkd.study import runner
from catkd.study.__main__ import main as study_main
from catkd.study.load import load_study


def _study(tmp_path: Path) -> Path:
    data = yaml.safe_load(TINY)
    data["confirm"] = {"top_k": 1, "seeds": [1, 2]}
    # what is checked needs no learning: few images; the teacher trains as many images as before, so
    # the kill during its training still has its moment
    data["smoke"]["dataset"].update(TRAIN_PER_CLASS=40, TEST_PER_CLASS=10)
    data["smoke"]["teacher_epochs"] = 5
    data["smoke"]["num_samples"] = 4  # the search kill (at 6 epochs) still finds a trial running after others ended
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def _env(tmp_path: Path, tag: str) -> tuple[dict, Path]:
    ray_tmp = Path(os.environ["RAY_TMPDIR"]) / tag
    ray_tmp.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "RAY_TMPDIR": str(ray_tmp), "PYTHONUNBUFFERED": "1"}, ray_tmp


def _kill_when(proc: subprocess.Popen, ray_tmp: Path, ready, timeout: float = 300) -> None:
    """SIGKILL the driver as soon as `ready()` is true (then the Ray processes it left)."""
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and not ready():
            if proc.poll() is not None:
                pytest.fail(f"the study ended (rc {proc.returncode}) before the moment to kill it")
            time.sleep(0.1)
        else:
            if not ready():
                pytest.fail("the moment to kill the study never came")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        kill_orphans(ray_tmp)


def _raw_epochs(trial_dir: Path) -> list[dict]:
    return epoch_rows((trial_dir / "result.json").read_text())


def _snapshot(d: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns) for p in d.rglob("*") if p.is_file()}


@pytest.mark.ray
def test_a_study_killed_in_its_smoke_teacher_its_search_and_its_confirm_stage_loses_and_repeats_nothing(
        tmp_path, monkeypatch, capsys, ray_session):
    """Optuna, ASHA and a confirm stage, the driver SIGKILLed three times: while the smoke teacher
    trains (before Ray starts), in the search (leaving behind, as a loaded machine can, Tune's
    checkpoint race: the running trial's next checkpoint saved and the one Tune's state names deleted),
    in the confirm stage; and, after the first kill, a changed study refused on --resume. At the end
    every trial is there once, every epoch once, and each trial's every epoch is, to the last bit, what
    its config gives trained straight through."""
    p = _study(tmp_path)
    env, ray_tmp = _env(tmp_path, "kills")
    storage = tmp_path / "s"
    exp = storage / "tiny-smoke"
    cmd = [sys.executable, "-m", "catkd.study", str(p), "--smoke", "--no-dashboard", "--storage", str(storage)]

    def search_rows() -> int:
        return sum(len(_raw_epochs(d)) for d in exp.glob("trial_*") if (d / "result.json").is_file())

    def confirm_rows() -> int:
        return sum(len(_raw_epochs(d)) for d in (exp / "confirm").glob("trial_*") if (d / "result.json").is_file())

    # kill 1: while the smoke teacher trains
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        _kill_when(proc, ray_tmp, lambda: "training" in log.read_text() and "smoke teacher" in log.read_text())
    assert (exp / "study.yaml").is_file() and not list(exp.glob("trial_*"))

    # --resume of a changed study: exit 2, naming the keys, nothing written, Ray never started
    with monkeypatch.context() as mp:
        mp.setattr(runner, "start_ray", lambda *a, **k: pytest.fail("Ray was started"))
        before = _snapshot(storage)
        rc = study_main([str(p), "--smoke", "--resume", "--no-dashboard", "--storage", str(storage),
                         "--set", "search.num_samples=3"])
        assert rc == 2 and "search.num_samples" in capsys.readouterr().err
        rc = study_main([str(p), "--resume", "--no-dashboard", "--storage", str(storage), "--name", "tiny-smoke"])
        err = capsys.readouterr().err
        assert rc == 2 and "smoke_mode" in err and "SOLVER.EPOCHS" in err
        assert _snapshot(storage) == before

    # kill 2: in the search, once some trials have finished and one is running with a checkpoint but
    # is at most at epoch 2 (ASHA stops none before epoch 3: it is still running when the kill lands);
    # the teacher goes on first
    def running_early() -> bool:
        return any((d / "result.json").is_file() and len(_raw_epochs(d)) <= 2 for d in restorable(exp))

    proc = subprocess.Popen(cmd + ["--resume"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    _kill_when(proc, ray_tmp, lambda: search_rows() >= 6 and running_early(), timeout=600)
    running = [d.name for d in restorable(exp)]  # must continue from their checkpoints, not start over
    assert leave_checkpoint_race(exp) == 1  # max_concurrent 1: the one running trial
    ended_at_kill = {}
    for d in exp.glob("trial_*"):
        rows = _raw_epochs(d) if (d / "result.json").is_file() else []
        if rows and rows[-1].get("done"):
            ended_at_kill[d.name] = len(rows)
    # kill 3: in the confirm stage, after its first epochs
    proc = subprocess.Popen(cmd + ["--resume"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    _kill_when(proc, ray_tmp, lambda: (exp / "confirm").is_dir() and confirm_rows() >= 2, timeout=600)
    running += [f"confirm/{d.name}" for d in restorable(exp / "confirm")]
    # the last --resume runs to the end: the command's main in this process, on the test session's Ray
    assert study_main([str(p), "--smoke", "--resume", "--no-dashboard", "--storage", str(storage)]) == 0

    trials = pq.read_table(exp / "trials.parquet").to_pylist()
    rows = pq.read_table(exp / "results.parquet").to_pylist()
    search = [t for t in trials if t["stage"] == "search"]
    confirm = [t for t in trials if t["stage"] == "confirm"]
    assert len(search) == 4
    assert len(confirm) == 1 * 2 and all(t["status"] == "finished" for t in confirm)
    # trials that had ended before the first kill were not run again: their files did not grow
    for name, n in ended_at_kill.items():
        assert len(_raw_epochs(exp / name)) == n, name
    # the trials running at a kill continued from their checkpoints (none started over)
    assert running and all((exp / name / "run" / "restored.pth").is_file() for name in running), running
    # Tune's raw per-trial rows: no epoch reported twice with other numbers (a restored trial replays
    # an epoch's numbers), epoch 1 at most once. Tune may have lost rows: it writes them in the driver's
    # own folder and copies that into the experiment now and then, so a kill loses the rows since (and a
    # restored trial's copy can replace them); the Parquet rows fill such gaps from the trial's own
    # record. They hold every epoch the trial ran, once.
    for t in trials:
        raw = _raw_epochs(Path(t["trial_dir"]))
        epochs = [r["epoch"] for r in raw]
        assert epochs.count(1) <= 1 and set(epochs) <= set(range(1, t["epochs_done"] + 1)), (t["trial_id"], epochs)
        for e in set(epochs):
            same = [(r["test_acc"], r.get("val_acc"), r["train_loss"]) for r in raw if r["epoch"] == e]
            assert len(set(same)) == 1, (t["trial_id"], e, same)
        assert sorted(r["epoch"] for r in rows if r["trial_id"] == t["trial_id"]) == list(range(1, t["epochs_done"] + 1))
        # every epoch's numbers, to the last bit, those of the trial's config trained straight through
        # (a trial ASHA stopped: the epochs it ran)
        got = sorted((r["epoch"], r["train_loss"], r["test_acc"]) for r in rows if r["trial_id"] == t["trial_id"])
        assert got == train_straight(Path(t["trial_dir"]), tmp_path / f"straight-{t['trial_id']}")[:len(got)], t["trial_id"]
    # the Optuna study ends with num_samples trials, in the searcher's state and in <experiment>/optuna.db
    # (which the kill left with trials the searcher's last checkpoint never knew: told FAIL, not RUNNING)
    saved = sorted(exp.glob("searcher-state-*.pkl"))
    with open(saved[-1], "rb") as f:
        state = pickle.load(f)
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for study in (state["_ot_study"] if isinstance(state, dict) else state[0],
                  optuna.load_study(study_name="tiny", storage=f"sqlite:///{exp / 'optuna.db'}")):
        assert len([t for t in study.trials if t.state in ended]) == 4
        assert all(t.state in (*ended, optuna.trial.TrialState.FAIL) for t in study.trials)


@pytest.mark.ray
def test_a_kill_that_cut_tunes_only_saved_state_starts_the_stage_over_with_the_cut_attempt_set_aside(
        tmp_path, ray_session, smoke_teacher, capsys):
    """Tune rewrites its experiment state in place: a driver killed meanwhile leaves it empty, and Tune
    alone would restart the experiment from its searcher's state (a spent grid runs one trial with no
    parameters, beside the earlier ones). The resume sets the cut attempt aside and runs the stage again."""
    data = yaml.safe_load(TINY)
    data.update(space={"beta": {"grid": [5.0, 50.0]}}, search={"algorithm": "grid"}, scheduler={"type": "fifo"})
    data["smoke"] = {**{k: v for k, v in data["smoke"].items() if k != "grace_period"}, "epochs": 2, "val_size": 20,
                     "dataset": {"NUM_CLASSES": 4, "TRAIN_PER_CLASS": 25, "TEST_PER_CLASS": 10}}
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    spec = load_study(p, smoke=True)
    storage, exp = tmp_path / "s", tmp_path / "s" / "cut"
    smoke_teacher(spec, storage)
    assert runner.run_study(spec, str(p), storage, "cut", dashboard=False) == 0
    first = {t["CAT_KD.LOSS.CAT_loss_weight"]: t for t in pq.read_table(exp / "trials.parquet").to_pylist()}
    (state,) = exp.glob("experiment_state-*.json")
    state.write_bytes(b"")  # what the kill left
    (exp / "stage.json").write_text("{}")  # killed in the search: not done
    capsys.readouterr()

    assert runner.run_study(spec, str(p), storage, "cut", resume=True, dashboard=False) == 0
    out = capsys.readouterr().out
    assert "set aside in" in out and "no earlier readable state: the stage starts over" in out, out
    trials = pq.read_table(exp / "trials.parquet").to_pylist()
    assert sorted(t["CAT_KD.LOSS.CAT_loss_weight"] for t in trials) == [5.0, 50.0]  # the grid, once each
    assert all(t["status"] == "finished" and t["trial_id"] != first[5.0]["trial_id"] for t in trials)
    pairs = [(r["trial_id"], r["epoch"]) for r in pq.read_table(exp / "results.parquet").to_pylist()]
    assert len(pairs) == len(set(pairs)) == 2 * 2
    for t in trials:  # the stage run again gives what it gave the first time
        assert t["last_test_acc"] == first[t["CAT_KD.LOSS.CAT_loss_weight"]]["last_test_acc"]
    aside = exp / ".unreadable-state"
    assert (aside / state.name).is_file()
    assert {d.name for d in aside.glob("trial_*")} == {Path(t["trial_dir"]).name for t in first.values()}


def test_ctrl_c_in_a_stage_stops_the_study_instead_of_ending_the_stage_as_done(ray_session, tmp_path):
    """Tune's own SIGINT handler makes `Tuner.fit()` return normally on Ctrl-C, so the runner would
    record the stage done and `--resume` would skip what was left of it. Tune never restores the handler
    it replaced, so one left by an earlier run in the same process (here a stand-in that ignores the
    press) would do the same. Around a stage's `fit()` a SIGINT raises KeyboardInterrupt (the CLI exits
    130 and `--resume` continues)."""
    from ray import tune

    from catkd.study.stages import ctrl_c_raises, start_ray

    start_ray(None, False)
    assert os.environ.get("TUNE_DISABLE_SIGINT_HANDLER") == "1"
    driver = os.getpid()
    left_over = signal.signal(signal.SIGINT, lambda *_: None)

    def trainable(config):
        os.kill(driver, signal.SIGINT)  # Ctrl-C on the driver while a trial runs
        for i in range(600):
            time.sleep(0.1)
            tune.report({"i": i})

    tuner = tune.Tuner(trainable, run_config=tune.RunConfig(name="sigint", storage_path=str(tmp_path), verbose=0))
    try:
        with pytest.raises(KeyboardInterrupt), ctrl_c_raises():
            tuner.fit()
    finally:
        signal.signal(signal.SIGINT, left_over)


def test_a_ctrl_c_that_the_library_catches_still_raises_when_the_stage_returns():
    """A KeyboardInterrupt can land inside code of Tune's or Ray's that catches it; the stage must not
    then count as done."""
    from catkd.study.stages import ctrl_c_raises

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), ctrl_c_raises():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises here
        except KeyboardInterrupt:
            pass  # swallowed, as a library might
    assert signal.getsignal(signal.SIGINT) is before  # the handler in place before is back
    with ctrl_c_raises():
        pass  # no press: nothing raised


def test_a_smoke_teacher_killed_mid_training_continues_where_it_stopped_and_ends_bitwise_equal(tmp_path, monkeypatch, capsys):
    import torch

    from catkd.engine.trainer import Trainer
    from catkd.study.preflight import ensure_smoke_teacher
    from catkd.study.load import load_study

    data = yaml.safe_load(TINY)
    data["smoke"]["teacher_epochs"] = 4
    data["smoke"]["dataset"].update(TRAIN_PER_CLASS=25, TEST_PER_CLASS=10)  # bit for bit needs no learning
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    spec = load_study(p, smoke=True)
    whole = ensure_smoke_teacher(spec, tmp_path / "a")  # uninterrupted

    real_epoch = Trainer.train_epoch

    def dies_in_epoch_3(self, epoch):
        if epoch == 3:
            raise KeyboardInterrupt  # Ctrl-C in the third epoch: epochs 1-2 are checkpointed
        return real_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", dies_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        ensure_smoke_teacher(spec, tmp_path / "b")
    monkeypatch.setattr(Trainer, "train_epoch", real_epoch)
    capsys.readouterr()
    resumed = ensure_smoke_teacher(spec, tmp_path / "b")
    out = capsys.readouterr().out
    assert "continuing its interrupted training" in out and "at epoch 2" in out

    # an unreadable partial checkpoint is set aside and the teacher trained from the start
    monkeypatch.setattr(Trainer, "train_epoch", dies_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        ensure_smoke_teacher(spec, tmp_path / "c")
    monkeypatch.setattr(Trainer, "train_epoch", real_epoch)
    (partial,) = (tmp_path / "c").glob("*/checkpoint.pth")
    partial.write_bytes(partial.read_bytes()[:100])
    capsys.readouterr()
    retrained = ensure_smoke_teacher(spec, tmp_path / "c")
    assert "training from the start" in capsys.readouterr().out

    def weights(path):
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state.get("model", state)

    ref = weights(whole)
    for other in (resumed, retrained):
        got = weights(other)
        assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
