"""studies/imagenet.yaml: the paper's ImageNet table as a study: its presets, what it needs before it
starts, and its --smoke on real JPEG files through the ImageNet code path."""
from __future__ import annotations

from pathlib import Path

import pytest

import catkd.study
from catkd.train import load_config
from catkd.study.load import load_study
from catkd.study.spec import StudyError

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "studies" / "imagenet.yaml"


@pytest.mark.filterwarnings("ignore:AT. student:UserWarning", "ignore:REVIEWKD.MAX_MID_CHANNEL:UserWarning")  # the
# generator builds each distiller on its pair, and these two say (as they should) how they pair stages and cap widths
def test_the_imagenet_presets_are_what_the_generator_writes_and_follow_the_recipe(capsys):
    from _helpers import script

    # (it builds every distiller on its pair's models)
    assert script("make_imagenet_presets").main(["--check"]) == 0, capsys.readouterr().out
    for method, pair, batch, lr in [("KD", "r34_r18", 512, 0.2), ("DKD", "r50_mv2", 512, 0.2), ("AT", "r50_mv2", 512, 0.2),
                                    ("REVIEWKD", "r34_r18", 256, 0.1), ("OFD", "r50_mv2", 128, 0.05),
                                    ("CRD", "r34_r18", 256, 0.1), ("CRD", "r50_mv2", 256, 0.1),
                                    ("CAT-KD", "r34_r18", 512, 0.2), ("CAT-KD", "r50_mv2", 512, 0.2)]:
        cfg = load_config(f"imagenet/{method}/{pair}", quiet=True)
        assert cfg.DATASET.TYPE == "imagenet", (method, pair)
        assert (cfg.SOLVER.BATCH_SIZE, cfg.SOLVER.LR, cfg.SOLVER.EPOCHS, cfg.SOLVER.LR_DECAY_STAGES,
                cfg.SOLVER.WEIGHT_DECAY) == (batch, lr, 100, [30, 60, 90], 1e-4), (method, pair)
        assert (cfg.DISTILLER.TEACHER, cfg.DISTILLER.STUDENT) == (
            ("ResNet34", "ResNet18") if pair == "r34_r18" else ("ResNet50", "MobileNetV1")), (method, pair)


def test_the_study_runs_every_method_on_both_pairs_and_ofd_where_mdistiller_has_it():
    from catkd.study.presets import chosen_preset
    from catkd.study.spec import expand_grid

    spec = load_study(STUDY)
    chosen = sorted({chosen_preset(spec.base, p) for p in expand_grid(spec)})
    assert chosen == sorted(
        [f"imagenet/{m}/{p}" for m in ("KD", "DKD", "AT", "CRD", "REVIEWKD", "CAT-KD") for p in ("r34_r18", "r50_mv2")]
        + ["imagenet/vanilla/ResNet18", "imagenet/vanilla/MobileNetV1", "imagenet/OFD/r50_mv2"])
    assert spec.seeds == [0]


def test_without_imagenet_and_the_teachers_the_study_is_exit_2_naming_each_missing_thing(tmp_path, monkeypatch):
    monkeypatch.setenv("CATKD_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no torchvision weights there
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StudyError) as e:
        catkd.study.run(STUDY, storage=tmp_path / "results")
    msg = str(e.value)
    assert f"ImageNet not found: looked at {tmp_path / 'data' / 'imagenet'}/train" in msg, msg
    for arch, file, builder in [("ResNet34", "resnet34-b627a593.pth", "resnet34"),
                                ("ResNet50", "resnet50-0676ba61.pth", "resnet50")]:
        assert f"teacher {arch} not found: looked at {tmp_path / 'torch' / 'hub' / 'checkpoints' / file}" in msg, msg
        assert f"torchvision.models.{builder}(weights='IMAGENET1K_V1')" in msg, msg
    assert msg.count("teacher ResNet34 not found") == 1  # each named once, not once per method
    assert not (tmp_path / "results").exists()


@pytest.mark.ray
def test_the_smoke_study_trains_on_real_jpegs_through_the_imagenet_path_and_the_report_renders_its_table(
        tmp_path, ray_session, capsys):
    """Through the Python API, on the test session's Ray (the command wraps the same call)."""
    import json

    import pyarrow.parquet as pq

    from analysis import report

    storage = tmp_path / "results"
    # three of the study's methods (the student alone, CRD, whose memory reads each image's index in the
    # folder, and CAT-KD), one epoch each and half the images: the same code path, a small part of the
    # time (the teacher keeps 3 epochs: CAT-KD's CAMs need one whose BatchNorm statistics have settled)
    exp = catkd.study.run(STUDY, smoke=True, storage=storage, overrides={
        "space.0.method": {"grid": ["vanilla", "CRD", "CAT_KD"]}, "smoke.epochs": 1, "smoke.teacher_epochs": 3,
        "smoke.dataset": {"NUM_CLASSES": 4, "TRAIN_PER_CLASS": 12, "TEST_PER_CLASS": 4}, "smoke.val_size": 8})
    assert exp == storage / "imagenet-smoke"
    assert "(SMOKE: a small JPEG folder, small models)" in capsys.readouterr().out
    jpegs = list((storage / ".cache" / "data").glob("jpegs-*/imagenet/train/*/*.JPEG"))
    assert len(jpegs) == 4 * 12 and all(p.read_bytes()[:2] == b"\xff\xd8" for p in jpegs)  # real JPEG files
    trials = pq.read_table(exp / "trials.parquet").to_pylist()
    assert sorted(t["method"] for t in trials) == ["CAT_KD", "CRD", "vanilla"]
    assert all(t["status"] == "finished" and t["DATASET.TYPE"] == "imagenet" for t in trials), trials
    # the smoke's crop: the same path at 112 pixels (DATASET.CROP_SIZE)
    assert {json.loads((Path(t["trial_dir"]) / "run" / "data.json").read_text())["crop_size"] for t in trials} == {112}
    rows = pq.read_table(exp / "results.parquet").to_pylist()
    assert all(r["test_acc_top5"] is not None for r in rows)
    report(exp, plots=False, echo=True)
    out = capsys.readouterr().out
    assert "SMOKE, small JPEG folder" in out and "top-5" in out, out[:3000]
    assert "CAT-KD" in out and "student alone" in out
