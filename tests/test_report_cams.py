"""analysis/report.py --cams: the CAM picture of a fake study (no Ray, nothing trained)."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent

from analysis import report
from catkd.engine.validate import build_run_config as build_config
from catkd.models import build_model


def _fake_study(tmp: Path, teacher_file: Path, write_teacher: bool = True) -> Path:
    torch.manual_seed(0)
    if write_teacher:
        torch.save({"model": build_model("resnet8", num_classes=4).state_dict()}, teacher_file)
    cfg = build_config({}, "<test>", {
        "DATASET.TYPE": "synthetic", "DATASET.SYNTHETIC.NUM_CLASSES": 4,
        "DATASET.SYNTHETIC.TRAIN_PER_CLASS": 20, "DATASET.SYNTHETIC.TEST_PER_CLASS": 5,
        "DISTILLER.TYPE": "CAT_KD", "DISTILLER.TEACHER": "resnet8", "DISTILLER.STUDENT": "resnet8",
        "DISTILLER.TEACHER_CKPT": str(teacher_file), "CAT_KD.CAMs_Nums": 4,
    }, quiet=True)
    exp = tmp / "tiny"
    trial_dir = exp / "trainable_abc01"
    (trial_dir / "checkpoint_000001").mkdir(parents=True)
    student = build_model("resnet8", num_classes=4, head_bias=False)
    torch.save({"model": student.state_dict(), "config": cfg.to_dict(), "epoch": 1},
               trial_dir / "checkpoint_000001" / "checkpoint.pth")
    # a second, worse trial without any checkpoint: never picked
    table = pa.table({"trial_id": ["abc01", "abc02"], "stage": ["search", "search"],
                      "status": ["finished", "finished"], "best_test_acc": [40.0, 30.0],
                      "trial_dir": [str(trial_dir), str(exp / "trainable_abc02")]})
    pq.write_table(table, exp / "trials.parquet")
    (exp / "study.yaml").write_text(yaml.safe_dump(
        {"name": "tiny", "smoke_mode": True, "metric": "test_acc", "base": "cifar100/CAT_KD/res56_res20"}))
    return exp


def test_cams_png(tmp_path, capsys):
    exp = _fake_study(tmp_path, tmp_path / "teacher.pth")
    assert report.main([str(exp), "--cams", "--images", "3"]) == 0
    png = exp / "report" / "cams_abc01.png"
    assert png.is_file() and png.stat().st_size > 5_000
    assert str(png) in capsys.readouterr().out


def test_cams_missing_teacher(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "teacher.pth"
    exp = _fake_study(tmp_path, missing, write_teacher=False)
    assert report.main([str(exp), "--cams", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "teacher" in err and str(missing) in err
    assert not (tmp_path / "out" / "cams_abc01.png").exists()


def test_cams_no_checkpoint(tmp_path, capsys):
    exp = tmp_path / "empty"
    exp.mkdir()
    pq.write_table(pa.table({"trial_id": ["x1"], "stage": ["search"], "status": ["finished"],
                             "best_test_acc": [1.0], "trial_dir": [str(exp / "trainable_x1")]}),
                   exp / "trials.parquet")
    assert report.main([str(exp), "--cams"]) == 2
    assert "no trial has a Tune checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("trial", ["abc02", "zzz"])
def test_cams_trial_without_checkpoint_or_unknown(tmp_path, trial):
    exp = _fake_study(tmp_path, tmp_path / "teacher.pth")
    assert report.main([str(exp), "--cams", "--trial", trial]) == 2


def test_pick_prefers_finished_confirm_then_best(tmp_path):
    from analysis.cams import pick_trial
    from analysis.load import load

    exp = tmp_path / "s"
    rows = [("a", "search", "finished", 90.0), ("b", "confirm", "finished", 50.0),
            ("c", "confirm", "finished", 60.0), ("d", "confirm", "stopped", 99.0)]
    for tid, *_ in rows:
        (exp / tid / "checkpoint_000002").mkdir(parents=True)
        (exp / tid / "checkpoint_000002" / "checkpoint.pth").write_bytes(b"x")
    (exp / "c" / "checkpoint_000010").mkdir()
    (exp / "c" / "checkpoint_000010" / "checkpoint.pth").write_bytes(b"x")
    pq.write_table(pa.table({"trial_id": [r[0] for r in rows], "stage": [r[1] for r in rows],
                             "status": [r[2] for r in rows], "best_test_acc": [r[3] for r in rows],
                             "trial_dir": [f"/moved/away/{r[0]}" for r in rows]}), exp / "trials.parquet")
    picked = pick_trial(load(exp))
    assert picked.trial_id == "c" and picked.checkpoint == exp / "c" / "checkpoint_000010" / "checkpoint.pth"
    assert pick_trial(load(exp), "a").trial_id == "a"


def test_student_best_preferred(tmp_path):
    from analysis.cams import load_trial, pick_trial
    from analysis.load import load

    exp = _fake_study(tmp_path, tmp_path / "teacher.pth")
    best = build_model("resnet8", num_classes=4, head_bias=False).state_dict()
    (exp / "trainable_abc01" / "run").mkdir()
    torch.save({"model": best, "epoch": 7}, exp / "trainable_abc01" / "run" / "student_best.pth")
    cfg, sd, source = load_trial(pick_trial(load(exp)))
    assert cfg.RUN.DEVICE == "cpu" and "student_best.pth (epoch 7)" in source
    assert all(torch.equal(sd[k], best[k]) for k in best)


def test_the_cams_command_in_a_fresh_process_reads_the_checkpoints_method_sections(tmp_path):
    # a process that has imported no distiller yet (the command as a user runs it): the saved config's
    # CAT_KD section must still validate (the methods' sections are registered where it is read)
    import subprocess
    import sys

    exp = _fake_study(tmp_path, tmp_path / "teacher.pth")
    done = subprocess.run([sys.executable, str(ROOT / "analysis" / "report.py"), str(exp), "--cams", "--images", "2"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (exp / "report" / "cams_abc01.png").is_file()
