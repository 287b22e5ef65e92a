"""CAT without labels (CAT_KD.onlyCAT): the student learns from the teacher's CAMs alone.

Specification: its training never reads a label. Training labels replaced by noise give the same
student, bit for bit; the same swap changes a CAT-KD student (cross-entropy reads them), so the check
can fail. The shipped study (studies/cat_without_labels.yaml) runs the reference's CAT preset beside
the student trained alone with labels.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from catkd.data.common import TrainBatch
from catkd.engine import Trainer
from catkd.engine.validate import build_run_config
from catkd.models import build_model

SMALL = {
    "DISTILLER.TYPE": "CAT_KD", "DISTILLER.TEACHER": "resnet8", "DISTILLER.STUDENT": "resnet8",
    "DATASET.TYPE": "synthetic", "DATASET.SYNTHETIC.NUM_CLASSES": 5, "DATASET.SYNTHETIC.TRAIN_PER_CLASS": 15,
    "DATASET.SYNTHETIC.TEST_PER_CLASS": 5, "SOLVER.BATCH_SIZE": 25, "SOLVER.EPOCHS": 2,
    "CAT_KD.LOSS.CAT_loss_weight": 50.0, "CAT_KD.LOSS.CAM_RESOLUTION": 2, "CAT_KD.LOSS.CE_WEIGHT": 1.0,
    "RUN.PROGRESS": "none", "RUN.THREADS": 1, "RUN.TEACHER_CACHE": "off", "LOG.SAVE_CHECKPOINT_FREQ": 0,
}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("teacher") / "resnet8.pth"
    torch.save({"model": build_model("resnet8", num_classes=5).state_dict()}, path)
    return path


def _train(tmp: Path, teacher: Path, only_cat: bool, noisy_labels: bool) -> dict[str, torch.Tensor]:
    cfg = build_run_config({}, "<test>", {**SMALL, "CAT_KD.onlyCAT": only_cat, "DISTILLER.TEACHER_CKPT": str(teacher),
                                          "LOG.PREFIX": str(tmp)}, quiet=True)
    trainer = Trainer.from_config(cfg, out_dir=tmp / f"{only_cat}-{noisy_labels}")
    if noisy_labels:
        loader, batches = trainer.data.train, trainer.data.train.epoch_batches
        noise = torch.Generator().manual_seed(123)

        def noisy(epoch, seed):
            for b in batches(epoch, seed):
                yield TrainBatch(b.images, torch.randint(0, 5, b.labels.shape, generator=noise), b.index, b.view)

        loader.epoch_batches = noisy
    assert trainer.fit().status == "finished"
    return {k: v.clone() for k, v in trainer.distiller.student.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cat_alone_never_reads_a_label_while_cat_kd_does(tmp_path, teacher):
    assert _same(_train(tmp_path, teacher, True, False), _train(tmp_path, teacher, True, True))
    assert not _same(_train(tmp_path, teacher, False, False), _train(tmp_path, teacher, False, True))


def test_the_study_runs_the_reference_cat_preset_beside_the_student_alone():
    from catkd.study.load import load_study
    from catkd.study.checks import run_config
    from catkd.study.spec import expand_grid

    spec = load_study("studies/cat_without_labels.yaml")
    cfgs = [run_config(spec, p) for p in expand_grid(spec)]
    cat = [c for c in cfgs if c.DISTILLER.TYPE == "CAT_KD"]
    alone = [c for c in cfgs if c.DISTILLER.TYPE == "NONE"]
    assert cat and all(c.CAT_KD.onlyCAT and c.CAT_KD.LOSS.CAT_loss_weight == 50 for c in cat)
    assert alone and {c.DISTILLER.STUDENT for c in alone} == {c.DISTILLER.STUDENT for c in cat} == {"resnet32x4"}
    assert sorted(c.EXPERIMENT.SEED for c in cat) == sorted(c.EXPERIMENT.SEED for c in alone) == [0, 1, 2]


def test_the_report_puts_cat_beside_the_student_alone_with_their_difference(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from analysis.layouts.cat_without_labels import cat_without_labels
    from analysis.load import load

    rows = []
    for typ, only_cat, values in (("CAT_KD", True, [74.0, 75.0, 76.0]), ("NONE", False, [78.0, 79.0, 80.0])):
        for seed, v in enumerate(values):
            rows.append({"trial_id": f"{typ}{seed}", "study": "cat_without_labels", "stage": "search", "seed": seed,
                         "DISTILLER.TYPE": typ, "DISTILLER.TEACHER": "resnet32x4", "DISTILLER.STUDENT": "resnet32x4",
                         "CAT_KD.onlyCAT": only_cat, "DATASET.TYPE": "cifar100", "EXPERIMENT.SEED": seed,
                         "status": "finished", "epochs_done": 2, "epochs_budget": 2, "best_test_acc": v + 1,
                         "last_test_acc": v, "trial_dir": f"/nowhere/{typ}{seed}"})
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "study.yaml").write_text(yaml.safe_dump({"name": "cat_without_labels", "base": "x", "metric": "test_acc",
                                                    "search": {"algorithm": "grid"}, "seeds": [0, 1, 2]}))
    pq.write_table(pa.Table.from_pylist(rows), exp / "trials.parquet")
    paper = {"vanilla": {"resnet32x4": {"top1": 79.42, "source": "RepDistiller / MDistiller READMEs"}}}
    table, diff = cat_without_labels(load(exp), "last", paper)
    assert table.rows == [
        ["CAT: teacher's CAMs only, no label read", "resnet32x4->resnet32x4", "75.00 ± 1.00 (3)", "-", "-"],
        ["student alone (with labels)", "resnet32x4", "79.00 ± 1.00 (3)", "79.42", "RepDistiller / MDistiller READMEs"]]
    assert diff.rows[0][:4] == ["CAT - student alone", "-4.00", diff.rows[0][2], "3 vs 3"]
    assert diff.rows[0][2].startswith("[-6.") and diff.rows[0][2].endswith("-1.73]")  # Welch, df = 4
