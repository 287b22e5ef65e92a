"""Studies of many methods: `method` / `pair` choose each trial's preset, a searcher-driven study runs one
search per grid value (an arm, each with the whole budget), `around` ranges follow each preset, and the
confirm stage re-runs each arm's best and its preset (main_results, tuned_baselines)."""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
import yaml

from catkd.config import ConfigError
from catkd.study.checks import run_config
from catkd.study.estimate import plan
from catkd.study.load import load_study
from catkd.study.presets import chosen_preset
from catkd.study.results import settings_of
from catkd.study.space import DefineByRun
from catkd.study.spec import arms, expand_grid
from catkd.study.stages import confirm_params

REPO = Path(__file__).resolve().parents[1]
BASE = "cifar100/CAT_KD/res32x4_res8x4"
FIFTEEN = {"vanilla", "FITNET", "AT", "NST", "PKT", "OFD", "RKD", "VID", "SP", "CRD", "REVIEWKD", "KD", "DKD",
           "CAT_KD", "KDSVD"}


@pytest.fixture(scope="module")
def main_results():
    return load_study(REPO / "studies/main_results.yaml")


@pytest.fixture(scope="module")
def tuned():
    """The shipped tuned_baselines study, loaded once (its checks build every method's models)."""
    return load_study(REPO / "studies/tuned_baselines.yaml")


# ---- method and pair choose the preset ----------------------------------------------------------
def test_method_swaps_the_method_and_keeps_the_pair_pair_swaps_the_pair():
    assert chosen_preset(BASE, {}) is None  # the base itself
    assert chosen_preset(BASE, {"method": "KD"}) == "cifar100/KD/res32x4_res8x4"
    assert chosen_preset(BASE, {"pair": "res56_res20"}) == "cifar100/CAT_KD/res56_res20"
    assert chosen_preset(BASE, {"method": "fitnet", "pair": "vgg13_mv2"}) == "cifar100/FITNET/vgg13_mv2"
    assert chosen_preset(BASE, {"method": "CAT-KD"}) == "cifar100/CAT_KD/res32x4_res8x4"
    # vanilla: the pair's student trained alone
    assert chosen_preset(BASE, {"method": "vanilla"}) == "cifar100/vanilla/resnet8x4"
    assert chosen_preset(BASE, {"method": "vanilla", "pair": "wrn40_2_shuv1"}) == "cifar100/vanilla/ShuffleV1"


def test_missing_presets_skip_leaves_out_only_a_sub_grid_with_no_preset_at_all(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"name": "s", "base": BASE, "missing_presets": "skip", "search": {"algorithm": "grid"},
                                 "metric": "test_acc",
                                 "space": [{"method": {"grid": ["KDSVD"]}, "pair": {"grid": ["res50_mv2"]}},
                                           {"method": {"grid": ["KD", "KDSVD"]}, "pair": {"grid": ["res50_mv2"]}}]}))
    from catkd.study.spec import StudyError

    with pytest.raises(StudyError, match=r"space\[1\]\.method/pair: pair 'res50_mv2': KDSVD"):
        load_study(p)  # the first is left out; the second has KD's preset, so its missing half is an error, named as the file counts


def test_a_missing_preset_names_the_method_its_pairs_or_the_methods():
    with pytest.raises(ConfigError, match=r"KDSVD has no preset for it .* its pairs: res110_res32"):
        chosen_preset(BASE, {"method": "KDSVD", "pair": "res50_mv2"})
    with pytest.raises(ConfigError, match=r"method 'KDX'.* methods: AT, CAT, CAT_KD"):
        chosen_preset(BASE, {"method": "KDX"})
    with pytest.raises(ConfigError, match="not one"):
        chosen_preset("cifar100/vanilla/resnet8x4", {"method": "KD"})


def test_a_trial_trains_the_preset_its_method_and_pair_choose_and_records_them(main_results):
    spec = main_results
    params = {"method": "DKD", "pair": "vgg13_vgg8", "EXPERIMENT.SEED": 2}
    cfg = run_config(spec, params)
    assert (cfg.DISTILLER.TYPE, cfg.DISTILLER.TEACHER, cfg.DISTILLER.STUDENT) == ("DKD", "vgg13", "vgg8")
    assert cfg.DKD.BETA == 6.0 and cfg.EXPERIMENT.SEED == 2  # the DKD preset of that pair
    row = settings_of(cfg, spec.model_dump(mode="json"), {**params, "role": "tuned"})
    assert (row["method"], row["pair"], row["role"], row["DISTILLER.TYPE"]) == ("DKD", "vgg13_vgg8", "tuned", "DKD")


def test_main_results_runs_every_method_on_every_pair_with_a_preset_once_per_seed(main_results):
    spec = main_results
    grid = expand_grid(spec)
    presets = {chosen_preset(spec.base, p) for p in grid}
    assert {p["method"] for p in grid} == FIFTEEN
    # 14 methods x 11 pairs + KDSVD's 6; the student alone of two pairs with one student is one run
    assert len(presets) == 14 * 11 + 6 - 2 and len(grid) == len(presets) * 3
    assert sum(p.startswith("cifar100/vanilla/") for p in presets) == 9
    smoke = load_study(REPO / "studies/main_results.yaml", smoke=True)
    assert sorted(p["method"] for p in expand_grid(smoke)) == sorted(FIFTEEN)  # every method, one pair
    assert {p["pair"] for p in expand_grid(smoke)} == {"res56_res20"}


def test_a_method_without_a_preset_for_a_listed_pair_is_refused_before_anything_runs(tmp_path):
    data = yaml.safe_load((REPO / "studies/main_results.yaml").read_text())
    data["space"][1]["pair"]["grid"].append("res50_mv2")  # KDSVD has no preset there
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(data))
    from catkd.study.spec import StudyError

    with pytest.raises(StudyError, match=r"space\[1\]\.method/pair: pair 'res50_mv2': KDSVD has no preset"):
        load_study(p)


# ---- arms: one search per grid value, the same budget each ---------------------------------------
def test_tuned_baselines_is_one_search_per_method_with_ranges_around_each_preset(tuned, capsys):
    spec = tuned
    a = arms(spec)
    assert [x.constants["method"] for x in a] == ["FITNET", "AT", "NST", "PKT", "KDSVD", "OFD", "RKD", "VID",
                                                  "SP", "CRD", "REVIEWKD", "KD", "DKD", "CAT_KD"]
    assert [x.label for x in a][:2] == ["00-FITNET", "01-AT"] and len({x.label for x in a}) == 14
    by = {x.constants["method"]: x.space for x in a}
    # a tenth to ten times each method's preset for this pair
    assert by["CAT_KD"]["CAT_KD.LOSS.CAT_loss_weight"].loguniform == pytest.approx((1.5, 150.0))  # preset 15
    assert by["OFD"]["OFD.LOSS.FEAT_WEIGHT"].loguniform == pytest.approx((1e-4, 1e-2))
    assert by["DKD"]["DKD.BETA"].loguniform == pytest.approx((0.8, 80.0))
    assert by["KD"]["KD.TEMPERATURE"].uniform == (1.0, 8.0)
    assert by["CAT_KD"]["CAT_KD.LOSS.CAM_RESOLUTION"].choice == [1, 2, 4]
    # another pair: every method moves there, and the ranges follow its presets
    other = load_study(REPO / "studies/tuned_baselines.yaml", sets={"base": "cifar100/CAT_KD/res32x4_shuv1"})
    by = {x.constants["method"]: x.space for x in arms(other)}
    assert "KDSVD" not in by and len(by) == 13  # no KDSVD preset across families: left out, with a note
    assert "KDSVD" in capsys.readouterr().err
    assert by["CAT_KD"]["CAT_KD.LOSS.CAT_loss_weight"].loguniform == pytest.approx((60.0, 6000.0))  # preset 600
    cfg = run_config(other, {"method": "KD"})
    assert (cfg.DISTILLER.TEACHER, cfg.DISTILLER.STUDENT) == ("resnet32x4", "ShuffleV1")
    # a MobileNetV2 student's CAMs are 2x2: R 4 is refused, and --set reaches into the list of searches
    from catkd.study.spec import StudyError

    with pytest.raises(StudyError, match=r"space\[13\]\.cam_resolution: .* 4 is larger than the CAMs"):
        load_study(REPO / "studies/tuned_baselines.yaml", sets={"base": "cifar100/CAT_KD/vgg13_mv2"})
    mv2 = load_study(REPO / "studies/tuned_baselines.yaml", sets={
        "base": "cifar100/CAT_KD/vgg13_mv2", "space.13.cam_resolution": {"choice": [1, 2]}})
    assert arms(mv2)[-1].space["CAT_KD.LOSS.CAM_RESOLUTION"].choice == [1, 2]


def test_an_arm_suggests_only_its_own_dimensions_and_carries_its_method(tuned):
    spec = tuned
    kd = next(x for x in arms(spec) if x.constants["method"] == "KD")
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    constants = DefineByRun(spec, kd)(trial)
    assert constants == {"method": "KD", "EXPERIMENT.SEED": 0}
    assert set(trial.params) == {"KD.LOSS.KD_WEIGHT", "KD.TEMPERATURE"}
    assert 0.09 <= trial.params["KD.LOSS.KD_WEIGHT"] <= 9.0


def test_a_study_without_grid_dimensions_is_one_arm_as_before():
    spec = load_study(REPO / "studies/beta_sweep.yaml")
    (only,) = arms(spec)
    assert only.label == "" and only.constants == {} and set(only.space) == set(spec.space)


def test_the_plan_gives_every_arm_the_whole_budget_and_confirms_its_best_and_its_preset(tuned):
    spec = tuned
    groups = plan(spec)
    search = [g for g in groups if g.stage == "search"]
    confirm = [g for g in groups if g.stage == "confirm"]
    assert sum(g.trials for g in search) == 14 * 16
    assert {g.cfg.DISTILLER.TYPE for g in search} == {x.constants["method"] for x in arms(spec)}
    assert sum(g.trials for g in confirm) == 14 * 2 * 3  # (best + preset) x seeds 1-3
    # ASHA is per arm: each arm's expected epochs are those of a 16-trial ASHA, not of one 224-trial one
    assert all(g.expected_epochs < g.max_epochs for g in search)


def _search_trial(tmp: Path, arm: str, i: int, val: float, params: dict) -> dict:
    d = tmp / "arms" / arm / f"trial_{arm}_{i}"
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps({**params, "EXPERIMENT.SEED": 0}))
    return {"stage": "search", "status": "finished", "best_val_acc": val, "trial_dir": str(d)}


def test_confirm_reruns_each_arms_best_by_validation_and_each_arms_preset(tuned, tmp_path):
    spec = tuned
    kd, dkd = [x for x in arms(spec) if x.constants["method"] in ("KD", "DKD")]
    trials = [_search_trial(tmp_path, kd.label, 0, 60.0, {"method": "KD", "KD.TEMPERATURE": 2.0}),
              _search_trial(tmp_path, kd.label, 1, 70.0, {"method": "KD", "KD.TEMPERATURE": 6.0}),
              # DKD's best is worse than KD's worst: each arm still confirms its own best
              _search_trial(tmp_path, dkd.label, 0, 50.0, {"method": "DKD", "DKD.T": 3.0})]
    params = confirm_params(spec, trials)
    tuned = [p for p in params if p["role"] == "tuned"]
    assert tuned == [{"method": "KD", "KD.TEMPERATURE": 6.0, "role": "tuned", "EXPERIMENT.SEED": s} for s in (1, 2, 3)] + \
        [{"method": "DKD", "DKD.T": 3.0, "role": "tuned", "EXPERIMENT.SEED": s} for s in (1, 2, 3)]
    presets = [p for p in params if p["role"] == "preset"]
    assert len(presets) == 14 * 3 and {"method": "OFD", "role": "preset", "EXPERIMENT.SEED": 1} in presets
    cfg = run_config(spec, presets[0])  # role is not a config key; the preset's own settings
    assert cfg.DISTILLER.TYPE == "FITNET" and cfg.FITNET.LOSS.FEAT_WEIGHT == 100.0


def test_a_study_of_one_method_is_one_search_in_the_study_folder_and_confirms_its_best(tuned, tmp_path):
    one = tuned.model_copy(update={"space": [tuned.space[11]]})  # KD only: one arm, with a constant
    (arm,) = arms(one)
    assert arm.constants == {"method": "KD"}
    d = tmp_path / "trial_0"  # a single search runs in the study folder itself, not under arms/
    d.mkdir()
    (d / "params.json").write_text(json.dumps({"method": "KD", "KD.TEMPERATURE": 3.0, "EXPERIMENT.SEED": 0}))
    trials = [{"stage": "search", "status": "finished", "best_val_acc": 60.0, "trial_dir": str(d)}]
    params = confirm_params(one, trials)
    assert [p["role"] for p in params] == ["tuned"] * 3 + ["preset"] * 3
    assert params[0]["KD.TEMPERATURE"] == 3.0 and params[3] == {"method": "KD", "role": "preset", "EXPERIMENT.SEED": 1}


def test_the_tuned_smoke_runs_every_search_small_on_a_pair_whose_presets_suit_its_models():
    tb = load_study(REPO / "studies/tuned_baselines.yaml", smoke=True)
    assert len(arms(tb)) == 14 and tb.search.num_samples == 2 and tb.confirm.preset
    assert sum(g.trials for g in plan(tb)) == 14 * 2 + 14 * 2 * 2
    # smoke.base: the ranges follow that pair's presets (CAT-KD's beta 0.7 there, not 15)
    assert tb.base == "cifar100/CAT_KD/res56_res20"
    cat = arms(tb)[-1].space
    assert cat["CAT_KD.LOSS.CAT_loss_weight"].loguniform == pytest.approx((0.07, 7.0))
    assert cat["CAT_KD.LOSS.CAM_RESOLUTION"].choice == [1, 2]
    assert run_config(tb, {"method": "CAT_KD"}).CAT_KD.LOSS.CAT_loss_weight == 0.7


# ---- end to end: two arms, their confirm runs, the table ----------------------------------------
ARMS_STUDY = """\
name: arms
base: cifar100/CAT_KD/res56_res20
fixed: {DATASET.VAL_SIZE: 5000}
space:
  - {method: {grid: [KD]}, KD.TEMPERATURE: {uniform: [1, 8]}}
  - {method: {grid: [CAT_KD]}, beta: {around: [0.5, 2]}}
search: {algorithm: optuna, num_samples: 2, seed: 0}
scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
metric: val_acc
seeds: [0]
confirm: {top_k: 1, seeds: [1], preset: true}
max_concurrent: 2
smoke:
  epochs: 2
  teacher: resnet8
  student: resnet8
  teacher_epochs: 2
  grace_period: 1
  dataset: {NUM_CLASSES: 4, TRAIN_PER_CLASS: 60, TEST_PER_CLASS: 20, IMAGE_SIZE: 16}
  val_size: 40
  confirm: {top_k: 1, seeds: [1], preset: true}
  max_concurrent: 1  # one reused trial process per stage and arm: what is checked needs no concurrency
"""


@pytest.mark.ray
def test_two_arms_search_apart_then_confirm_their_best_and_their_presets(tmp_path, ray_session, smoke_teacher):
    from analysis import tables
    from analysis.load import load
    from catkd.study import runner

    p = tmp_path / "arms.yaml"
    p.write_text(ARMS_STUDY)
    spec = load_study(p, smoke=True)
    smoke_teacher(spec, tmp_path / "s")
    assert runner.run_study(spec, str(p), tmp_path / "s", "arms", dashboard=False) == 0
    exp = tmp_path / "s" / "arms"
    assert sorted(d.name for d in (exp / "arms").iterdir()) == ["0-KD", "1-CAT_KD"]
    state = json.loads((exp / "stage.json").read_text())
    assert state == {"search": "done", "search:0-KD": "done", "search:1-CAT_KD": "done", "confirm": "done"}
    # one Optuna study per arm, each with the whole budget
    names = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(f"sqlite:///{exp / 'optuna.db'}")}
    assert names == {"arms:0-KD": 2, "arms:1-CAT_KD": 2}
    trials = pq.read_table(exp / "trials.parquet").to_pylist()
    search = [t for t in trials if t["stage"] == "search"]
    assert sorted(t["DISTILLER.TYPE"] for t in search) == ["CAT_KD", "CAT_KD", "KD", "KD"]
    confirm = sorted((t["DISTILLER.TYPE"], t["role"], t["seed"]) for t in trials if t["stage"] == "confirm")
    assert confirm == [("CAT_KD", "preset", 1), ("CAT_KD", "tuned", 1), ("KD", "preset", 1), ("KD", "tuned", 1)]
    pre = next(t for t in trials if t["stage"] == "confirm" and t["role"] == "preset" and t["DISTILLER.TYPE"] == "CAT_KD")
    assert pre["CAT_KD.LOSS.CAT_loss_weight"] == 0.7  # res56_res20's preset β, not a searched one
    # around [0.5, 2] of that preset; every searched β differs from it
    betas = [t["CAT_KD.LOSS.CAT_loss_weight"] for t in search if t["DISTILLER.TYPE"] == "CAT_KD"]
    assert all(0.35 <= b <= 1.4 and b != 0.7 for b in betas)
    spec_dict = yaml.safe_load((exp / "study.yaml").read_text())
    spec_dict["report"] = "tuned_baselines"
    (exp / "study.yaml").write_text(yaml.safe_dump(spec_dict))
    t = tables.build(load(exp))[0]
    rows = {r[1]: dict(zip(t.headers, r)) for r in t.rows}
    assert set(rows) == {"KD", "CAT-KD"}
    assert rows["KD"]["search budget"].startswith("2 trials") and rows["CAT-KD"]["search budget"].startswith("2 trials")
    assert rows["KD"]["preset (ours)"].endswith("(1)") and rows["KD"]["tuned (ours)"].endswith("(1)")
    assert rows["KD"]["settings found"].startswith("TEMPERATURE ") and rows["KD"]["preset settings"] == "TEMPERATURE 4"
