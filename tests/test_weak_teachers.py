"""Weak teachers: a teacher's checkpoint of an earlier epoch of its training (DISTILLER.TEACHER_EPOCH),
its strength measured by the run itself, and the report's table and figure of the student's gain.

Specification: TEACHER_EPOCH picks ckpt_epoch_<E>.pth beside the teacher file (default or TEACHER_CKPT);
every run with a teacher measures the teacher's test top-1 (`teacher_test_acc`, equal to what that
checkpoint scored in its own run on the same test set); the weak_teachers layout gives per teacher epoch
the teacher's top-1, each method's top-1 and its gain over the student alone (Welch interval), and a
figure of the gain against the teacher's top-1.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from catkd.engine import Trainer
from catkd.engine.validate import build_run_config
from catkd.models import TeacherWeightsError
from catkd.models.weights import teacher_path

SMALL = {
    "DATASET.TYPE": "synthetic", "DATASET.SYNTHETIC.NUM_CLASSES": 4, "DATASET.SYNTHETIC.TRAIN_PER_CLASS": 40,
    "DATASET.SYNTHETIC.TEST_PER_CLASS": 20, "SOLVER.BATCH_SIZE": 32, "RUN.PROGRESS": "none", "RUN.THREADS": 1,
    "RUN.TEACHER_CACHE": "off",
}


def _cfg(tmp: Path, **over):
    return build_run_config({}, "<test>", {**SMALL, "LOG.PREFIX": str(tmp), **over}, quiet=True)


def test_teacher_epoch_picks_the_checkpoint_beside_the_teacher_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CATKD_TEACHERS", str(tmp_path))
    c = _cfg(tmp_path, **{"DISTILLER.TEACHER": "resnet32x4", "DISTILLER.TEACHER_EPOCH": 80})
    assert teacher_path(c) == tmp_path.resolve() / "resnet32x4_vanilla" / "ckpt_epoch_80.pth"
    c = _cfg(tmp_path, **{"DISTILLER.TEACHER_CKPT": str(tmp_path / "t" / "ckpt_epoch_12.pth"), "DISTILLER.TEACHER_EPOCH": 3})
    assert teacher_path(c) == (tmp_path / "t" / "ckpt_epoch_3.pth").resolve()
    assert teacher_path(_cfg(tmp_path)).name == "ckpt_epoch_240.pth"


def test_a_run_measures_its_weak_teacher_and_a_missing_epoch_is_named(tmp_path):
    teacher_run = tmp_path / "teacher"
    Trainer.from_config(_cfg(tmp_path, **{"DISTILLER.STUDENT": "resnet8", "SOLVER.EPOCHS": 2,
                                          "LOG.SAVE_CHECKPOINT_FREQ": 1}), out_dir=teacher_run).fit()
    own = {json.loads(line)["epoch"]: json.loads(line)["test_acc"] for line in (teacher_run / "metrics.jsonl").open()}
    kd = {"DISTILLER.TYPE": "KD", "DISTILLER.TEACHER": "resnet8", "DISTILLER.STUDENT": "resnet8", "SOLVER.EPOCHS": 1,
          "DISTILLER.TEACHER_CKPT": str(teacher_run / "ckpt_epoch_2.pth"), "LOG.SAVE_CHECKPOINT_FREQ": 0}
    for epoch in (1, 2):
        result = Trainer.from_config(_cfg(tmp_path, **kd, **{"DISTILLER.TEACHER_EPOCH": epoch}),
                                     out_dir=tmp_path / f"kd{epoch}").fit()
        assert result.history[-1]["teacher_test_acc"] == own[epoch]
    with pytest.raises(TeacherWeightsError, match="ckpt_epoch_7.pth.*DISTILLER.TEACHER_EPOCH 7"):
        Trainer.from_config(_cfg(tmp_path, **kd, **{"DISTILLER.TEACHER_EPOCH": 7}))


# ---- the report: fabricated results (no training) ---------------------------------------------------
ALONE = [70.0, 71.0, 72.0]
RUNS = {("KD", 40): (55.0, [70.0, 71.0, 72.0]), ("KD", 240): (79.0, [73.0, 74.0, 75.0]),
        ("CAT_KD", 40): (55.0, [72.0, 72.5, 73.0]), ("CAT_KD", 240): (79.0, [75.0, 76.0, 77.0])}


def _study(path: Path) -> Path:
    rows = []
    for (typ, ep), (tacc, values) in [(("NONE", None), (None, ALONE)), *RUNS.items()]:
        for seed, v in enumerate(values):
            tid = f"{typ}_{ep}_{seed}"
            rows.append({"trial_id": tid, "study": "weak_teachers", "stage": "search", "seed": seed,
                         "DISTILLER.TYPE": typ, "DISTILLER.TEACHER": "resnet32x4", "DISTILLER.STUDENT": "resnet8x4",
                         "DISTILLER.TEACHER_EPOCH": ep, "DATASET.TYPE": "cifar100", "EXPERIMENT.SEED": seed,
                         "status": "finished", "epochs_done": 2, "epochs_budget": 2, "best_val_acc": None,
                         "best_test_acc": v + 1, "last_test_acc": v, "last_val_acc": None, "test_acc_at_best_val": None,
                         "teacher_test_acc": tacc, "wall_seconds": 1.0, "trial_dir": f"/nowhere/{tid}"})
    spec = {"name": "weak_teachers", "base": "x", "search": {"algorithm": "grid"}, "scheduler": {"type": "fifo"},
            "metric": "test_acc", "mode": "max", "seeds": [0, 1, 2],
            "space": [{"method": {"grid": ["KD", "CAT_KD"]}, "teacher_epoch": {"grid": [40, 240]}},
                      {"method": {"grid": ["vanilla"]}}]}
    path.mkdir(parents=True)
    (path / "study.yaml").write_text(yaml.safe_dump(spec))
    pq.write_table(pa.Table.from_pylist(rows), path / "trials.parquet")
    epochs = [{"trial_id": r["trial_id"], "study": r["study"], "stage": "search", "seed": r["seed"], "epoch": 2,
               "test_acc": r["last_test_acc"]} for r in rows]
    pq.write_table(pa.Table.from_pylist(epochs), path / "results.parquet")
    return path


def test_the_report_gives_each_methods_gain_per_teacher_and_draws_it(tmp_path):
    from analysis.layouts.weak_teachers import gain_vs_teacher, points, weak_teachers
    from analysis.load import load

    study = load(_study(tmp_path / "exp"))
    table, gains = weak_teachers(study, "last", {})
    assert table.headers == ["teacher epoch", "teacher top-1", "CAT-KD", "CAT-KD gain", "KD", "KD gain"]
    assert table.rows == [[40, "55.00", "72.50 ± 0.50 (3)", "+1.50", "71.00 ± 1.00 (3)", "+0.00"],
                          [240, "79.00", "76.00 ± 1.00 (3)", "+5.00", "74.00 ± 1.00 (3)", "+3.00"]]
    assert any("Student alone: 71.00 ± 1.00 (3)" in n for n in table.notes)
    assert [r[:3] for r in gains.rows] == [[40, "CAT-KD - student alone", "+1.50"], [40, "KD - student alone", "+0.00"],
                                           [240, "CAT-KD - student alone", "+5.00"], [240, "KD - student alone", "+3.00"]]
    alone, by_method = points(study, "last")
    assert alone == ALONE and [(p["teacher_acc"], p["gain"]) for p in by_method["CAT_KD"]] == [(55.0, 1.5), (79.0, 5.0)]
    png = gain_vs_teacher(study, tmp_path / "report", "last")
    assert png is not None and png.stat().st_size > 10_000


def test_teacher_epoch_on_imagenet_needs_a_teacher_file_of_ones_own(tmp_path):
    from catkd.config import ConfigError
    from catkd.engine.validate import validate_run

    c = build_run_config({}, "<test>", {"DATASET.TYPE": "imagenet", "DISTILLER.TYPE": "KD", "DISTILLER.TEACHER": "ResNet34",
                                        "DISTILLER.STUDENT": "ResNet18", "DISTILLER.TEACHER_EPOCH": 30}, quiet=True)
    with pytest.raises(ConfigError, match="DISTILLER.TEACHER_EPOCH: the ImageNet teachers are torchvision's"):
        validate_run(c)
    c.DISTILLER.TEACHER_CKPT = str(tmp_path / "ckpt_epoch_100.pth")
    validate_run(c)
