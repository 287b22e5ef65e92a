"""Configs (docs/contracts.md, C4): reference-format files load unchanged; bad files fail with the key named."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from catkd.config import PRESET_DIR, ConfigError
from catkd.engine.validate import load_run_config as load_config
from catkd.train import main as train_main

# configs/cifar100/CAT_KD/res32x4_shuv1.yaml as the reference repository writes it (yacs style),
# with the keys we accept but do not use.
REFERENCE_YAML = """\
EXPERIMENT:
  NAME: ""
  TAG: "CAT_KD,res32x4,shuv1"
  PROJECT: "cifar100_baselines"
DISTILLER:
  TYPE: "CAT_KD"
  TEACHER: "resnet32x4"
  STUDENT: "ShuffleV1"
SOLVER:
  BATCH_SIZE: 64
  EPOCHS: 240
  LR: 0.01
  LR_DECAY_STAGES: [150, 180, 210]
  LR_DECAY_RATE: 0.1
  WEIGHT_DECAY: 0.0005
  MOMENTUM: 0.9
  TYPE: "SGD"
  TRAINER: "base"
CAT_KD:
  LOSS:
    CE_WEIGHT: 1.
    CAT_loss_weight: 600.
    CAM_RESOLUTION: 4
  IF_NORMALIZE: True
  onlyCAT: False
  IF_BINARIZE: False
  IF_OnlyTransferPartialCAMs: False
  CAMs_Nums: 100
  Strategy: 0
DATASET:
  TYPE: "cifar100"
  NUM_WORKERS: 2
  REDUCTION: False
  RESERVED_CLASS_NUM: 100
  RESERVED_RATE: 1.0
  TEST:
    BATCH_SIZE: 64
LOG:
  TENSORBOARD_FREQ: 500
  SAVE_CHECKPOINT_FREQ: 40
  PREFIX: "./output"
  WANDB: True
if_test: False
device: "cuda:0"
"""


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_reference_format_file_loads_unchanged_with_notices_for_unused_keys(tmp_path, capsys):
    cfg = load_config(write(tmp_path, REFERENCE_YAML))
    assert cfg.DISTILLER.TYPE == "CAT_KD" and cfg.DISTILLER.STUDENT == "ShuffleV1"
    assert cfg.CAT_KD.LOSS.CAT_loss_weight == 600.0 and cfg.CAT_KD.LOSS.CAM_RESOLUTION == 4
    assert cfg.SOLVER.LR == 0.01 and cfg.SOLVER.LR_DECAY_STAGES == [150, 180, 210]
    err = capsys.readouterr().err
    for key in ("if_test", "device"):
        assert key in err
    assert "LOG.WANDB" not in err and cfg.LOG.WANDB is True  # honoured by catkd.train (W&B)
    assert err.count("\n") <= 6  # one line per notice


def test_output_directory_is_prefix_plus_name_or_tag(tmp_path):
    cfg = load_config(write(tmp_path, REFERENCE_YAML), {"LOG.PREFIX": str(tmp_path / "out")})
    assert cfg.output_dir == tmp_path / "out" / "CAT_KD,res32x4,shuv1"
    cfg = load_config(write(tmp_path, REFERENCE_YAML), {"EXPERIMENT.NAME": "mine"})
    assert cfg.output_dir.name == "mine"


@pytest.mark.parametrize(
    "patch, key",
    [
        ({"SOLVER": {"EPOHCS": 3}}, "SOLVER.EPOHCS"),
        ({"CAT_KD": {"LOSS": {"CAT_loss_weight": "lots"}}}, "CAT_KD.LOSS.CAT_loss_weight"),
        ({"CAT_KD": {"LOSS": {"CAT_loss_weight": -1.0}}}, "CAT_KD.LOSS.CAT_loss_weight"),
        ({"CAT_KD": {"LOSS": {"CAM_RESOLUTION": 0}}}, "CAT_KD.LOSS.CAM_RESOLUTION"),
        ({"CAT_KD": {"Strategy": 3}}, "CAT_KD.Strategy"),
        ({"DATASET": {"RESERVED_RATE": 1.5}}, "DATASET.RESERVED_RATE"),
        ({"DATASET": {"RESERVED_RATE": 0}}, "DATASET.RESERVED_RATE"),
        ({"DATASET": {"TYPE": "mnist"}}, "DATASET.TYPE"),
        ({"DISTILLER": {"TYPE": "DKDX"}}, "DISTILLER.TYPE"),
        ({"DISTILLER": {"STUDENT": "resnet9000"}}, "DISTILLER.STUDENT"),
        ({"DISTILLER": {"TEACHER": "nope"}}, "DISTILLER.TEACHER"),
        ({"BOGUS": {"X": 1}}, "BOGUS"),
        ({"SOLVER": {"LR_DECAY_STAGES": [180, 150]}}, "SOLVER.LR_DECAY_STAGES"),
    ],
)
def test_broken_config_fails_naming_file_and_dotted_key(tmp_path, patch, key):
    import yaml

    data = yaml.safe_load(REFERENCE_YAML)

    def merge(d, p):
        for k, v in p.items():
            if isinstance(v, dict) and isinstance(d.get(k), dict):
                merge(d[k], v)
            else:
                d[k] = v

    merge(data, patch)
    p = write(tmp_path, yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_config(p, quiet=True)
    assert str(p) in str(e.value) and key in str(e.value)


def test_overrides_are_dotted_keys_parsed_like_yaml(tmp_path):
    cfg = load_config(write(tmp_path, REFERENCE_YAML), {"SOLVER.EPOCHS": 3, "CAT_KD.Strategy": "lowest"}, quiet=True)
    assert cfg.SOLVER.EPOCHS == 3 and cfg.CAT_KD.Strategy == 1
    with pytest.raises(ConfigError, match="SOLVER.EPOCHS"):
        load_config(write(tmp_path, REFERENCE_YAML), {"SOLVER.EPOCHS": "many"}, quiet=True)


def test_unsafe_yaml_tags_are_refused(tmp_path):
    p = write(tmp_path, "SOLVER: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError, match="yaml"):
        load_config(p)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("preset", sorted(str(p.relative_to(PRESET_DIR)) for p in PRESET_DIR.rglob("*.yaml")))
def test_every_packaged_preset_validates(preset):
    cfg = load_config(preset, quiet=True)
    assert cfg.SOLVER.EPOCHS >= 1


def test_presets_mirror_the_reference_table():
    c = load_config("cifar100/CAT_KD/res32x4_shuv1", quiet=True)
    assert (c.SOLVER.LR, c.CAT_KD.LOSS.CAT_loss_weight, c.CAT_KD.LOSS.CAM_RESOLUTION, c.CAT_KD.IF_NORMALIZE) == (
        0.01, 600.0, 4, True)
    c = load_config("cifar100/CAT_KD/res56_res20", quiet=True)
    assert (c.SOLVER.LR, c.CAT_KD.LOSS.CAT_loss_weight, c.CAT_KD.IF_NORMALIZE, c.SOLVER.WEIGHT_DECAY) == (
        0.05, 0.7, False, 5e-4)
    c = load_config("cifar100/CAT/CAT_Only_Transfer_Certain_Classes/res32x4_res8x4", quiet=True)
    assert c.CAT_KD.onlyCAT and c.CAT_KD.CAMs_Nums == 75 and c.CAT_KD.Strategy == 1
    c = load_config("imagenet/CAT-KD/r34_r18", quiet=True)  # reference bugs fixed: batch 2, TYPE "CAT-KD"
    assert c.SOLVER.BATCH_SIZE == 512 and c.DISTILLER.TYPE == "CAT_KD" and c.SOLVER.EPOCHS == 100


def test_train_cli_exits_2_naming_the_key_and_writes_nothing(tmp_path, capsys):
    p = write(tmp_path, REFERENCE_YAML.replace("EPOCHS: 240", "EPOCHS: -4"))
    rc = train_main(["--cfg", str(p), "LOG.PREFIX", str(tmp_path / "out")])
    assert rc == 2
    assert "SOLVER.EPOCHS" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_train_cli_missing_teacher_exits_2_saying_where_it_looked(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CATKD_TEACHERS", str(tmp_path / "teachers"))
    rc = train_main(["--cfg", "cifar100/CAT_KD/res56_res20", "DATASET.TYPE", "synthetic",
                     "LOG.PREFIX", str(tmp_path / "out"), "RUN.PROGRESS", "none"])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "teachers" / "resnet56_vanilla" / "ckpt_epoch_240.pth") in err


# ---- every config file of the reference loads unchanged ------------------------------------------
REF_DIR = Path(__file__).parent / "data" / "reference_configs"
CATKD_REF = sorted((REF_DIR / "CAT-KD" / "configs").rglob("*.yaml"))
MDISTILLER_DKD = sorted((REF_DIR / "mdistiller" / "configs" / "cifar100" / "dkd").glob("*.yaml"))
# MDistiller's file names for two pairs; ours follow the CAT_KD directory
_OUR_NAME = {"wrn40_2_wrn_16_2": "wrn_40_2_wrn_16_2", "wrn40_2_wrn_40_1": "wrn_40_2_wrn_40_1"}
# what a run does: everything but the labels (TAG/PROJECT), the logging cadence and the fixed bugs
_RUN_KEYS = ("DISTILLER", "CAT_KD", "DKD", "KD", "DATASET")


def _what_runs(cfg) -> dict:
    d = cfg.to_dict()
    solver = {k: v for k, v in d["SOLVER"].items() if k != "BATCH_SIZE"}
    return {**{k: d[k] for k in _RUN_KEYS}, "SOLVER": solver}


def test_fixtures_cover_every_cat_and_catkd_file_of_the_reference_layout():
    rel = {str(p.relative_to(REF_DIR / "CAT-KD" / "configs")) for p in CATKD_REF}
    ours = {str(p.relative_to(PRESET_DIR)) for p in PRESET_DIR.rglob("*.yaml")
            if p.relative_to(PRESET_DIR).parts[1] in ("CAT_KD", "CAT", "CAT-KD")}
    assert rel == ours and len(rel) == 17
    assert len(MDISTILLER_DKD) == 11


@pytest.mark.parametrize("path", CATKD_REF, ids=lambda p: str(p.relative_to(REF_DIR)))
def test_reference_catkd_file_loads_unchanged_and_runs_what_our_preset_runs(path, capsys):
    cfg = load_config(path)  # the reference's own file, unfixed: no exit 2
    preset = load_config(str(path.relative_to(REF_DIR / "CAT-KD" / "configs")), quiet=True)
    assert _what_runs(cfg) == _what_runs(preset)
    assert cfg.DISTILLER.TYPE == "CAT_KD"  # "CAT-KD" of r34_r18 is read as the registry's name
    err = capsys.readouterr().err
    assert "if_test" in err and "CAM heads" in err  # says what the switch does in the reference


def test_reference_imagenet_r50_mv2_names_its_mobilenetv1_student_mobilenetv2(capsys):
    path = REF_DIR / "CAT-KD" / "configs" / "imagenet" / "CAT-KD" / "r50_mv2.yaml"
    cfg = load_config(path)
    assert cfg.DISTILLER.STUDENT == "MobileNetV1"
    lines = [line for line in capsys.readouterr().err.splitlines() if "MobileNetV2" in line]
    assert len(lines) == 1 and "MobileNetV1" in lines[0] and "DISTILLER.STUDENT" in lines[0]


def test_reference_r34_r18_batch_leftover_loads_as_written_our_preset_fixes_it():
    ref = load_config(REF_DIR / "CAT-KD" / "configs" / "imagenet" / "CAT-KD" / "r34_r18.yaml", quiet=True)
    assert ref.SOLVER.BATCH_SIZE == 2  # loaded unchanged: the user's file says 2
    assert load_config("imagenet/CAT-KD/r34_r18", quiet=True).SOLVER.BATCH_SIZE == 512


@pytest.mark.parametrize("path", MDISTILLER_DKD, ids=lambda p: p.stem)
def test_mdistiller_dkd_file_loads_unchanged_and_runs_what_our_dkd_preset_runs(path):
    cfg = load_config(path, quiet=True)
    preset = load_config(f"cifar100/DKD/{_OUR_NAME.get(path.stem, path.stem)}", quiet=True)
    assert cfg.DISTILLER.TYPE == "DKD"
    assert _what_runs(cfg) == _what_runs(preset)


def test_dkd_presets_carry_mdistillers_beta_and_lr_per_pair():
    beta = {"res56_res20": 2, "res110_res32": 2, "wrn_40_2_wrn_16_2": 6, "wrn_40_2_wrn_40_1": 6,
            "vgg13_vgg8": 6, "vgg13_mv2": 6}
    names = sorted(p.stem for p in (PRESET_DIR / "cifar100" / "CAT_KD").glob("*.yaml"))
    assert names == sorted(p.stem for p in (PRESET_DIR / "cifar100" / "DKD").glob("*.yaml"))
    for name in names:
        dkd, cat = load_config(f"cifar100/DKD/{name}", quiet=True), load_config(f"cifar100/CAT_KD/{name}", quiet=True)
        assert dkd.DKD.BETA == beta.get(name, 8), name
        assert (dkd.DKD.CE_WEIGHT, dkd.DKD.ALPHA, dkd.DKD.T, dkd.DKD.WARMUP) == (1.0, 1.0, 4.0, 20)
        assert dkd.SOLVER.LR == cat.SOLVER.LR == (0.01 if cat.DISTILLER.STUDENT in (
            "ShuffleV1", "ShuffleV2", "MobileNetV2") else 0.05), name
        assert (dkd.DISTILLER.TEACHER, dkd.DISTILLER.STUDENT) == (cat.DISTILLER.TEACHER, cat.DISTILLER.STUDENT)


def test_reference_extra_keys_are_accepted_teacher_dir_is_the_teacher_checkpoint(tmp_path, capsys):
    extra = REFERENCE_YAML.replace("  Strategy: 0\n", "  Strategy: 0\n  teacher_dir: /ckpts/r32x4.pth\n"
                                   "  student_dir: ''\n") + "if_Augment: False\nif_useFactor: False\nif_self_train: False\n"
    cfg = load_config(write(tmp_path, extra))
    assert cfg.DISTILLER.TEACHER_CKPT == "/ckpts/r32x4.pth"
    err = capsys.readouterr().err
    for key in ("CAT_KD.student_dir", "if_Augment", "if_useFactor", "if_self_train"):
        assert sum(key in line for line in err.splitlines()) == 1, key


def test_aliases_become_the_registered_name_when_a_config_is_built():
    from catkd.engine.validate import build_run_config as build_config

    cfg = build_config({"DISTILLER": {"TYPE": "vanilla", "STUDENT": "resnet8"}}, quiet=True)
    assert cfg.DISTILLER.TYPE == "NONE"
    cfg = build_config({"DISTILLER": {"TYPE": "CAT-KD", "TEACHER": "resnet20", "STUDENT": "resnet8"}}, quiet=True)
    assert cfg.DISTILLER.TYPE == "CAT_KD"
    cfg = build_config({}, quiet=True, overrides={"DATASET.TYPE": "imagenet", "DISTILLER.TYPE": "CAT_KD",
                                                   "DISTILLER.STUDENT": "MobileNetV2"})
    assert cfg.DISTILLER.STUDENT == "MobileNetV1"


def test_a_yaml_file_is_parsed_once_per_version_and_each_reader_gets_its_own_copy(tmp_path, monkeypatch):
    import yaml

    import catkd.config
    from catkd.config import read_yaml

    parses, real = [], yaml.safe_load
    monkeypatch.setattr(catkd.config.yaml, "safe_load", lambda text: parses.append(text) or real(text))
    p = tmp_path / "c.yaml"
    p.write_text("SOLVER: {LR: 0.05}\n")
    got = read_yaml(p)
    got["SOLVER"]["LR"] = 9.0  # callers modify what they get
    assert read_yaml(p) == {"SOLVER": {"LR": 0.05}} and len(parses) == 1
    p.write_text("SOLVER: {LR: 0.125, EPOCHS: 3}\n")  # a changed file is read again
    assert read_yaml(p) == {"SOLVER": {"LR": 0.125, "EPOCHS": 3}} and len(parses) == 2
    p.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        read_yaml(p)
