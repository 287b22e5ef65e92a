"""MDistiller's eleven feature distillers through the trainer: each method trains from its preset on the
synthetic data with a finite, decreasing distillation term; extra modules train with the student, are
checkpointed and resumed bit for bit, and never leave in the exported student; MDistiller's own
configs/cifar100/<method>.yaml files load and train unchanged; every preset validates."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from catkd.engine import Trainer
from catkd.engine.validate import config_from_dict, load_run_config
from catkd.models import build_model
from catkd.train import main as train_main

METHODS = ["FITNET", "AT", "NST", "PKT", "KDSVD", "OFD", "RKD", "VID", "SP", "CRD", "REVIEWKD"]
WITH_EXTRA_STATE = ["FITNET", "OFD", "VID", "CRD", "REVIEWKD"]
REF = Path(__file__).parent / "data" / "reference_configs" / "mdistiller" / "configs" / "cifar100"
PRESETS = Path(__file__).parents[1] / "catkd" / "configs" / "cifar100"

SMALL = {
    "DATASET.TYPE": "synthetic",
    "DATASET.SYNTHETIC.NUM_CLASSES": 4,
    "DATASET.SYNTHETIC.TRAIN_PER_CLASS": 48,
    "DATASET.SYNTHETIC.TEST_PER_CLASS": 20,
    "SOLVER.BATCH_SIZE": 32,
    "SOLVER.LR": 0.05,
    "SOLVER.LR_DECAY_STAGES": [100],
    "RUN.PROGRESS": "none",
    "RUN.THREADS": 1,
    "RUN.TEACHER_CACHE": "off",
    "LOG.SAVE_CHECKPOINT_FREQ": 0,
}
# per method, for 4 classes and a few epochs: CRD's K below the negatives' pool (144 images of other
# classes), ReviewKD's warm-up over one epoch (its weighted term would otherwise grow by design)
METHOD_SETTINGS = {"CRD": {"CRD.NCE.K": 64}, "REVIEWKD": {"REVIEWKD.WARMUP_EPOCHS": 1}}
# epochs for a clearly decreasing term: after 4 every term is at most 0.9 of where it started (CRD 0.88),
# except VID's, whose variance term falls slowly (0.99 after 4, 0.96 after 6)
EPOCHS = {"VID": 6}


@pytest.fixture
def teacher(trained_teacher) -> Path:
    """A resnet14 trained alone for a few epochs (MDistiller-format file; conftest trains it once)."""
    return trained_teacher


def _cfg(tmp_path, method, teacher, name, **over):
    return load_run_config(f"cifar100/{method}/res56_res20", {
        **SMALL, **METHOD_SETTINGS.get(method, {}), "LOG.PREFIX": str(tmp_path), "EXPERIMENT.NAME": name,
        "DISTILLER.TEACHER": "resnet14", "DISTILLER.STUDENT": "resnet8", "DISTILLER.TEACHER_CKPT": str(teacher),
        **over}, quiet=True)


def _fit(cfg, **kw):
    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = Trainer.from_config(cfg, log=lines.append).fit(**kw)
    return result, lines


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_from_its_preset_with_a_finite_decreasing_distillation_term(tmp_path, teacher, method):
    epochs = EPOCHS.get(method, 4)
    result, lines = _fit(_cfg(tmp_path, method, teacher, "run", **{"SOLVER.EPOCHS": epochs}))
    assert result.status == "finished"
    kd = [m["loss_kd"] for m in result.history]
    # CRD's first epoch scores against a memory of random vectors; from the second on the memory holds
    # the embeddings of the previous epoch, and its term falls from there
    first = 1 if method == "CRD" else 0
    assert all(torch.isfinite(torch.tensor(kd))) and kd[-1] < kd[first], kd
    assert result.history[-1]["train_acc"] > 25.0  # 4 classes: the student learns
    # the student alone leaves: its exported files hold the student's keys and load into a bare model
    out = tmp_path / "run"
    for f in ("student_best.pth", f"ckpt_epoch_{epochs}.pth"):
        state = torch.load(out / f, weights_only=True)["model"]
        build_model("resnet8", num_classes=4).load_state_dict(state)  # strict: nothing more, nothing less
    full = torch.load(out / "checkpoint.pth", weights_only=True)
    has_extra = method in WITH_EXTRA_STATE
    assert bool(full["extra"]) == has_extra
    if has_extra:
        assert any(line.startswith(f"extra parameters of {method}: ") for line in lines), lines


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("method", WITH_EXTRA_STATE)
def test_extra_modules_are_resumed_bit_for_bit(tmp_path, teacher, method):
    # bit-for-bit needs no learning: a third of the images (CRD's K below the 48 of other classes)
    over = {"SOLVER.EPOCHS": 3, "DATASET.SYNTHETIC.TRAIN_PER_CLASS": 16, "DATASET.SYNTHETIC.TEST_PER_CLASS": 8,
            **({"CRD.NCE.K": 24} if method == "CRD" else {})}
    straight, _ = _fit(_cfg(tmp_path, method, teacher, "straight", **over))

    def stop_after_2(metrics, out_dir):
        if metrics["epoch"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        _fit(_cfg(tmp_path, method, teacher, "cut", **over), report=stop_after_2)
    resumed, _ = _fit(_cfg(tmp_path, method, teacher, "cut", **over, **{"RUN.RESUME": True}))
    assert [m["epoch"] for m in resumed.history] == [1, 2, 3]
    a = torch.load(tmp_path / "straight" / "checkpoint.pth", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pth", weights_only=True)
    for part in ("model", "extra"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    assert straight.history[-1]["test_acc"] == resumed.history[-1]["test_acc"]


def test_extra_modules_are_in_the_optimiser_and_the_teacher_is_not(teacher, tmp_path):
    cfg = _cfg(tmp_path, "REVIEWKD", teacher, "opt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = Trainer.from_config(cfg, log=lambda s: None)
    in_opt = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    d = tr.distiller
    assert all(id(p) in in_opt for n, p in d.named_parameters() if not n.startswith("teacher."))
    assert not any(id(p) in in_opt for p in d.teacher.parameters())
    assert {g["weight_decay"] for g in tr.optimizer.param_groups} == {cfg.SOLVER.WEIGHT_DECAY}


@pytest.mark.parametrize("path", sorted(REF.glob("*.yaml")), ids=lambda p: p.stem)
def test_mdistiller_file_loads_unchanged_and_trains(tmp_path, path):
    """`python -m catkd.train --cfg <MDistiller's file>`, pointed at the synthetic data and a teacher file."""
    cfg = load_run_config(str(path), quiet=True)
    assert (cfg.DISTILLER.TEACHER, cfg.DISTILLER.STUDENT) == ("resnet32x4", "resnet8x4")
    ckpt = tmp_path / "resnet32x4.pth"
    torch.manual_seed(0)
    torch.save({"model": build_model("resnet32x4", num_classes=4).state_dict()}, ckpt)
    rc = train_main(["--cfg", str(path), "DATASET.TYPE", "synthetic", "DATASET.SYNTHETIC.NUM_CLASSES", "4",
                     "DATASET.SYNTHETIC.TRAIN_PER_CLASS", "4", "DATASET.SYNTHETIC.TEST_PER_CLASS", "2",
                     "SOLVER.EPOCHS", "1", "SOLVER.BATCH_SIZE", "32", "RUN.PROGRESS", "none", "RUN.THREADS", "1",
                     "RUN.TEACHER_CACHE", "off",
                     "DISTILLER.TEACHER_CKPT", str(ckpt), "LOG.PREFIX", str(tmp_path), "LOG.SAVE_CHECKPOINT_FREQ", "0",
                     *(["CRD.NCE.K", "32"] if path.stem == "crd" else [])])
    assert rc == 0
    assert next(tmp_path.rglob("student_best.pth")).is_file()


def test_every_preset_validates_and_is_what_the_generator_writes(capsys):
    from _helpers import script

    # the generator builds every distiller it writes
    assert script("make_baseline_presets").main(["--check"]) == 0, capsys.readouterr().out
    files = [p for m in METHODS for p in (PRESETS / m).glob("*.yaml")]
    assert len(files) == 11 * 11 - 5  # KDSVD has no preset for the five pairs of unequal widths
    for p in files:
        cfg = load_run_config(str(p), quiet=True)
        student = cfg.DISTILLER.STUDENT
        assert cfg.SOLVER.LR == (0.01 if student.startswith(("Shuffle", "MobileNet")) else 0.05), p
        assert (cfg.SOLVER.BATCH_SIZE, cfg.SOLVER.EPOCHS, cfg.SOLVER.WEIGHT_DECAY) == (64, 240, 5e-4), p
    rk = load_run_config("cifar100/REVIEWKD/res32x4_shuv2", quiet=True).REVIEWKD
    assert (rk.IN_CHANNELS, rk.OUT_CHANNELS, rk.SHAPES, rk.OUT_SHAPES, rk.REVIEWKD_WEIGHT) == (
        [116, 232, 464, 1024], [64, 128, 256, 256], [1, 4, 8, 16], [1, 8, 16, 32], 8.0)
    assert config_from_dict(load_run_config("cifar100/CRD/wrn_40_2_wrn_16_2", quiet=True).to_dict()).CRD.MODE == "exact"


def test_a_pair_the_method_cannot_run_is_exit_2_naming_method_and_models(tmp_path, capsys):
    ckpt = tmp_path / "sv2.pth"
    torch.save({"model": build_model("ShuffleV2", num_classes=4).state_dict()}, ckpt)
    rc = train_main(["--cfg", str(REF / "ofd.yaml"), "DISTILLER.TEACHER", "ShuffleV2", "DISTILLER.STUDENT", "resnet8",
                     "DISTILLER.TEACHER_CKPT", str(ckpt), "DATASET.TYPE", "synthetic",
                     "DATASET.SYNTHETIC.NUM_CLASSES", "4", "LOG.PREFIX", str(tmp_path)])
    assert rc == 2
    assert "OFD cannot distil ShuffleV2 -> resnet8" in capsys.readouterr().err
