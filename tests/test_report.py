"""analysis/report.py: tables, published numbers, formats, plots, importance, markers (no Ray)."""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

from analysis import importance, plots, report, tables
from analysis.load import load, load_paper

BETA = "CAT_KD.LOSS.CAT_loss_weight"
RES = "CAT_KD.LOSS.CAM_RESOLUTION"


def _trial(tid, seed, best, last=None, status="finished", stage="search", epochs=3, val=None, at_best_val=None,
           **settings):
    """A trials.parquet row. Without `val` the study has no validation split (like main_results);
    with it, test-at-best-val defaults to 2 points *below* the best test epoch, so a table that
    shows the best test epoch where it should show test-at-best-val fails."""
    base = {"DISTILLER.TYPE": "CAT_KD", "DISTILLER.TEACHER": "resnet32x4", "DISTILLER.STUDENT": "resnet32x4",
            BETA: 50.0, RES: 2, "CAT_KD.onlyCAT": True, "DATASET.RESERVED_CLASS_NUM": 100,
            "DATASET.RESERVED_RATE": 1.0, "DATASET.TYPE": "cifar100"}
    base.update(settings)
    if val is not None and at_best_val is None:
        at_best_val = best - 2.0
    return {"trial_id": tid, "study": "x", "stage": stage, "seed": seed, **base, "EXPERIMENT.SEED": seed,
            "status": status, "epochs_done": epochs, "epochs_budget": 3, "best_val_acc": val,
            "best_test_acc": float(best), "last_test_acc": float(best if last is None else last),
            "last_val_acc": None if val is None else val - 0.5, "test_acc_at_best_val": at_best_val,
            "wall_seconds": 1.0, "trial_dir": f"/nowhere/{tid}"}


def _epochs(trials):
    rows = []
    for t in trials:
        for ep in range(1, t["epochs_done"] + 1):
            rows.append({"trial_id": t["trial_id"], "study": t["study"], "stage": t["stage"], "seed": t["seed"],
                         "epoch": ep, "test_acc": t["best_test_acc"] - (t["epochs_done"] - ep),
                         "val_acc": t["best_val_acc"], "loss_cat": t[BETA] * 0.1 / ep,
                         "test_acc_unseen": 5.0 * ep if t["DATASET.RESERVED_CLASS_NUM"] < 100 else None,
                         BETA: t[BETA], RES: t[RES]})
    return rows


def make_study(path: Path, spec: dict, trials: list[dict], parquet: bool = True) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "study.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True))
    if parquet:
        pq.write_table(pa.Table.from_pylist(trials), path / "trials.parquet")
        pq.write_table(pa.Table.from_pylist(_epochs(trials)), path / "results.parquet")
    return path


def grid_spec(name, **kw):
    return {"name": name, "base": "x", "search": {"algorithm": "grid"}, "scheduler": {"type": "fifo"},
            "metric": "test_acc", "mode": "max", "seeds": [0, 1, 2], **kw}


@pytest.fixture()
def cam_study(tmp_path):
    trials = [_trial("a0", 0, 70), _trial("a1", 1, 72), _trial("a2", 2, 74),
              _trial("b0", 0, 65, **{RES: 4})]
    return make_study(tmp_path / "cam", grid_spec("cam_resolution", space={"cam_resolution": {"grid": [2, 4]}}),
                      trials)


def test_cells_are_mean_std_ddof1_and_n_grouped_over_seeds(cam_study):
    t = tables.build(load(cam_study))[0]
    assert t.headers == ["R = 2", "R = 4"]
    assert t.rows == [["72.00 ± 2.00 (3)", "65.00 (1)"]]  # std ddof=1 of 70,72,74 is 2; n=1: no ±


def test_cell_with_no_values_is_a_dash_and_nan_is_ignored():
    assert tables.cell([]) == "-"
    assert tables.cell([float("nan"), 10.0]) == "10.00 (1)"
    assert tables.stats([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)


def test_epoch_last_uses_last_test_acc(tmp_path):
    trials = [_trial("a0", 0, 70, last=60), _trial("a1", 1, 72, last=62)]
    d = make_study(tmp_path / "c", grid_spec("cam_resolution"), trials)
    assert tables.build(load(d), epoch="last")[0].rows == [["61.00 ± 1.41 (2)"]]
    assert tables.build(load(d), epoch="best-test")[0].rows == [["71.00 ± 1.41 (2)"]]


def test_study_without_validation_defaults_to_the_labelled_best_test_epoch_with_the_last_beside(tmp_path):
    d = make_study(tmp_path / "c", grid_spec("cam_resolution"),
                   [_trial("a0", 0, 70, last=60), _trial("a1", 1, 72, last=62)])
    ts = tables.build(load(d))
    assert [t.rows for t in ts] == [[["71.00 ± 1.41 (2)"]], [["61.00 ± 1.41 (2)"]]]
    assert "best TEST epoch" in ts[0].title and "chosen on the test set" in ts[0].title
    assert ts[1].name == "cam_resolution_last" and "last epoch" in ts[1].title
    with pytest.raises(ValueError, match="no validation split"):
        tables.build(load(d), epoch="best-val")


def test_study_with_validation_reports_test_at_the_best_validation_epoch(tmp_path):
    spec = grid_spec("cam_resolution", metric="val_acc")
    trials = [_trial("a0", 0, 70, val=71, at_best_val=66), _trial("a1", 1, 72, val=73, at_best_val=68)]
    d = make_study(tmp_path / "v", spec, trials)
    ts = tables.build(load(d))
    assert len(ts) == 1 and ts[0].rows == [["67.00 ± 1.41 (2)"]]  # not the best test epoch (71)
    assert "best-validation epoch" in ts[0].title
    assert any("Nothing here is chosen on the test set" in n for n in ts[0].notes)
    t = tables.build(load(d), epoch="best-test")[0]
    assert t.rows == [["71.00 ± 1.41 (2)"]] and "best TEST epoch" in t.title


def _main_results_study(tmp_path, smoke=False):
    pair = {"DISTILLER.TEACHER": "resnet32x4", "DISTILLER.STUDENT": "resnet8x4", "CAT_KD.onlyCAT": False}
    trials = [_trial("c0", 0, 76.0, **pair), _trial("c1", 1, 77.0, **pair),
              _trial("k0", 0, 73.0, **{**pair, "DISTILLER.TYPE": "KD"}),
              _trial("d0", 0, 75.5, **{**pair, "DISTILLER.TYPE": "DKD"}),
              _trial("d1", 1, 76.5, **{**pair, "DISTILLER.TYPE": "DKD"}),
              _trial("f0", 0, 73.5, **{**pair, "DISTILLER.TYPE": "FITNET"}),
              _trial("v0", 0, 72.0, **{**pair, "DISTILLER.TYPE": "NONE"}),
              _trial("w0", 0, 75.0, **{"DISTILLER.TEACHER": "wrn_40_2", "DISTILLER.STUDENT": "wrn_16_2",
                                        "CAT_KD.onlyCAT": False}),
              _trial("a0", 0, 75.2, **{"DISTILLER.TEACHER": "wrn_40_2", "DISTILLER.STUDENT": "wrn_16_2",
                                        "CAT_KD.onlyCAT": False, "DISTILLER.TYPE": "AT"})]
    spec = grid_spec("main_results", space={"method": {"grid": ["a", "b"]}})
    spec["seeds"] = [0, 1, 2]
    if smoke:
        spec["smoke_mode"] = True
    return make_study(tmp_path / "main", spec, trials)


def test_main_results_has_a_row_per_method_a_column_per_pair_and_published_numbers_beside_ours(tmp_path):
    t = tables.build(load(_main_results_study(tmp_path)))[0]
    # the pairs in the paper's order, whatever order the trials came in
    assert t.headers == ["group", "method", "resnet32x4->resnet8x4", "wrn_40_2->wrn_16_2"]
    rows = {r[1]: dict(zip(t.headers, r)) for r in t.rows}
    # grouped as the paper groups them: the student, feature-, logit-, then attention/CAM-based methods
    assert [r[1] for r in t.rows] == ["teacher (published)", "student alone", "FitNet", "DKD", "KD", "AT", "CAT-KD"]
    assert [r[0] for r in t.rows] == ["-", "-", "feature-based", "logit-based", "logit-based",
                                      "attention/CAM-based", "attention/CAM-based"]
    r8 = "resnet32x4->resnet8x4"
    assert rows["teacher (published)"][r8] == "79.42" and rows["teacher (published)"]["wrn_40_2->wrn_16_2"] == "75.61"
    assert rows["student alone"][r8] == "72.00 (1) / 72.50 (-0.50)"
    assert rows["KD"][r8] == "73.00 (1) / 73.33 (-0.33)"
    assert rows["DKD"][r8] == "76.00 ± 0.71 (2) / 76.32 (-0.32)"
    assert rows["FitNet"][r8] == "73.50 (1) / 73.50 (+0.00)"
    # the best of ours in each column is marked (CAT-KD 76.50 here; AT 75.20 on the WRN pair)
    assert rows["CAT-KD"][r8] == "76.50 ± 0.71 (2) ★ / 76.91 (-0.41)"
    assert rows["AT"]["wrn_40_2->wrn_16_2"] == "75.20 (1) ★ / 74.08 (+1.12)"
    assert rows["CAT-KD"]["wrn_40_2->wrn_16_2"] == "75.00 (1) / 75.60 (-0.60)"
    # no result: a dash, never a zero (the published number is still shown)
    assert rows["DKD"]["wrn_40_2->wrn_16_2"] == "- / 76.23"
    assert rows["student alone"]["wrn_40_2->wrn_16_2"] == "- / 73.26"
    assert sum("★" in c for r in t.rows for c in r) == 2
    assert any("Planned seeds per cell: 3" in n for n in t.notes)
    assert any("feature-based: FitNet; logit-based: DKD, KD; attention/CAM-based: AT, CAT-KD" in n for n in t.notes)
    assert any("CAT-KD published numbers" in n and "secondary" in n for n in t.notes)
    assert any("DKD published numbers" in n and "MDistiller" in n for n in t.notes)


def test_main_results_cells_are_one_per_row_in_the_csv_only(tmp_path):
    ts = {t.name: t for t in tables.build(load(_main_results_study(tmp_path)))}
    cells = ts["main_results_cells"]
    assert cells.formats == ("csv",)
    row = {(r[1], r[2]): dict(zip(cells.headers, r)) for r in cells.rows}
    c = row[("CAT-KD", "resnet32x4->resnet8x4")]
    assert (c["mean"], c["std"], c["n"], c["published"], c["gap"], c["best of ours"]) == (
        76.5, 0.7071, 2, 76.91, -0.41, "yes")
    assert row[("DKD", "wrn_40_2->wrn_16_2")]["n"] == 0 and row[("DKD", "wrn_40_2->wrn_16_2")]["mean"] == ""
    assert "main_results_cells" not in tables.render(list(ts.values()), "md")


def test_welch_interval_of_a_difference_golden_value():
    # a = 76, 77; b = 75.5, 76.5: diff 0.5, se sqrt(0.25 + 0.25), Welch df 2, t(0.975, 2) = 4.302653
    diff, ci, na, nb = tables.welch([76.0, 77.0], [75.5, 76.5])
    half = 4.302653 * 0.5 ** 0.5
    assert diff == pytest.approx(0.5) and ci == pytest.approx((0.5 - half, 0.5 + half), abs=1e-4)
    assert (na, nb) == (2, 2)
    assert tables.welch([70.0], [60.0, 61.0])[1] is None  # n = 1: no interval


def test_main_results_shows_cat_kd_minus_the_others_with_welch_intervals_and_the_published_difference(tmp_path):
    ts = {t.name: t for t in tables.build(load(_main_results_study(tmp_path)))}
    d = ts["main_results_differences"]
    rows = {(r[0], r[1]): dict(zip(d.headers, r)) for r in d.rows}
    r = rows[("resnet32x4->resnet8x4", "CAT-KD - DKD (strongest other of ours)")]
    assert r["difference of means"] == "+0.50" and r["95 % CI (Welch)"] == "[-2.54, +3.54]"
    assert r["published difference"] == "+0.59" and r["published inside our CI"] == "yes"  # 76.91 - 76.32
    k = rows[("resnet32x4->resnet8x4", "CAT-KD - KD")]
    assert k["95 % CI (Welch)"].startswith("no interval") and k["published inside our CI"] == "no interval"
    assert k["published difference"] == "+3.58"  # 76.91 - 73.33
    assert ("resnet32x4->resnet8x4", "CAT-KD - student alone") in rows
    assert rows[("wrn_40_2->wrn_16_2", "CAT-KD - AT (strongest other of ours)")]["difference of means"] == "-0.20"


def test_main_results_smoke_does_not_join_cifar_numbers(tmp_path):
    t = tables.build(load(_main_results_study(tmp_path, smoke=True)))[0]
    assert "SYNTHETIC/SMOKE" in t.title
    assert all(c.endswith("/ -") or c == "-" for r in t.rows for c in r[2:])


def test_paper_yaml_gives_a_source_for_every_number():
    paper = load_paper()
    entries = list(paper["vanilla"].values())
    entries += [e for p in paper["pairs"].values() for e in p.values()]
    entries += [e for p in paper["imagenet"].values() for e in p.values()]
    assert len(paper["vanilla"]) == 15 and len(paper["pairs"]) == 11
    assert all(e.get("source") and isinstance(e["top1"], float) for e in entries)


def test_paper_yaml_has_the_feature_baselines_published_numbers_with_their_sources():
    pairs = load_paper()["pairs"]
    methods = ["FITNET", "AT", "NST", "PKT", "RKD", "VID", "SP", "CRD"]
    # the CRD paper's table, as the RepDistiller README prints it: every pair has all eight
    assert all(set(methods) <= set(e) for e in pairs.values())
    assert [pairs["resnet32x4->resnet8x4"][m]["top1"] for m in methods] == [
        73.50, 73.44, 73.30, 73.64, 71.90, 73.09, 72.94, 75.51]
    assert pairs["vgg13->MobileNetV2"]["AT"]["top1"] == 59.40 and pairs["ResNet50->MobileNetV2"]["SP"]["top1"] == 68.08
    assert all("RepDistiller" in pairs[p][m]["source"] for p in pairs for m in methods)
    # OFD and ReviewKD only where a number was found; none for KDSVD
    assert [p for p in pairs if "OFD" in pairs[p]] == [
        "resnet56->resnet20", "resnet32x4->resnet8x4", "wrn_40_2->wrn_40_1", "resnet32x4->ShuffleV1",
        "resnet32x4->ShuffleV2", "ResNet50->MobileNetV2"]
    assert "other code" in pairs["resnet32x4->ShuffleV1"]["OFD"]["note"]
    assert "note" not in pairs["resnet32x4->ShuffleV2"]["OFD"]  # MDistiller's OFD runs that pair
    assert {p: e["REVIEWKD"]["top1"] for p, e in pairs.items() if "REVIEWKD" in e} == {
        "resnet56->resnet20": 71.89, "resnet110->resnet32": 73.89, "resnet32x4->resnet8x4": 75.63,
        "wrn_40_2->wrn_16_2": 76.12, "wrn_40_2->wrn_40_1": 75.09, "vgg13->vgg8": 74.84,
        "resnet32x4->ShuffleV1": 77.45, "resnet32x4->ShuffleV2": 77.78, "ResNet50->MobileNetV2": 69.89}
    assert not any("KDSVD" in e for e in pairs.values())
    # where two sources disagree, both are given
    assert "67.65" in pairs["ResNet50->MobileNetV2"]["KD"]["note"]
    imnet = load_paper()["imagenet"]
    assert imnet["ResNet34->ResNet18"]["KD"]["top1"] == 71.03 and "70.66" in imnet["ResNet34->ResNet18"]["KD"]["note"]
    assert imnet["ResNet34->ResNet18"]["REVIEWKD"]["top1"] == 71.61 and "71.62" in imnet["ResNet34->ResNet18"]["REVIEWKD"]["note"]
    assert (imnet["ResNet50->MobileNetV1"]["CRD"]["top1"], imnet["ResNet50->MobileNetV1"]["REVIEWKD"]["top1"]) == (71.37, 72.56)


def test_paper_yaml_has_mdistillers_dkd_numbers_and_the_mislabelled_column_note():
    pairs = load_paper()["pairs"]
    dkd = {p: e["DKD"]["top1"] for p, e in pairs.items() if "DKD" in e}
    assert dkd == {"resnet56->resnet20": 71.97, "resnet110->resnet32": 74.11, "resnet32x4->resnet8x4": 76.32,
                   "wrn_40_2->wrn_16_2": 76.23, "wrn_40_2->wrn_40_1": 74.81, "vgg13->vgg8": 74.68,
                   "resnet32x4->ShuffleV1": 76.45, "resnet32x4->ShuffleV2": 77.07, "wrn_40_2->ShuffleV1": 76.70,
                   "vgg13->MobileNetV2": 69.71, "ResNet50->MobileNetV2": 70.35}
    assert "MobileNet-V2" in pairs["resnet32x4->ShuffleV2"]["DKD"]["source"]
    assert "ShuffleV2" in pairs["resnet32x4->ShuffleV2"]["DKD"]["note"]
    imnet = load_paper()["imagenet"]
    assert imnet["ResNet34->ResNet18"]["DKD"]["top1"] == 71.70 and imnet["ResNet50->MobileNetV1"]["DKD"]["top1"] == 72.05


def test_latex_has_booktabs_and_csv_parses_back(tmp_path, capsys):
    d = _main_results_study(tmp_path)
    out = tmp_path / "out"
    assert report.main([str(d), "--format", "latex", "--out", str(out), "--no-plots"]) == 0
    tex = (out / "report.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "76.91" in tex
    # symbols pdfLaTeX cannot typeset raw become math, in the table body
    assert "76.50 $\\pm$ 0.71 (2) $\\star$ / 76.91 (-0.41)" in tex and "★" not in tex.split("\\toprule")[1]
    assert report.main([str(d), "--format", "csv", "--out", str(out), "--no-plots"]) == 0
    with open(out / "main_results.csv", newline="") as f:
        rows = list(csv.reader(f))
    expected = tables.build(load(d))[0]
    assert rows[0] == expected.headers
    assert rows[1:] == [[str(c) for c in r] for r in expected.rows]


def test_markdown_is_printed_and_written(cam_study, capsys):
    assert report.main([str(cam_study), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "72.00 ± 2.00 (3)" in printed
    assert "72.00 ± 2.00 (3)" in (cam_study / "report" / "report.md").read_text()


def test_partial_marker_when_a_trial_is_running(tmp_path):
    trials = [_trial("a0", 0, 70), _trial("a1", 1, 40, status="running", epochs=1)]
    t = tables.build(load(make_study(tmp_path / "p", grid_spec("cam_resolution"), trials)))
    assert "PARTIAL" in t[0].title and "SMOKE" not in t[0].title
    assert any("running" in n for n in t[0].notes)


def test_smoke_marker_from_study_yaml(tmp_path):
    d = make_study(tmp_path / "s", grid_spec("binarization", smoke_mode=True),
                   [_trial("a0", 0, 70, **{"CAT_KD.IF_BINARIZE": True})])
    t = tables.build(load(d))[0]
    assert "SYNTHETIC/SMOKE" in t.title and "PARTIAL" not in t.title


def test_not_a_study_directory_exits_2_with_a_message(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty")]) == 2
    assert "not a study" in capsys.readouterr().err
    assert report.main([str(tmp_path / "missing")]) == 2


def _beta_study(tmp_path, confirm_rows=True, n=6):
    spec = {"name": "beta_sweep", "base": "x", "metric": "val_acc", "mode": "max", "seeds": [0],
            "space": {"beta": {"loguniform": [10, 3000]}, "cam_resolution": {"choice": [2, 4]}},
            "search": {"algorithm": "optuna", "num_samples": n}, "scheduler": {"type": "asha"},
            "confirm": {"top_k": 2, "seeds": [1, 2]}}
    betas = [12.0, 40.0, 150.0, 400.0, 900.0, 2500.0][:n]
    accs = [60.0, 66.0, 70.0, 64.0, 55.0, 40.0][:n]
    trials = [_trial(f"s{i}", 0, a, stage="search", val=a + 1, **{BETA: b, RES: 2 + 2 * (i % 2)})
              for i, (b, a) in enumerate(zip(betas, accs))]
    if confirm_rows:
        # β=150 wins on validation; β=40 has the higher *test* accuracy and must not be picked
        trials += [_trial("c0", 1, 69.0, stage="confirm", val=70.0, **{BETA: 150.0, RES: 2}),
                   _trial("c1", 2, 71.0, stage="confirm", val=72.0, **{BETA: 150.0, RES: 2}),
                   _trial("c2", 1, 75.0, stage="confirm", val=60.0, **{BETA: 40.0, RES: 4}),
                   _trial("c3", 2, 75.0, stage="confirm", val=61.0, **{BETA: 40.0, RES: 4})]
    return make_study(tmp_path / "beta", spec, trials)


def test_beta_sweep_sorts_beta_and_reports_confirm_and_advised_range(tmp_path):
    ts = {t.name: t for t in tables.build(load(_beta_study(tmp_path)))}
    assert [r[0] for r in ts["beta_sweep_search"].rows] == ["12", "40", "150", "400", "900", "2500"]
    best = ts["beta_sweep_best"].rows[0]
    assert best[0] == "150" and best[2] == "68.00 ± 1.41 (2)"  # test at the best-validation epoch
    assert best[3] == "15" and best[4] == "yes"  # fixture: loss_cat at epoch 1 = 0.1 * β


def test_beta_sweep_picks_the_best_beta_on_validation_never_on_test(tmp_path):
    for epoch in ("auto", "best-test", "last"):
        ts = {t.name: t for t in tables.build(load(_beta_study(tmp_path)), epoch=epoch)}
        assert ts["beta_sweep_best"].rows[0][0] == "150", epoch  # β=40 has the higher test accuracy
        assert "chosen by mean best_val_acc" in ts["beta_sweep_best"].title
    ts = {t.name: t for t in tables.build(load(_beta_study(tmp_path)), epoch="best-test")}
    assert ts["beta_sweep_best"].rows[0][2] == "70.00 ± 1.41 (2)" and "best TEST epoch" in ts["beta_sweep_best"].headers[2]


def test_trial_counts_are_given_per_stage_so_the_search_table_does_not_seem_to_hold_the_confirm_trials(tmp_path):
    study = load(_beta_study(tmp_path))
    study.trials.loc[study.trials["trial_id"] == "s5", "status"] = "stopped"
    ts = {t.name: t for t in tables.build(study)}
    notes = [n for t in ts.values() for n in t.notes if n.startswith("Trials:")]
    assert notes == ["Trials: search 5 finished, 1 stopped; confirm 4 finished."]


def test_val_tuned_study_without_confirm_rows_says_so(tmp_path):
    ts = tables.build(load(_beta_study(tmp_path, confirm_rows=False)))
    text = tables.render(ts, "md")
    assert "no confirm rows" in text
    assert "beta_sweep_confirm" not in [t.name for t in ts]


def test_plots_are_written_and_non_empty(tmp_path):
    study = load(_beta_study(tmp_path))
    made = plots.all_plots(study, tmp_path / "png")
    names = {p.name for p in made}
    assert {"accuracy_vs_beta.png", "accuracy_vs_R.png", "learning_curves.png", "epochs_per_trial.png",
            "parallel_coordinates.png"} <= names
    assert all(p.stat().st_size > 1024 for p in made)


def test_importance_runs_on_five_finished_trials_with_plot(tmp_path):
    study = load(_beta_study(tmp_path, n=5))
    imp, notes = importance.importances(study)
    assert set(imp) == {BETA, RES}
    assert abs(sum(imp.values()) - 1.0) < 1e-6
    assert "all 5 search trials" in notes[0] and "at epoch 3" in notes[0]
    bar = plots.importance_bar(imp, study, tmp_path / "imp.png")
    assert bar.stat().st_size > 1024


def test_importance_uses_every_search_trial_at_an_epoch_all_of_them_reached(tmp_path):
    d = _beta_study(tmp_path, n=6)
    t = pq.read_table(d / "trials.parquet").to_pandas()
    t.loc[t["trial_id"].isin(["s4", "s5"]), ["status", "epochs_done"]] = ["stopped", 1]  # stopped by ASHA
    pq.write_table(pa.Table.from_pandas(t), d / "trials.parquet")
    study = load(d)
    imp, notes = importance.importances(study)
    assert set(imp) == {BETA, RES} and "all 6 search trials" in notes[0] and "at epoch 1" in notes[0]
    assert "at epoch 1" in importance.table(study, imp, notes).title


def test_importance_skipped_with_fewer_than_three_trials(tmp_path):
    imp, notes = importance.importances(load(_beta_study(tmp_path, n=2)))
    assert imp == {} and "need 3" in notes[0]


def test_partial_cams_rows_are_strategy_with_all_cams_row(tmp_path):
    P, N, S = "CAT_KD.IF_OnlyTransferPartialCAMs", "CAT_KD.CAMs_Nums", "CAT_KD.Strategy"
    trials = [_trial("a", 0, 70, **{P: False, N: 100, S: 0}), _trial("t", 0, 68, **{P: True, N: 10, S: 0}),
              _trial("l", 0, 66, **{P: True, N: 10, S: 1}), _trial("l2", 0, 67, **{P: True, N: 50, S: 1})]
    t = tables.build(load(make_study(tmp_path / "pc", grid_spec("partial_cams"), trials)))[0]
    assert t.headers == ["CAMs transferred", "n = 10", "n = 50", "all (100)"]
    assert t.rows == [["all CAMs", "-", "-", "70.00 (1)"], ["lowest-n", "66.00 (1)", "67.00 (1)", "-"],
                      ["top-n", "68.00 (1)", "-", "-"]]


def test_data_reduction_methods_and_unseen_class_accuracy(tmp_path):
    R = "DATASET.RESERVED_RATE"
    trials = [_trial("c", 0, 60, **{R: 0.5, "CAT_KD.onlyCAT": False}),
              _trial("k", 0, 58, **{R: 0.5, "DISTILLER.TYPE": "KD"}),
              _trial("n", 0, 50, **{R: 0.5, "DISTILLER.TYPE": "NONE"}),
              _trial("u", 0, 70, **{"DATASET.RESERVED_CLASS_NUM": 99})]
    ts = tables.build(load(make_study(tmp_path / "dr", grid_spec("data_reduction"), trials)))
    assert ts[0].headers == ["kept rate", "CAT-KD", "KD", "student alone"]
    assert ts[0].rows == [["0.5", "60.00 (1)", "58.00 (1)", "50.00 (1)"]]
    byname = {t.name: t for t in ts}
    assert byname["data_reduction_differences"].rows[0][:3] == ["0.5", "CAT-KD - KD", "+2.00"]
    assert byname["data_reduction_differences"].rows[0][3].startswith("no interval")  # n = 1
    unseen = byname["data_reduction_unseen"].rows[0]
    assert unseen[0] == "CAT (alone)" and unseen[1] == "99 of 100"
    assert unseen[4] == "15.00 (1)"  # the fixture's test_acc_unseen at the last epoch (3)


def test_unknown_study_gets_a_generic_table_over_varied_settings(tmp_path):
    trials = [_trial("a", 0, 70, **{"SOLVER.LR": 0.05}), _trial("b", 1, 72, **{"SOLVER.LR": 0.05}),
              _trial("c", 0, 60, **{"SOLVER.LR": 0.01})]
    t = tables.build(load(make_study(tmp_path / "g", grid_spec("my_lr_study"), trials)))[0]
    assert t.headers[0] == "SOLVER.LR"
    assert t.rows[0][:2] == ["0.01", "60.00 (1)"] and t.rows[1][:2] == ["0.05", "71.00 ± 1.41 (2)"]


def test_tune_files_are_read_when_parquet_is_missing(tmp_path):
    d = make_study(tmp_path / "tune", grid_spec("cam_resolution", fixed={"SOLVER.EPOCHS": 2}), [], parquet=False)
    for i, (r, seed, accs) in enumerate([(2, 0, [50, 60]), (2, 1, [55, 62]), (4, 0, [40, 45])]):
        td = d / f"trial_{i}"
        td.mkdir()
        (td / "params.json").write_text(json.dumps({"grid": {"cam_resolution": r, "seed": seed}}))
        (td / "result.json").write_text("".join(
            json.dumps({"epoch": e + 1, "test_acc": a, "val_acc": a, "trial_id": f"t{i}", "epochs_budget": 2}) + "\n"
            for e, a in enumerate(accs)))
    study = load(d)
    assert study.source == "tune" and len(study.trials) == 3 and len(study.epochs) == 6
    assert tables.build(study)[0].rows == [["61.00 ± 1.41 (2)", "45.00 (1)"]]


def test_render_md_and_csv_text_roundtrip():
    t = tables.Table("x", "T", ["a", "b"], [["1.00 ± 0.10 (2)", "x,y"]])
    assert "## T" in tables.render([t], "md")
    assert list(csv.reader(io.StringIO(tables.csv_text(t)))) == [["a", "b"], ["1.00 ± 0.10 (2)", "x,y"]]


def _tune_trial(d, i, accs, settings, extra_rows=()):
    """A trial directory as Tune and the trial leave it: params.json, result.json, run/settings.json."""
    td = d / f"trial_{i}"
    (td / "run").mkdir(parents=True)
    (td / "params.json").write_text(json.dumps({"grid": {"preset": "cifar100/KD/res32x4_res8x4", "seed": i}}))
    (td / "result.json").write_text("".join(
        json.dumps({"epoch": e + 1, "test_acc": a, "trial_id": f"t{i}", "done": False}) + "\n"
        for e, a in enumerate(accs)) + "".join(json.dumps(r) + "\n" for r in extra_rows))
    (td / "run" / "settings.json").write_text(json.dumps(settings))


def test_tune_fallback_reads_each_trials_own_record_through_the_same_builder(tmp_path):
    from catkd.study import results as record
    from catkd.study.checks import run_config
    from catkd.study.spec import StudySpec

    spec = grid_spec("main_results", base="cifar100/CAT_KD/res32x4_res8x4", fixed={"SOLVER.EPOCHS": 2},
                     space={"preset": {"grid": ["cifar100/KD/res32x4_res8x4"]}})
    d = make_study(tmp_path / "mr", spec, [], parquet=False)
    for i, accs in enumerate([[70, 73], [71]]):  # trial 1 did 1 of 2 epochs, study not done
        params = {"preset": "cifar100/KD/res32x4_res8x4", "EXPERIMENT.SEED": i}  # a trial's params: dotted keys
        cfg = run_config(StudySpec.model_validate(spec), params)
        _tune_trial(d, i, accs, record.settings_of(cfg, spec, params))
    study = load(d)
    assert study.source == "tune"
    assert list(study.trials["status"]) == ["finished", "running"]
    # the same rows the Parquet writer stores: one builder
    rows, trials = record.collect(d, spec, study_done=False)
    assert list(study.trials["trial_id"]) == [t["trial_id"] for t in trials]
    assert list(study.epochs["test_acc"]) == [r["test_acc"] for r in rows]
    t = tables.build(study)[0]
    row = {r[1]: r for r in t.rows}["KD"]
    assert t.headers[2:] == ["resnet32x4->resnet8x4"]
    assert row[2] == "72.00 ± 1.41 (2) ★ / 73.33 (-1.33)"
    assert "PARTIAL" in t.title


def test_tune_fallback_does_not_count_a_diverged_trials_marker_row_as_an_epoch(tmp_path):
    spec = grid_spec("x", fixed={"SOLVER.EPOCHS": 5})
    d = make_study(tmp_path / "dv", spec, [], parquet=False)
    marker = {"epoch": 2, "status": "diverged", "test_acc": float("nan"), "trial_id": "t0"}
    _tune_trial(d, 0, [40, 45], {"SOLVER.EPOCHS": 5, "EXPERIMENT.SEED": 0}, [marker])
    study = load(d)
    assert list(study.epochs["test_acc"]) == [40, 45]  # epoch 2 keeps its real value
    assert study.trials["status"].iloc[0] == "diverged" and study.trials["last_test_acc"].iloc[0] == 45


def test_an_epoch_tunes_rows_lost_is_taken_from_the_trials_own_record_but_none_after_tunes_last(tmp_path):
    """A bucket's result.json can lose the rows of epochs whose checkpoint a restored trial continued from
    (Tune puts it back later than the trial puts its checkpoint); the trial's run/metrics.jsonl, written
    before each report, fills the gap. An epoch after Tune's last is not taken: a trial the scheduler
    stopped may have recorded one more epoch, which Tune never took."""
    from catkd.study import results as record

    spec = grid_spec("x", fixed={"SOLVER.EPOCHS": 4})
    d = make_study(tmp_path / "gap", spec, [], parquet=False)
    for i, tune_accs, own in [(0, [40, 45, None, 55], [40, 45, 50, 55]), (1, [30, 31], [30, 31, 32])]:
        _tune_trial(d, i, [], {"SOLVER.EPOCHS": 4, "EXPERIMENT.SEED": i}, [
            {"epoch": e + 1, "test_acc": a, "trial_id": f"t{i}"} for e, a in enumerate(tune_accs) if a is not None])
        (d / f"trial_{i}" / "run" / "metrics.jsonl").write_text("".join(
            json.dumps({"epoch": e + 1, "test_acc": a}) + "\n" for e, a in enumerate(own)))
    rows, trials = record.collect(d, spec, study_done=True)
    assert [(r["trial_id"], r["epoch"], r["test_acc"]) for r in rows] == [
        ("t0", 1, 40), ("t0", 2, 45), ("t0", 3, 50), ("t0", 4, 55), ("t1", 1, 30), ("t1", 2, 31)]
    assert [(t["status"], t["epochs_done"]) for t in trials] == [("finished", 4), ("stopped", 2)]


def test_script_exits_2_on_a_non_study_directory(tmp_path):
    import subprocess

    (tmp_path / "notes.txt").write_text("not a study")
    p = subprocess.run([sys.executable, str(ROOT / "analysis" / "report.py"), str(tmp_path), "--no-plots"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert p.returncode == 2 and "not a study" in p.stderr and p.stdout == ""


def test_binarization_reports_on_minus_off_at_each_r_with_its_interval(tmp_path):
    B = "CAT_KD.IF_BINARIZE"
    trials = [_trial("a0", 0, 70, **{B: True, BETA: 300.0}), _trial("a1", 1, 72, **{B: True, BETA: 300.0}),
              _trial("b0", 0, 71, **{B: False}), _trial("b1", 1, 74, **{B: False})]
    ts = {t.name: t for t in tables.build(load(make_study(tmp_path / "bin", grid_spec("binarization"), trials)))}
    row = ts["binarization_differences"].rows[0]
    assert row[:3] == ["2", "binarized - not binarized", "-1.50"] and row[3].startswith("[")


def test_the_report_key_chooses_the_layout_whatever_the_study_is_called(tmp_path):
    d = _beta_study(tmp_path)
    spec = yaml.safe_load((d / "study.yaml").read_text())
    (d / "study.yaml").write_text(yaml.safe_dump({**spec, "name": "my_beta_scan", "report": "beta_sweep"}))
    assert "beta_sweep_best" in [t.name for t in tables.build(load(d))]
    (d / "study.yaml").write_text(yaml.safe_dump({**spec, "name": "my_beta_scan"}))
    assert [t.name for t in tables.build(load(d))][0] == "generic"


def test_the_report_shows_what_the_teacher_cache_saved_per_stage_and_what_was_prefetched(tmp_path):
    import pandas as pd

    from analysis.load import Study
    from analysis.tables import teacher_cache_table

    epochs = pd.DataFrame({
        "trial_id": ["a", "a", "b", "c"], "stage": ["search", "search", "search", "confirm"],
        "teacher_images": [100, 4, 0, 50], "images_per_second": [50.0, 50.0, 25.0, 10.0],
        "epoch_seconds": [2.0, 2.0, 4.0, 10.0]})
    t = teacher_cache_table(Study(Path("."), {"name": "x"}, pd.DataFrame({"trial_id": ["a"]}), epochs))
    assert t.rows == [["search", 2, 3, "104", "300", "0.347"], ["confirm", 1, 1, "50", "100", "0.500"]]
    no_counts = epochs.drop(columns=["teacher_images"])
    assert teacher_cache_table(Study(Path("."), {"name": "x"}, pd.DataFrame(), no_counts)) is None
    (tmp_path / "prefetch.json").write_text(json.dumps({"teacher_images": 1234, "done": True}))
    t = teacher_cache_table(Study(tmp_path, {"name": "x"}, pd.DataFrame({"trial_id": ["a"]}), epochs))
    assert t.rows[-1] == ["prefetch (idle CPU)", "-", "-", "1,234", "-", "-"] and len(t.rows) == 3


def test_an_unknown_report_layout_gets_the_generic_table_and_a_note_naming_the_known_ones(tmp_path):
    trials = [_trial("a", 0, 60.0, **{"SOLVER.LR": 0.01}), _trial("b", 0, 70.0, **{"SOLVER.LR": 0.05})]
    t = tables.build(load(make_study(tmp_path / "u", grid_spec("x", report="beta_swep"), trials)))[0]
    assert t.name == "generic"
    assert any("'beta_swep' is no layout" in n and "beta_sweep" in n for n in t.notes), t.notes


def test_every_layout_module_registers_itself_and_a_new_module_needs_no_list(tmp_path):
    import analysis.layouts as layouts

    modules = sorted(p.stem for p in Path(layouts.__file__).parent.glob("*.py") if p.stem not in ("__init__", "registry", "common"))
    assert sorted(layouts.LAYOUTS) == modules


def test_a_trial_is_labelled_by_the_settings_its_sub_grid_samples_in_display_names():
    from analysis.load import Study

    spec = {"name": "p", "space": {BETA: {"loguniform": [1, 100]}, "CAT_KD.IF_OnlyTransferPartialCAMs": {"choice": [True, False]},
                                   "CAT_KD.CAMs_Nums": {"choice": [1, 2], "when": {"CAT_KD.IF_OnlyTransferPartialCAMs": True}}}}
    study = Study(Path("."), spec, pd.DataFrame(), pd.DataFrame())
    row = {BETA: 12.5, "CAT_KD.IF_OnlyTransferPartialCAMs": False, "CAT_KD.CAMs_Nums": 100, "trial_id": "t"}
    assert plots._settings_label(study, row) == "β=12.5 partial CAMs=False"  # n is not a setting of this trial
    row.update({"CAT_KD.IF_OnlyTransferPartialCAMs": True, "CAT_KD.CAMs_Nums": 2})
    assert plots._settings_label(study, row) == "β=12.5 partial CAMs=True n=2"


@pytest.mark.parametrize("layout", ["cam_resolution", "binarization", "partial_cams", "data_reduction"])
def test_each_ablation_says_why_no_published_number_stands_beside_ours(tmp_path, layout):
    paper = load_paper()
    trials = [_trial("a0", 0, 70.0), _trial("a1", 1, 71.0)]
    t = tables.build(load(make_study(tmp_path / layout, grid_spec(layout), trials)), paper=paper)[0]
    note = next(n for n in t.notes if n.startswith("Published"))
    assert "unknown here" in note and paper["ablations"][layout]["finding"] in note and "CVPR 2023" in note
    smoke = {**grid_spec(layout), "smoke_mode": True}
    t = tables.build(load(make_study(tmp_path / f"{layout}-smoke", smoke, trials)), paper=paper)[0]
    assert any("not compared" in n for n in t.notes) and not any("unknown here" in n for n in t.notes)
