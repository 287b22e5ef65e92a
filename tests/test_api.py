"""The Python API a notebook uses (catkd.train.run, catkd.study.run, analysis.load, analysis.report),
and bad input reported all at once: the same paths the command lines wrap."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

import analysis
import catkd.study
import catkd.train
from catkd.config import ConfigError
from catkd.study.spec import StudyError

from _helpers import TINY

REPO = Path(__file__).resolve().parents[1]
SMALL = {"DATASET.TYPE": "synthetic", "DATASET.SYNTHETIC.NUM_CLASSES": 4, "DATASET.SYNTHETIC.TRAIN_PER_CLASS": 32,
         "DATASET.SYNTHETIC.TEST_PER_CLASS": 8, "DISTILLER.STUDENT": "resnet8", "SOLVER.EPOCHS": 2,
         "SOLVER.BATCH_SIZE": 32, "RUN.PROGRESS": "none", "RUN.DEVICE": "cpu"}


def test_train_run_trains_a_loaded_config_and_returns_its_result(tmp_path):
    cfg = catkd.train.load_config("cifar100/vanilla/resnet20", {**SMALL, "LOG.PREFIX": str(tmp_path)}, quiet=True)
    result = catkd.train.run(cfg, log=lambda m: None)
    assert result.status == "finished" and result.epochs_done == 2
    assert (Path(result.out_dir) / "metrics.jsonl").read_text().count("\n") == 2


def test_load_config_names_every_wrong_key_at_once():
    with pytest.raises(ConfigError) as e:
        catkd.train.load_config("cifar100/CAT_KD/res56_res20", {
            "SOLVER.EPOCHS": 0, "CAT_KD.LOSS.CAT_loss_weight": -1, "DATASET.NO_SUCH": 1,
            "SOLVER.LR_DECAY_STAGES": [3, 2]}, quiet=True)
    msg = str(e.value)
    for key in ("SOLVER.EPOCHS", "CAT_KD.LOSS.CAT_loss_weight", "DATASET.NO_SUCH", "SOLVER.LR_DECAY_STAGES"):
        assert key in msg, msg
    assert len(msg.splitlines()) == 4


def test_unknown_models_and_distiller_are_named_together():
    with pytest.raises(ConfigError) as e:
        catkd.train.load_config("cifar100/CAT_KD/res56_res20", {
            "DISTILLER.TYPE": "NOPE", "DISTILLER.STUDENT": "resnet9", "DISTILLER.TEACHER": "resnet57"}, quiet=True)
    msg = str(e.value)
    assert "DISTILLER.TYPE" in msg and "DISTILLER.STUDENT" in msg and "DISTILLER.TEACHER" in msg, msg


def _study(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load(TINY)
    data.update(changes)
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def test_study_run_names_every_problem_at_once_and_writes_nothing(tmp_path, s3):
    # three mistakes of three kinds: a misspelt dimension, a negative β, a storage bucket that does not exist
    study = _study(tmp_path, space={"betta": {"loguniform": [1, 100]}, "cam_resolution": {"choice": [2]}},
                   fixed={"beta": -1.0, "DATASET.VAL_SIZE": 5000})
    with pytest.raises(StudyError) as e:
        catkd.study.run(study, smoke=True, storage="s3://no-such-bucket/results")
    msg = str(e.value)
    assert "space.betta: unknown setting" in msg, msg
    assert "CAT_KD.LOSS.CAT_loss_weight" in msg and "greater than or equal to 0" in msg, msg
    assert "--storage s3://no-such-bucket/results: the bucket 'no-such-bucket' does not exist" in msg, msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


def test_study_schema_errors_are_all_named_in_the_files_words(tmp_path):
    study = _study(tmp_path, search={"algorithm": "optuna", "num_samples": 0},
                   space={"beta": {"loguniform": [100, 1]}, "partial_cams": {"choice": []}})
    with pytest.raises(StudyError) as e:
        catkd.study.run(study)
    msg = str(e.value)
    for key in ("search.num_samples", "space.beta", "space.partial_cams"):
        assert key in msg, msg


def test_an_alias_and_its_key_given_together_is_an_error(tmp_path):
    study = _study(tmp_path, fixed={"beta": 2.0, "CAT_KD.LOSS.CAT_loss_weight": 3.0, "DATASET.VAL_SIZE": 5000})
    with pytest.raises(StudyError, match="given twice"):
        catkd.study.run(study)


@pytest.mark.parametrize("case", ["no bucket", "no answer", "bad scheme"])
def test_study_command_refuses_a_storage_uri_it_cannot_use_with_exit_2_and_writes_nothing(
        tmp_path, monkeypatch, capsys, s3, case):
    from _s3 import free_port
    from catkd.study.__main__ import main

    monkeypatch.chdir(tmp_path)
    uri, said = {"no bucket": ("s3://no-such-bucket/studies", "the bucket 'no-such-bucket' does not exist"),
                 "no answer": (f"{s3.uri}/studies", "no answer in 2 s"),
                 "bad scheme": ("nosuch://b/studies", "not a storage URI pyarrow can open")}[case]
    if case == "no answer":
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
        monkeypatch.setenv("CATKD_STORAGE_TIMEOUT", "2")
    rc = main([str(_study(tmp_path)), "--smoke", "--storage", uri])
    err = capsys.readouterr().err
    assert rc == 2 and f"--storage {uri}: {said}" in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]  # no folder called "s3:"
    assert s3.objects() == {}


def test_settings_are_dotted_keys_once_the_study_is_loaded(tmp_path):
    from catkd.study.load import load_study

    spec = load_study(REPO / "studies" / "beta_sweep.yaml")
    names = spec.dimension_names + list(spec.fixed)
    assert "CAT_KD.LOSS.CAT_loss_weight" in names and "beta" not in names
    assert all("." in n or n == "preset" for n in names), names
    saved = yaml.safe_load(__import__("catkd.study.spec", fromlist=["dump_study"]).dump_study(spec))
    assert "CAT_KD.LOSS.CAT_loss_weight" in saved["space"]


def test_load_and_report_of_a_finished_study(tiny_study, tmp_path):
    study = analysis.load(tiny_study)
    assert len(study.trials) > 0 and len(study.results) >= len(study.trials)
    assert "CAT_KD.LOSS.CAT_loss_weight" in study.trials.columns and "beta" not in study.trials.columns
    assert set(study.results["trial_id"]) == set(study.trials["trial_id"])
    path = analysis.report(tiny_study, out=tmp_path / "rep")
    assert path == tmp_path / "rep" / "report.md"
    text = path.read_text()
    assert "tiny" in text and (tmp_path / "rep" / "learning_curves.png").is_file()


def test_schema_errors_do_not_hide_the_checks_of_the_well_formed_settings(tmp_path):
    # a schema error (num_samples 0), an unknown name, a fixed setting the dataset cannot serve and an
    # impossible CAM resolution: one message names all four, and the fixed one is not repeated per dimension
    study = _study(tmp_path, search={"algorithm": "optuna", "num_samples": 0},
                   fixed={"DATASET.VAL_SIZE": 5000, "partial_cams": True, "cam_count": 300},
                   space={"betta": {"loguniform": [10, 3000]}, "cam_resolution": {"choice": [2, 0]}})
    with pytest.raises(StudyError) as e:
        catkd.study.run(study, smoke=True)
    lines = str(e.value).splitlines()
    assert any("search.num_samples" in x for x in lines), lines
    assert any("space.betta: unknown setting" in x for x in lines), lines
    assert sum("300 is more than the 100 classes" in x for x in lines) == 1, lines
    assert any("space.cam_resolution.choice: CAT_KD.LOSS.CAM_RESOLUTION" in x and "(got 0)" in x for x in lines), lines


@pytest.mark.parametrize("dry_run", [False, True])
def test_an_address_where_no_ray_cluster_answers_is_exit_2_in_seconds_and_writes_nothing(
        tmp_path, monkeypatch, capsys, dry_run):
    from _s3 import free_port
    from catkd.study.__main__ import main

    monkeypatch.chdir(tmp_path)
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    rc = main([str(_study(tmp_path)), "--smoke", "--address", address, *(["--dry-run"] if dry_run else [])])
    err = capsys.readouterr().err
    assert rc == 2 and f"--address {address}: no Ray cluster answers there" in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]
