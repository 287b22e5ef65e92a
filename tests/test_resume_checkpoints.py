"""Before a resume, a trial whose Tune state names a checkpoint Tune had already replaced gets its
newest checkpoint under that name too (catkd.study.checkpoints); the copies Tune did not take over
are removed after the stage, and the epochs the copy holds that Tune never recorded are reported again.
End to end: tests/test_faults.py's killed-twice study and tests/test_resume.py's killed-thrice one.
A Tune state cut by a kill (Tune writes it in place) is set aside with its session's files and the
trials it alone knew; end to end: tests/test_resume.py. A trial restored with no epoch left to train
reports its last one again."""
from __future__ import annotations

import json

import pytest

from catkd.storage import location
from catkd.study import checkpoints


def _experiment(root, state: str | None = None) -> None:
    """Trials a (running, newest checkpoint 2, 1 deleted), b (ended, newest 4), c (running, only its
    first checkpoint), d (running, 2 and 3 both there), e (running, no checkpoint yet), f (running, its
    state two checkpoints behind: it names 1, the folder holds 3)."""
    trials = {"a": "RUNNING", "b": "TERMINATED", "c": "RUNNING", "d": "PAUSED", "e": "PENDING", "f": "RUNNING"}
    named = {"f": json.dumps({"last_result": {"checkpoint_dir_name": "checkpoint_000001", "epoch": 2}})}
    data = {"trial_data": [[json.dumps({"trial_id": t, "status": s}), named.get(t, "{}")] for t, s in trials.items()]}
    (root / "experiment_state-2026-01-01_00-00-00.json").write_bytes(b"{}")  # an older state, not read
    (root / "experiment_state-2026-01-01_00-00-09.json").write_bytes(
        (state if state is not None else json.dumps(data)).encode())
    for trial, index in [("a", 2), ("b", 4), ("c", 0), ("d", 2), ("d", 3), ("f", 3)]:
        (root / f"trial_{trial}/checkpoint_{index:06d}/checkpoint.pth").write_bytes(f"{trial}{index}".encode())
    (root / "trial_e/params.json").write_bytes(b"{}")


def _ckpts(root) -> dict[str, bytes]:
    return {rel: (root / rel).read_bytes() for rel in sorted(root.files()) if "/checkpoint_" in rel}


@pytest.fixture(params=["disk", "s3"])
def exp(request, tmp_path):
    if request.param == "disk":
        return location(tmp_path / "exp")
    s3 = request.getfixturevalue("s3")
    return location(f"{s3.uri}/results/exp")


def test_a_restored_trial_missing_the_checkpoint_before_its_newest_gets_a_copy_there(exp):
    _experiment(exp)
    before = _ckpts(exp)
    made = checkpoints.mend(exp)
    assert [str(m) for m in made] == [str(exp / "trial_a/checkpoint_000001"), str(exp / "trial_f/checkpoint_000001")]
    assert _ckpts(exp) == {**before, "trial_a/checkpoint_000001/checkpoint.pth": b"a2",  # the newest state
                           "trial_f/checkpoint_000001/checkpoint.pth": b"f3",  # under the name the state gives,
                           # with the last epoch Tune recorded: the restored trial reports those after it again
                           "trial_f/checkpoint_000001/recorded.json": b'{"epoch": 2}'}
    checkpoints.tidy(made)
    assert _ckpts(exp) == before


def test_without_a_readable_tune_state_every_trial_is_mended(exp):
    _experiment(exp, state="not json")
    made = checkpoints.mend(exp)
    assert sorted(str(m) for m in made) == [str(exp / "trial_a/checkpoint_000001"), str(exp / "trial_b/checkpoint_000003"),
                                            str(exp / "trial_f/checkpoint_000002")]


def test_a_copy_tune_has_already_deleted_is_no_error_for_tidy(exp):
    _experiment(exp)
    made = checkpoints.mend(exp)
    exp.fs.delete_dir(made[0].path)  # Tune restored from it, then replaced it
    checkpoints.tidy(made)
    assert "trial_a/checkpoint_000001/checkpoint.pth" not in _ckpts(exp)


def test_a_retried_trial_is_reported_with_its_own_error_and_a_lost_worker_as_such(tmp_path):
    from catkd.study.progress import failure_reason

    restore = ("Failure # 1 (occurred at 2026-12-06_15-00-03)\nray::ImplicitFunc.restore() (pid=31185)\n"
               '  File "trainable.py", line 547, in restore\n    raise ValueError(\n'
               "ValueError: Could not recover from checkpoint as it does not exist on storage anymore.\n")
    lost = ("Failure # 2 (occurred at 2026-12-06_15-00-09)\nThe actor died unexpectedly before finishing this task.\n"
            "\tclass_name: ImplicitFunc\n\tactor_id: cc26411a\n")
    f = tmp_path / "error.txt"
    f.write_text(restore)
    assert failure_reason(f) == "ValueError: Could not recover from checkpoint as it does not exist on storage anymore."
    f.write_text(restore + lost)  # the file accumulates: the newest failure is the one named
    assert failure_reason(f) == "worker or node lost"
    f.write_text(lost + restore.replace("# 1", "# 3"))
    assert failure_reason(f).startswith("ValueError: Could not recover")
    assert failure_reason(None) == failure_reason(tmp_path / "none.txt") == "worker or node lost"


def _state(root, session: str, trials: list[str] | None) -> None:
    """Tune's files of one session: its experiment state (cut to nothing when `trials` is None) and its
    searcher's and callbacks' states."""
    data = b"" if trials is None else json.dumps(
        {"trial_data": [[json.dumps({"trial_id": t, "status": "RUNNING"}), "{}"] for t in trials]}).encode()
    (root / f"experiment_state-{session}.json").write_bytes(data)
    (root / f"basic-variant-state-{session}.json").write_bytes(b"{}")
    (root / f"callback-states-{session}.pkl").write_bytes(b"x")


def test_a_cut_newest_state_is_set_aside_with_its_session_and_the_trials_only_it_knew(tmp_path):
    root = tmp_path / "exp"
    for t in ("a", "b", "c"):
        (root / f"trial_{t}").mkdir(parents=True)
        (root / f"trial_{t}" / "params.json").write_text("{}")
    _state(root, "2026-01-01_00-00-00", ["a", "b"])
    _state(root, "2026-01-01_00-01-00", None)  # the driver was killed while Tune wrote it
    (root / "tuner.pkl").write_bytes(b"t")
    exp = location(root)
    assert checkpoints.set_aside_unreadable(exp) == [
        "basic-variant-state-2026-01-01_00-01-00.json", "callback-states-2026-01-01_00-01-00.pkl",
        "experiment_state-2026-01-01_00-01-00.json", "trial_c/"]
    assert sorted(p.name for p in root.iterdir()) == [
        ".unreadable-state", "basic-variant-state-2026-01-01_00-00-00.json", "callback-states-2026-01-01_00-00-00.pkl",
        "experiment_state-2026-01-01_00-00-00.json", "trial_a", "trial_b", "tuner.pkl"]
    assert (root / ".unreadable-state" / "trial_c" / "params.json").is_file()  # kept, out of Tune's and the results' way
    assert checkpoints.readable_state(exp)
    assert checkpoints.set_aside_unreadable(exp) is None  # what is left is readable: nothing more to do


def test_with_no_readable_state_left_every_trial_is_set_aside_and_the_stage_starts_over(tmp_path):
    root = tmp_path / "exp"
    (root / "trial_a").mkdir(parents=True)
    _state(root, "2026-01-01_00-00-00", None)
    exp = location(root)
    assert checkpoints.set_aside_unreadable(exp) == [
        "basic-variant-state-2026-01-01_00-00-00.json", "callback-states-2026-01-01_00-00-00.pkl",
        "experiment_state-2026-01-01_00-00-00.json", "trial_a/"]
    assert not checkpoints.readable_state(exp) and not (root / "trial_a").exists()


def test_a_readable_newest_state_and_an_object_store_are_left_alone(tmp_path, s3):
    root = tmp_path / "exp"
    (root / "trial_a").mkdir(parents=True)
    _state(root, "2026-01-01_00-00-00", ["a"])
    assert checkpoints.set_aside_unreadable(location(root)) is None and (root / "trial_a").is_dir()
    # in a bucket an object appears only once its upload completes: no cut state to find
    assert checkpoints.set_aside_unreadable(location(f"{s3.uri}/results/exp")) is None


def test_a_search_started_over_drops_the_optuna_study_of_its_cut_attempt(tmp_path):
    import optuna

    from _helpers import TINY
    from catkd.study.load import load_study
    from catkd.study.search import make_searcher

    p = tmp_path / "study.yaml"
    p.write_text(TINY)
    spec = load_study(p, smoke=True)
    db, url = tmp_path / "optuna.db", f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name=spec.name, storage=url).ask()  # the cut attempt's trial, left RUNNING
    make_searcher(spec, "val_acc", "max", db)  # a restored search goes on with it
    assert len(optuna.load_study(study_name=spec.name, storage=url).trials) == 1
    make_searcher(spec, "val_acc", "max", db, start_over=True)
    assert optuna.load_study(study_name=spec.name, storage=url).trials == []


def test_a_restored_trial_reports_again_the_epochs_its_checkpoint_holds_beyond_those_tune_recorded(tmp_path, monkeypatch):
    """A driver killed after a trial's checkpoint, before Tune wrote that epoch's result (or saved its
    state): restored from that checkpoint (a mended copy naming the last epoch Tune recorded, or its
    last, with nothing left to train), the trial reports the epochs Tune missed, the numbers of the run
    that trained them, before it trains on. Without this, those epochs are lost from the results."""
    import shutil
    from types import SimpleNamespace

    import yaml
    from ray import tune

    from catkd.study import trainable
    from catkd.study.load import load_study
    from catkd.study.preflight import absolutise
    from catkd.study.spec import expand_grid

    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({
        "name": "rereport", "base": "cifar100/vanilla/resnet20", "fixed": {"normalize": True},
        "space": {"lr": {"grid": [0.05]}}, "search": {"algorithm": "grid"}, "scheduler": {"type": "fifo"},
        "metric": "test_acc", "smoke": {"epochs": 3, "student": "resnet8", "val_size": 0,
                                        "dataset": {"NUM_CLASSES": 4, "TRAIN_PER_CLASS": 8, "TEST_PER_CLASS": 4}}}))
    spec, env = absolutise(load_study(p, smoke=True))
    study, (params,) = spec.model_dump(mode="json"), expand_grid(spec)  # the trial's config: dotted keys
    reports, restore, taken = [], {}, {}
    monkeypatch.setattr(trainable, "_gpu_ids", lambda: "")
    monkeypatch.setattr(tune, "get_context", lambda: SimpleNamespace(get_trial_dir=lambda: str(tmp_path / "trial_a")))
    monkeypatch.setattr(tune, "get_checkpoint", lambda: restore.get("ckpt"))

    def report(metrics, checkpoint=None):
        reports.append((metrics, checkpoint))
        if checkpoint is not None and metrics["epoch"] not in taken:  # Tune keeps a copy of each one
            taken[metrics["epoch"]] = shutil.copytree(checkpoint.path, tmp_path / f"taken_{metrics['epoch']}")
    monkeypatch.setattr(tune, "report", report)

    def run() -> list[dict]:
        reports.clear()
        trainable.train_trial(params, study, env, cpus=1, exp_path=str(tmp_path / "exp"))
        return [m for m, _ in reports]

    keys = ("epoch", "test_acc", "train_loss", "status", "epochs_budget")
    first = run()  # the whole run: epochs 1 to 3, each with a checkpoint
    assert [m["epoch"] for m in first] == [1, 2, 3] and all(c is not None for _, c in reports)

    # mended: epoch 2's checkpoint under the name Tune's state gives, which had recorded epoch 1 only
    (taken[2] / "recorded.json").write_text('{"epoch": 1}')
    restore["ckpt"] = tune.Checkpoint.from_directory(str(taken[2]))
    again = run()
    assert [m["epoch"] for m in again] == [2, 3]  # epoch 2 reported again, then epoch 3 trained
    assert {k: again[0].get(k) for k in keys} == {k: first[1].get(k) for k in keys}
    assert reports[0][1] is None and reports[1][1] is not None  # the replayed epoch's state is the restored one

    # Tune's own last checkpoint: nothing left to train, the last epoch reported once more
    restore["ckpt"] = tune.Checkpoint.from_directory(str(taken[3]))
    again = run()
    assert [m["epoch"] for m in again] == [3]
    assert {k: again[0].get(k) for k in keys} == {k: first[-1].get(k) for k in keys}
