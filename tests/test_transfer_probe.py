"""The linear probe (DISTILLER.TYPE TRANSFER): a trained student's backbone, frozen, under a new head.

Specification: only the new head trains; with FREEZE_BN (ours) the backbone's weights *and* its
BatchNorm running statistics come out of training bit for bit as they went in; with FREEZE_BN False
(the reference) the running statistics move and the weights still do not. Any zoo model's head is
left out by module (a CAT student's bias-free CAM head, vgg's `classifier`), the new head has a bias
and the target's class count, and a missing or unfitting source is a ConfigError naming TRANSFER.SOURCE.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from catkd.config import ConfigError
from catkd.engine import Trainer
from catkd.engine.validate import build_run_config
from catkd.models import build_model

SMALL = {
    "DISTILLER.TYPE": "TRANSFER",
    "DATASET.TYPE": "synthetic",
    "DATASET.SYNTHETIC.NUM_CLASSES": 6,  # the source has 10 classes: a new head of another size
    "DATASET.SYNTHETIC.TRAIN_PER_CLASS": 16,  # what is checked (which tensors move) needs no learning
    "DATASET.SYNTHETIC.TEST_PER_CLASS": 8,
    "SOLVER.BATCH_SIZE": 32,
    "SOLVER.EPOCHS": 2,
    "RUN.PROGRESS": "none",
    "RUN.THREADS": 1,
    "LOG.SAVE_CHECKPOINT_FREQ": 0,
}


def _source(tmp_path: Path, arch: str, head_bias: bool) -> tuple[Path, dict[str, torch.Tensor]]:
    """A 'trained' student file in the trainer's export format, its BN statistics made non-trivial."""
    torch.manual_seed(1)
    m = build_model(arch, num_classes=10, head_bias=head_bias)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f"{arch}-{head_bias}.pth"
    torch.save({"model": m.state_dict(), "epoch": 240, "acc": 70.0}, path)
    return path, {k: v.clone() for k, v in m.state_dict().items()}


def _cfg(tmp_path: Path, source: Path, **over):
    return build_run_config({}, "<test>", {**SMALL, "LOG.PREFIX": str(tmp_path), "DISTILLER.STUDENT": "resnet8",
                                           "TRANSFER.SOURCE": str(source), **over}, quiet=True)


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_only_the_new_head_trains_and_frozen_bn_keeps_the_source_statistics(tmp_path, freeze_bn):
    src, before = _source(tmp_path, "resnet8", head_bias=False)  # a CAT student: bias-free CAM head
    trainer = Trainer.from_config(_cfg(tmp_path, src, **{"TRANSFER.FREEZE_BN": freeze_bn}), out_dir=tmp_path / "run")
    student = trainer.distiller.student
    head = student.head_name
    assert student.head.weight.shape == (6, before[f"{head}.weight"].shape[1]) and student.head.bias is not None
    assert [n for n, p in student.named_parameters() if p.requires_grad] == [f"{head}.weight", f"{head}.bias"]
    new_head = student.head.weight.detach().clone()
    result = trainer.fit()
    assert result.status == "finished"
    after = student.state_dict()
    moved = [k for k, v in before.items() if not k.startswith(f"{head}.") and not torch.equal(v, after[k])]
    if freeze_bn:
        assert moved == []  # weights, running means and variances, batch counters: all the source's
    else:  # the reference: BN re-estimates its statistics on the target data; no weight moves
        assert moved and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in moved)
    assert not torch.equal(new_head, student.head.weight)  # the head learnt


def test_heads_are_found_by_module_for_every_family(tmp_path):
    for arch in ("vgg8", "MobileNetV2", "ShuffleV1", "wrn_16_2"):
        src, before = _source(tmp_path, arch, head_bias=False)
        student = build_model(arch, num_classes=6, head_bias=True)
        from catkd.distillers import build_distiller

        d = build_distiller(_cfg(tmp_path, src, **{"DISTILLER.STUDENT": arch}), student, None, 6)
        sd = d.student.state_dict()
        body = [k for k in before if not k.startswith(f"{student.head_name}.")]
        assert body and all(torch.equal(before[k], sd[k]) for k in body), arch


def test_a_missing_or_unfitting_source_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="TRANSFER.SOURCE: the trained student"):
        Trainer.from_config(_cfg(tmp_path, src := tmp_path / "x", **{"TRANSFER.SOURCE": None}))
    with pytest.raises(ConfigError, match=r"TRANSFER.SOURCE: student checkpoint not found: .*nowhere\.pth"):
        Trainer.from_config(_cfg(tmp_path, tmp_path / "nowhere.pth"))
    src, _ = _source(tmp_path, "resnet14", head_bias=True)
    with pytest.raises(ConfigError, match="does not fit .*head left out.*unexpected keys"):
        Trainer.from_config(_cfg(tmp_path, src))
    assert not src.with_name("x").exists()


def test_a_relative_source_is_read_under_source_root(tmp_path):
    src, before = _source(tmp_path, "resnet8", head_bias=True)
    trainer = Trainer.from_config(_cfg(tmp_path, Path(src.name), **{"TRANSFER.SOURCE_ROOT": str(tmp_path)}),
                                  optimizer=False)
    assert torch.equal(trainer.distiller.student.state_dict()["conv1.weight"], before["conv1.weight"])


def test_the_dry_run_times_a_probe_before_its_student_exists(tmp_path):
    from catkd.study.estimate import measure

    cfg = _cfg(tmp_path, tmp_path / "made-later.pth")  # --smoke makes its students after the plan
    speed = measure(cfg, threads=1, steps=1)
    assert speed["train_live"] > 0 and speed["eval"] > 0 and not (tmp_path / "made-later.pth").exists()
