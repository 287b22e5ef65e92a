"""The trainer end to end on the embedded synthetic data: learning, teachers, resume, divergence."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from catkd.engine.validate import build_run_config as build_config
from catkd.engine import Trainer
from catkd.train import main as train_main

pytestmark = pytest.mark.slow

SMALL = {
    "DATASET.TYPE": "synthetic",
    "DATASET.SYNTHETIC.NUM_CLASSES": 4,
    "DATASET.SYNTHETIC.TRAIN_PER_CLASS": 80,
    "DATASET.SYNTHETIC.TEST_PER_CLASS": 40,
    "SOLVER.BATCH_SIZE": 32,
    "SOLVER.LR": 0.05,
    "SOLVER.WEIGHT_DECAY": 5e-4,
    "RUN.PROGRESS": "none",
    "RUN.THREADS": 1,
    "LOG.SAVE_CHECKPOINT_FREQ": 0,
}


def cfg_for(tmp_path: Path, **over):
    o = {**SMALL, "LOG.PREFIX": str(tmp_path)}
    o.update({k.replace("__", "."): v for k, v in over.items()})
    return build_config({}, "<test>", o, quiet=True)


@pytest.fixture
def teacher_ckpt(trained_teacher) -> Path:
    """A resnet14 trained alone for a few epochs; its final file is MDistiller format (conftest trains it once)."""
    return trained_teacher


def test_short_synthetic_run_learns_well_above_chance(tmp_path):
    cfg = cfg_for(tmp_path, DISTILLER__TYPE="NONE", DISTILLER__STUDENT="resnet8", SOLVER__EPOCHS=6,
                  SOLVER__LR_DECAY_STAGES=[5], EXPERIMENT__NAME="v")
    result = Trainer.from_config(cfg, log=lambda s: None).fit()
    assert result.status == "finished" and result.epochs_done == 6
    assert result.best_test_acc > 45.0  # chance is 25% with 4 classes
    rows = [json.loads(l) for l in (tmp_path / "v" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 7))
    for key in ("lr", "train_loss", "loss_ce", "train_acc", "test_acc", "test_acc_top5", "epoch_seconds",
                "images_per_second"):
        assert key in rows[-1]
    assert rows[-1]["lr"] == pytest.approx(0.005)  # decayed after epoch 5 (epoch 6 runs at 0.1x)
    assert json.loads((tmp_path / "v" / "status.json").read_text())["status"] == "finished"


def test_vanilla_checkpoint_loads_as_teacher_and_catkd_runs_end_to_end(tmp_path, teacher_ckpt):
    cfg = cfg_for(tmp_path, DISTILLER__TYPE="CAT_KD", DISTILLER__TEACHER="resnet14", DISTILLER__STUDENT="resnet8",
                  DISTILLER__TEACHER_CKPT=str(teacher_ckpt), SOLVER__EPOCHS=2, DATASET__VAL_SIZE=40,
                  CAT_KD__LOSS__CAT_loss_weight=50.0, EXPERIMENT__NAME="c")
    result = Trainer.from_config(cfg, log=lambda s: None).fit()
    assert result.status == "finished"
    last = result.history[-1]
    assert last["loss_cat"] > 0 and last["loss_ce"] > 0 and "val_acc" in last
    assert (tmp_path / "c" / "student_best.pth").is_file()
    # the student's CAM head is bias-free, as CAT-KD builds it
    sd = torch.load(tmp_path / "c" / "checkpoint.pth", weights_only=True)["model"]
    assert "fc.weight" in sd and "fc.bias" not in sd


def test_training_steps_do_not_synchronise_with_the_host(tmp_path, teacher_ckpt, monkeypatch):
    """Host syncs (.item(), bool(), .tolist()) per epoch do not grow with the number of steps: only
    the divergence check every RUN.CHECK_FINITE_EVERY steps and the end-of-epoch totals sync."""
    syncs = []
    for name in ("item", "__bool__", "tolist"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _real=real, **k: (syncs.append(1), _real(self, *a, **k))[1])

    def syncs_in_one_epoch(batch: int, check_every: int) -> tuple[int, int]:
        cfg = cfg_for(tmp_path, DISTILLER__TYPE="CAT_KD", DISTILLER__TEACHER="resnet14", DISTILLER__STUDENT="resnet8",
                      DISTILLER__TEACHER_CKPT=str(teacher_ckpt), SOLVER__BATCH_SIZE=batch,
                      DATASET__SYNTHETIC__TRAIN_PER_CLASS=32,  # 4 and 16 steps: counts, no learning
                      RUN__CHECK_FINITE_EVERY=check_every, EXPERIMENT__NAME=f"s{batch}_{check_every}")
        trainer = Trainer.from_config(cfg, log=lambda s: None)
        steps = len(trainer.data.train)
        syncs.clear()
        trainer.train_epoch(1)
        return steps, len(syncs)

    steps_a, a = syncs_in_one_epoch(32, 1000)
    steps_b, b = syncs_in_one_epoch(8, 1000)
    assert steps_b == 4 * steps_a and a == b
    steps_c, c = syncs_in_one_epoch(8, 5)
    assert c - b == steps_c // 5


def test_partial_binarized_cat_runs_with_any_class_count(tmp_path, teacher_ckpt):
    cfg = cfg_for(tmp_path, DISTILLER__TYPE="CAT_KD", DISTILLER__TEACHER="resnet14", DISTILLER__STUDENT="resnet8",
                  DISTILLER__TEACHER_CKPT=str(teacher_ckpt), SOLVER__EPOCHS=1, CAT_KD__onlyCAT=True,
                  CAT_KD__IF_BINARIZE=True, CAT_KD__IF_OnlyTransferPartialCAMs=True, CAT_KD__CAMs_Nums=3,
                  CAT_KD__Strategy=1, DATASET__REDUCTION=True, DATASET__RESERVED_CLASS_NUM=3, EXPERIMENT__NAME="p")
    result = Trainer.from_config(cfg, log=lambda s: None).fit()
    assert result.status == "finished"
    assert set(k for k in result.history[-1] if k.startswith("loss_")) == {"loss_cat"}
    assert "test_acc_unseen" in result.history[-1]  # class 3 was never seen in training


def test_cam_resolution_larger_than_the_cams_is_rejected_with_the_key(tmp_path, teacher_ckpt):
    from catkd.config import ConfigError

    cfg = cfg_for(tmp_path, DISTILLER__TYPE="CAT_KD", DISTILLER__TEACHER="resnet14", DISTILLER__STUDENT="resnet8",
                  DISTILLER__TEACHER_CKPT=str(teacher_ckpt), CAT_KD__LOSS__CAM_RESOLUTION=16)
    with pytest.raises(ConfigError, match="CAT_KD.LOSS.CAM_RESOLUTION"):
        Trainer.from_config(cfg, log=lambda s: None).fit()


class Interrupt(Exception):
    pass


def test_interrupted_and_resumed_run_ends_with_bitwise_equal_weights(tmp_path, teacher_ckpt):
    common = dict(DISTILLER__TYPE="CAT_KD", DISTILLER__TEACHER="resnet14", DISTILLER__STUDENT="resnet8",
                  DISTILLER__TEACHER_CKPT=str(teacher_ckpt), SOLVER__EPOCHS=3, SOLVER__LR_DECAY_STAGES=[2],
                  CAT_KD__LOSS__CAT_loss_weight=20.0,  # bit for bit needs no learning: 3 batches an epoch
                  DATASET__SYNTHETIC__TRAIN_PER_CLASS=24, DATASET__SYNTHETIC__TEST_PER_CLASS=10)
    Trainer.from_config(cfg_for(tmp_path, EXPERIMENT__NAME="straight", **common), log=lambda s: None).fit()

    def stop_after_2(metrics, out_dir):
        if metrics["epoch"] == 2:
            raise Interrupt  # killed after epoch 2's checkpoint was written

    with pytest.raises(Interrupt):
        Trainer.from_config(cfg_for(tmp_path, EXPERIMENT__NAME="cut", **common), log=lambda s: None).fit(report=stop_after_2)
    cfg = cfg_for(tmp_path, EXPERIMENT__NAME="cut", RUN__RESUME=True, **common)
    result = Trainer.from_config(cfg, log=lambda s: None).fit()
    assert [m["epoch"] for m in result.history] == [1, 2, 3]
    a = torch.load(tmp_path / "straight" / "checkpoint.pth", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pth", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["history"][-1]["test_acc"] == b["history"][-1]["test_acc"]


def test_channels_last_auto_is_on_for_a_cpu_and_off_for_a_gpu_and_an_explicit_setting_wins():
    from catkd.engine.device import channels_last

    cpu, gpu = torch.device("cpu"), torch.device("cuda")  # (a device object needs no GPU)
    assert channels_last("auto", cpu) is True and channels_last("auto", gpu) is False
    assert channels_last(True, gpu) is True and channels_last(False, cpu) is False
    assert cfg_for(Path("."), RUN__CHANNELS_LAST="auto").RUN.CHANNELS_LAST == "auto"  # the default
    assert build_config({}, "<test>", {}, quiet=True).RUN.CHANNELS_LAST == "auto"
    with pytest.raises(Exception, match="CHANNELS_LAST"):
        cfg_for(Path("."), RUN__CHANNELS_LAST="sometimes")


def test_the_memory_format_changes_the_speed_not_the_result(tmp_path, teacher_ckpt):
    """On a CPU a run trains channels-last by default: its convolutions' weights and the images they
    see are channels-last (oneDNN's faster layout). An epoch of CAT-KD gives the losses it gives in
    the default format, up to float rounding: the format is layout, never a different computation."""
    first = {}
    for fmt in ("auto", False):
        cfg = cfg_for(tmp_path, DISTILLER__TYPE="CAT_KD", DISTILLER__TEACHER="resnet14", DISTILLER__STUDENT="resnet8",
                      DISTILLER__TEACHER_CKPT=str(teacher_ckpt), SOLVER__EPOCHS=1, RUN__CHANNELS_LAST=fmt,
                      RUN__THREADS=1, DATASET__SYNTHETIC__TRAIN_PER_CLASS=24, EXPERIMENT__NAME=f"fmt-{fmt}")
        tr = Trainer.from_config(cfg, log=lambda s: None)
        convs = [p for p in tr.distiller.parameters() if p.dim() == 4 and p.shape[-1] > 1]  # 1x1: both layouts
        assert convs and all(p.is_contiguous(memory_format=torch.channels_last) == (fmt == "auto") for p in convs)
        batch = next(iter(tr.data.train.epoch_batches(1, 0)))
        assert tr._images(batch.images).is_contiguous(memory_format=torch.channels_last) == (fmt == "auto")
        first[fmt] = tr.fit().history[0]
    a, b = first["auto"], first[False]
    for k in ("train_loss", "loss_ce", "loss_cat"):
        assert a[k] == pytest.approx(b[k], rel=1e-3), (k, a[k], b[k])


def test_non_finite_loss_stops_the_run_as_diverged(tmp_path):
    cfg = cfg_for(tmp_path, DISTILLER__TYPE="NONE", DISTILLER__STUDENT="resnet8", SOLVER__EPOCHS=3,
                  SOLVER__LR=1e12, RUN__CHECK_FINITE_EVERY=2, EXPERIMENT__NAME="d")
    reports = []
    result = Trainer.from_config(cfg, log=lambda s: None).fit(report=lambda m, d: reports.append(m))
    assert result.status == "diverged"
    assert result.epochs_done == 0 and reports == []
    status = json.loads((tmp_path / "d" / "status.json").read_text())
    assert status["status"] == "diverged" and "non-finite" in status["reason"]


def test_train_cli_runs_a_reference_style_config_on_synthetic_data(tmp_path, capsys):
    rc = train_main(["--cfg", "cifar100/vanilla/resnet8x4", *sum(([k, str(v)] for k, v in SMALL.items()), []),
                     "DISTILLER.STUDENT", "resnet8", "SOLVER.EPOCHS", "1", "LOG.PREFIX", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "finished after 1 epochs" in out
    assert (tmp_path / "vanilla,resnet8x4" / "ckpt_epoch_1.pth").is_file()
