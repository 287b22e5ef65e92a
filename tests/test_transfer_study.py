"""A transfer study (`from: <experiment dir>`): which students it probes, and the errors of a wrong `from`.

Specification: the students are the source experiment's confirm trials when it has any, else its
finished trials; each is probed at its final epoch (ckpt_epoch_<EPOCHS>.pth, never student_best.pth,
which a run without a validation split chooses on the test set); each becomes a sub-grid crossed with
the study's own dimensions, carrying the source's architecture, method, pair and seed. A `from` that is
missing, not an experiment, or holds no finished students is an exit-2 error naming `from`, together
with the file's other mistakes.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from catkd.study.__main__ import main as study_main
from catkd.study.load import load_study
from catkd.study.spec import StudyError, expand_grid

STUDY = {
    "name": "probe",
    "base": "transfer/linear_probe",
    "space": {"DATASET.TYPE": {"grid": ["stl10", "tiny_imagenet"]}},
    "search": {"algorithm": "grid"},
    "metric": "test_acc",
}


def _trial(exp: Path, tid: str, typ: str, seed: int, only_cat: bool = False, epochs: int = 240,
           ckpt: bool = True) -> dict:
    run = exp / f"trial_{tid}" / "run"
    run.mkdir(parents=True)
    cfg = {"DISTILLER": {"TYPE": typ, "TEACHER": "resnet32x4", "STUDENT": "resnet8x4"},
           "SOLVER": {"EPOCHS": epochs}, "EXPERIMENT": {"SEED": seed}, "CAT_KD": {"onlyCAT": only_cat}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    if ckpt:
        (run / f"ckpt_epoch_{epochs}.pth").write_bytes(b"weights")
    (run / "student_best.pth").write_bytes(b"chosen on test")
    return {"trial_id": tid, "trial_dir": str(run.parent)}


def _experiment(tmp_path: Path, rows: list[dict]) -> Path:
    exp = tmp_path / "source"
    exp.mkdir(exist_ok=True)
    pd.DataFrame(rows).to_parquet(exp / "trials.parquet")
    return exp


def _study(tmp_path: Path, **over) -> Path:
    p = tmp_path / "probe.yaml"
    p.write_text(yaml.safe_dump({**STUDY, **over}))
    return p


def test_the_confirm_trials_are_probed_at_their_final_epoch_on_every_target(tmp_path):
    exp = tmp_path / "source"
    rows = [
        {**_trial(exp, "s0", "CAT_KD", 0), "stage": "search", "status": "finished"},
        {**_trial(exp, "c1", "CAT_KD", 1), "stage": "confirm", "status": "finished"},
        {**_trial(exp, "c2", "CAT_KD", 2, only_cat=True), "stage": "confirm", "status": "finished"},
        {**_trial(exp, "c3", "NONE", 3), "stage": "confirm", "status": "finished"},
        {**_trial(exp, "c4", "KD", 4), "stage": "confirm", "status": "error"},
    ]
    _experiment(tmp_path, rows)
    spec = load_study(_study(tmp_path, **{"from": str(exp)}))
    runs = expand_grid(spec)
    assert len(runs) == 3 * 2  # three finished confirm students x two targets
    assert {(r["TRANSFER.SOURCE_METHOD"], r["TRANSFER.SOURCE_SEED"], r["TRANSFER.SOURCE_PAIR"]) for r in runs} == {
        ("CAT_KD", 1, "resnet32x4->resnet8x4"), ("CAT", 2, "resnet32x4->resnet8x4"), ("NONE", 3, "resnet8x4 alone")}
    assert {r["TRANSFER.SOURCE"] for r in runs} == {str(exp / f"trial_{t}" / "run" / "ckpt_epoch_240.pth")
                                                    for t in ("c1", "c2", "c3")}
    assert {r["DISTILLER.STUDENT"] for r in runs} == {"resnet8x4"}
    assert {r["DATASET.TYPE"] for r in runs} == {"stl10", "tiny_imagenet"}
    assert spec.from_ == str(exp)


def test_a_grid_experiment_without_confirm_gives_its_finished_trials(tmp_path):
    exp = tmp_path / "source"
    rows = [{**_trial(exp, f"t{s}", "KD", s), "stage": "search", "status": "finished"} for s in range(3)]
    rows.append({**_trial(exp, "t9", "KD", 9), "stage": "search", "status": "stopped"})
    _experiment(tmp_path, rows)
    spec = load_study(_study(tmp_path, **{"from": str(exp)}))
    assert sorted({r["TRANSFER.SOURCE_SEED"] for r in expand_grid(spec)}) == [0, 1, 2]


def test_students_that_differ_in_another_setting_are_told_apart_so_only_seeds_pool(tmp_path):
    exp = tmp_path / "source"
    rows = [{**_trial(exp, f"e{ep}s{s}", "KD", s), "stage": "search", "status": "finished",
             "DISTILLER.TEACHER_EPOCH": ep, "EXPERIMENT.SEED": s, "SOLVER.LR": 0.05}
            for ep in (40, 240) for s in (0, 1)]
    rows.append({**_trial(exp, "alone", "NONE", 0), "stage": "search", "status": "finished",
                 "DISTILLER.TEACHER_EPOCH": None, "EXPERIMENT.SEED": 0, "SOLVER.LR": 0.05})  # a column of floats
    _experiment(tmp_path, rows)
    runs = expand_grid(load_study(_study(tmp_path, **{"from": str(exp)})))
    runs = [r for r in runs if r["TRANSFER.SOURCE_METHOD"] == "KD"]
    assert sorted({(r["TRANSFER.SOURCE_SETTINGS"], r["TRANSFER.SOURCE_SEED"]) for r in runs}) == [
        ("teacher_epoch=240", 0), ("teacher_epoch=240", 1), ("teacher_epoch=40", 0), ("teacher_epoch=40", 1)]


@pytest.mark.parametrize("case, message", [
    ("missing", "no such directory"),
    ("not_an_experiment", "no trials.parquet in it: not a catkd experiment"),
    ("no_finished", "holds no finished students to probe"),
    ("no_checkpoint", r"holds no finished students to probe \(.*ckpt_epoch_240.pth is missing\)"),
])
def test_a_wrong_from_is_named(tmp_path, case, message):
    exp = tmp_path / "source"
    if case == "not_an_experiment":
        exp.mkdir()
    elif case == "no_finished":
        _experiment(tmp_path, [{**_trial(exp, "a", "KD", 0), "stage": "search", "status": "error"}])
    elif case == "no_checkpoint":
        _experiment(tmp_path, [{**_trial(exp, "a", "KD", 0, ckpt=False), "stage": "search", "status": "finished"}])
    with pytest.raises(StudyError, match=f"probe.yaml: from: .*source: {message}"):
        load_study(_study(tmp_path, **{"from": str(exp)}))


def test_from_is_required_by_a_transfer_study_and_refused_by_any_other(tmp_path):
    with pytest.raises(StudyError, match="from: a transfer study probes the students of another experiment"):
        load_study(_study(tmp_path))
    with pytest.raises(StudyError, match="from: only a study whose base is a TRANSFER preset"):
        load_study(_study(tmp_path, base="cifar100/KD/res32x4_res8x4", space={}, **{"from": str(tmp_path)}))


def test_two_mistakes_are_named_at_once_with_exit_2_and_nothing_written(tmp_path, capsys):
    study = _study(tmp_path, **{"from": str(tmp_path / "nowhere"), "fixed": {"SOLVER.LR": -1}})
    code = study_main([str(study), "--storage", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 2
    assert "from: " in err and "nowhere: no such directory" in err and "SOLVER.LR" in err
    assert not (tmp_path / "results").exists()


def test_a_trial_line_leaves_out_a_label_with_nothing_in_it():
    from catkd.study.progress import _short

    line = _short({"TRANSFER.SOURCE_METHOD": "CAT_KD", "TRANSFER.SOURCE_SETTINGS": "", "TRANSFER.SOURCE_SEED": 1})
    assert line == "TRANSFER.SOURCE_METHOD=CAT_KD TRANSFER.SOURCE_SEED=1"


@pytest.mark.ray
def test_the_smoke_makes_its_students_probes_them_on_both_real_formats_and_reports_them(tmp_path, ray_session, capsys):
    """--smoke by itself, no source experiment: small students made on the spot (shrunk further here:
    a resnet8 teacher of 2 epochs, 2 epochs each), probed through the STL-10 and TinyImageNet readers on
    small files. Through the Python API, on the test session's Ray (the command wraps the same call)."""
    import pyarrow.parquet as pq

    import catkd.study
    from analysis import report

    repo = Path(__file__).resolve().parents[1]
    storage = tmp_path / "results"
    exp = catkd.study.run(repo / "studies" / "transfer.yaml", smoke=True, storage=storage, overrides={
        "smoke.epochs": 2, "smoke.teacher_epochs": 2, "smoke.teacher": "resnet8",
        "smoke.dataset": {"TRAIN_PER_CLASS": 4, "TEST_PER_CLASS": 2}})
    assert exp == storage / "transfer-smoke"
    assert "(SMOKE: small STL-10 and TinyImageNet files, small models)" in capsys.readouterr().out
    data = next((storage / ".cache" / "data").glob("transfer-*"))
    assert (data / "stl10_binary" / "train_X.bin").stat().st_size == 10 * 4 * 3 * 96 * 96  # the real format
    assert len(list((data / "tiny-imagenet-200" / "train").glob("*/images/*.JPEG"))) == 200 * 4
    trials = pq.read_table(exp / "trials.parquet").to_pylist()
    assert len(trials) == 2 * 2 * 2 and all(t["status"] == "finished" for t in trials)  # 2 methods x 2 seeds x 2 targets
    assert {(t["TRANSFER.SOURCE_METHOD"], t["TRANSFER.SOURCE_SEED"], t["DATASET.TYPE"]) for t in trials} == {
        (m, s, d) for m in ("NONE", "CAT_KD") for s in (0, 1) for d in ("stl10", "tiny_imagenet")}
    report(exp, plots=False, echo=True)
    out = capsys.readouterr().out
    assert "| source pair" in out and "STL-10" in out and "TinyImageNet" in out
    assert "CAT-KD - student alone" in out
