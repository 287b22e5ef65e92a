"""analysis/layouts/imagenet.py: the ImageNet table (top-1 and top-5 per pair, ours beside the published
number and the gap), read from an experiment directory that catkd's own trial record wrote."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from analysis import tables
from analysis.layouts import layout_of
from analysis.load import load, load_paper
from catkd.study import results as record

R34, MV1 = "ResNet34->ResNet18", "ResNet50->MobileNetV1"
MODELS = {"r34_r18": ("ResNet34", "ResNet18"), "r50_mv2": ("ResNet50", "MobileNetV1")}

# (method, pair, seed, a, b): each trial's 4 epochs. Test top-1 is a-3, a, a+2, a+1: a at the best
# validation epoch (2), a+2 at the best test epoch (3), a+1 at the last (4). Test top-5 is b+3, b, b+1,
# b+0.5: b at the best validation epoch, b+1 at the best test epoch, b+0.5 at the last, and its own best
# (b+3) at an epoch no rule reads.
TRIALS = [
    ("vanilla", "r34_r18", 0, 69.5, 89.0), ("vanilla", "r34_r18", 1, 70.1, 89.4),
    ("KD", "r34_r18", 0, 70.8, 90.0), ("KD", "r34_r18", 1, 71.2, 90.2),
    ("CAT_KD", "r34_r18", 0, 71.0, 90.3), ("CAT_KD", "r34_r18", 1, 71.4, 90.7),
    ("AT", "r34_r18", 0, 70.9, 89.9),
    ("vanilla", "r50_mv2", 0, 68.5, 88.2),
    ("DKD", "r50_mv2", 0, 71.9, 90.6),
    ("CAT_KD", "r50_mv2", 0, 72.0, 90.9),
]


def _epochs(a: float, b: float, val: bool) -> list[dict]:
    test = [a - 3, a, a + 2, a + 1]
    top5 = [b + 3, b, b + 1, b + 0.5]
    vals = [60.0, 64.0, 63.0, 62.5]  # best validation: epoch 2
    return [{"epoch": e + 1, "test_acc": test[e], "test_acc_top5": top5[e],
             **({"val_acc": vals[e]} if val else {})} for e in range(4)]


def make_imagenet_study(path: Path, val: bool = True, trials=TRIALS) -> Path:
    """Tune's trial folders as a study leaves them, then the Parquet files by catkd's own writer."""
    spec = {"name": "imagenet", "base": "imagenet/CAT-KD/r34_r18", "search": {"algorithm": "grid"},
            "scheduler": {"type": "fifo"}, "metric": "test_acc", "mode": "max", "seeds": [0, 1],
            "space": {"method": {"grid": sorted({t[0] for t in trials})}, "pair": {"grid": ["r34_r18", "r50_mv2"]}}}
    path.mkdir(parents=True)
    (path / "study.yaml").write_text(yaml.safe_dump(spec))
    for i, (method, pair, seed, a, b) in enumerate(trials):
        teacher, student = MODELS[pair]
        typ = "NONE" if method == "vanilla" else method
        td = path / f"trial_{i:02d}"
        (td / "run").mkdir(parents=True)
        params = {"method": method, "pair": pair, "EXPERIMENT.SEED": seed}
        (td / "params.json").write_text(json.dumps({"grid": params}))
        (td / "result.json").write_text("".join(json.dumps({**r, "trial_id": f"t{i:02d}", "done": False}) + "\n"
                                                for r in _epochs(a, b, val)))
        record.write_settings(td / "run", {
            **params, "DISTILLER.TYPE": typ,
            # a student trained alone keeps the config's default teacher, which it never uses
            "DISTILLER.TEACHER": "ResNet50" if method == "vanilla" else teacher, "DISTILLER.STUDENT": student,
            "DATASET.TYPE": "imagenet", "SOLVER.EPOCHS": 4})
    record.write(path, spec, study_done=True)
    return path


@pytest.fixture()
def study(tmp_path):
    return load(make_imagenet_study(tmp_path / "imagenet"))


def _by_method(t):
    return {r[1]: dict(zip(t.headers, r)) for r in t.rows}


def test_a_study_named_imagenet_gets_the_imagenet_table(study):
    assert layout_of(study) == "imagenet" and study.source == "parquet"
    assert [t.name for t in tables.build(study)] == ["imagenet", "imagenet_cells"]


def test_imagenet_table_has_top1_and_top5_per_pair_ours_beside_the_published_number_and_the_gap(study):
    t = tables.build(study)[0]
    assert t.headers == ["group", "method", f"{R34} top-1", f"{R34} top-5", f"{MV1} top-1", f"{MV1} top-5"]
    # the student alone, the teachers' published accuracy, then the methods grouped by family
    assert [r[1] for r in t.rows] == ["student alone", "teacher (published)", "DKD", "KD", "AT", "CAT-KD"]
    assert [r[0] for r in t.rows] == ["-", "-", "logit-based", "logit-based", "attention/CAM-based",
                                      "attention/CAM-based"]
    rows = _by_method(t)
    # mean ± std (ddof 1) (n) at the best-validation epoch / published (ours - published)
    assert rows["student alone"][f"{R34} top-1"] == "69.80 ± 0.42 (2) / 69.76 (+0.04)"
    assert rows["student alone"][f"{R34} top-5"] == "89.20 ± 0.28 (2) / -"   # no published top-5: no gap
    assert rows["student alone"][f"{MV1} top-1"] == "68.50 (1) / 68.87 (-0.37)"
    assert rows["KD"][f"{R34} top-1"] == "71.00 ± 0.28 (2) / 71.03 (-0.03)"
    assert rows["KD"][f"{R34} top-5"] == "90.10 ± 0.14 (2) / -"
    assert rows["CAT-KD"][f"{R34} top-1"] == "71.20 ± 0.28 (2) / 71.26 (-0.06)"
    assert rows["CAT-KD"][f"{R34} top-5"] == "90.50 ± 0.28 (2) / 90.45 (+0.05)"
    assert rows["CAT-KD"][f"{MV1} top-1"] == "72.00 (1) / 72.24 (-0.24)"
    assert rows["CAT-KD"][f"{MV1} top-5"] == "90.90 (1) / 91.13 (-0.23)"
    assert rows["DKD"][f"{MV1} top-1"] == "71.90 (1) / 72.05 (-0.15)"
    # no result: a dash, the published number still beside it; neither: a dash alone
    assert rows["DKD"][f"{R34} top-1"] == "- / 71.70" and rows["DKD"][f"{R34} top-5"] == "-"
    assert rows["AT"][f"{R34} top-1"] == "70.90 (1) / -"  # no published ImageNet AT number
    assert rows["AT"][f"{MV1} top-1"] == "-" and rows["AT"][f"{MV1} top-5"] == "-"
    # the teachers: their published accuracy only (top-5 unknown)
    assert [rows["teacher (published)"][h] for h in t.headers[2:]] == ["73.31", "-", "76.16", "-"]


def test_imagenet_notes_name_the_sources_the_disagreements_and_the_epoch_rule(study):
    notes = tables.build(study)[0].notes
    text = "\n".join(notes)
    assert "Nothing here is chosen on the test set" in text  # the study has a validation split
    assert "test top-1 % at the best-validation epoch, and top-5 at that same epoch" in text
    assert "Planned seeds per cell: 2" in text
    # where sources disagree, the first is shown and the other named
    assert any(n.startswith("KD ResNet34->ResNet18: published 71.03") and "70.66" in n and "disagree" in n
               for n in notes)
    assert any("CAT-KD published numbers" in n and "CAT-KD paper" in n and "secondary" in n for n in notes)
    assert any("KD published numbers" in n and "MDistiller README" in n for n in notes)
    assert any("teacher published numbers" in n and "torchvision" in n for n in notes)
    assert any("No published ImageNet number was found for: AT (ResNet34->ResNet18, ResNet50->MobileNetV1)" in n
               for n in notes)
    assert any("Published top-5 is known here only for: CAT-KD;" in n for n in notes)
    assert not any("ResNet50->ResNet18" in n for n in notes)  # the student alone's unused teacher is no pair


def test_imagenet_reports_the_rules_epoch_never_the_best_test_epoch_unless_asked(study, tmp_path):
    rows = _by_method(tables.build(study)[0])
    # best-validation epoch (2): a and b; the best test epoch would give a+2 and b+1, the best top-5 b+3
    assert rows["KD"][f"{R34} top-1"].startswith("71.00 ") and rows["KD"][f"{R34} top-5"].startswith("90.10 ")
    asked = tables.build(study, epoch="best-test")[0]
    assert "best TEST epoch" in asked.title
    rows = _by_method(asked)
    assert rows["KD"][f"{R34} top-1"] == "73.00 ± 0.28 (2) / 71.03 (+1.97)"
    assert rows["KD"][f"{R34} top-5"] == "91.10 ± 0.14 (2) / -"  # top-5 at the best top-1 epoch, not its own best
    last = _by_method(tables.build(study, epoch="last")[0])
    assert last["KD"][f"{R34} top-1"] == "72.00 ± 0.28 (2) / 71.03 (+0.97)"
    assert last["KD"][f"{R34} top-5"] == "90.60 ± 0.14 (2) / -"


def test_imagenet_without_a_validation_split_labels_the_best_test_epoch_and_shows_the_last_beside(tmp_path):
    ts = {t.name: t for t in tables.build(load(make_imagenet_study(tmp_path / "nv", val=False)))}
    assert "best TEST epoch" in ts["imagenet"].title and "last epoch" in ts["imagenet_last"].title
    assert _by_method(ts["imagenet_last"])["CAT-KD"][f"{MV1} top-1"] == "73.00 (1) / 72.24 (+0.76)"
    assert _by_method(ts["imagenet_last"])["CAT-KD"][f"{MV1} top-5"] == "91.40 (1) / 91.13 (+0.27)"


def test_imagenet_cells_are_one_per_row_per_metric_in_the_csv_only(study):
    ts = tables.build(study)
    cells = next(t for t in ts if t.name == "imagenet_cells")
    assert cells.formats == ("csv",) and "imagenet_cells" not in tables.render(ts, "md")
    row = {(r[1], r[2], r[3]): dict(zip(cells.headers, r)) for r in cells.rows}
    c = row[("CAT-KD", R34, "top-5")]
    assert (c["mean"], c["std"], c["n"], c["published"], c["gap"]) == (90.5, 0.2828, 2, 90.45, 0.05)
    assert "CAT-KD paper" in c["source"]
    assert row[("DKD", R34, "top-1")]["n"] == 0 and row[("DKD", R34, "top-1")]["mean"] == ""
    assert row[("KD", MV1, "top-5")]["published"] == ""  # unknown, not zero
    assert row[("teacher (published)", MV1, "top-1")]["published"] == 76.16


def test_imagenet_smoke_does_not_join_the_published_numbers(tmp_path):
    d = make_imagenet_study(tmp_path / "sm")
    spec = yaml.safe_load((d / "study.yaml").read_text())
    (d / "study.yaml").write_text(yaml.safe_dump({**spec, "smoke_mode": True}))
    t = tables.build(load(d))[0]
    assert "SYNTHETIC/SMOKE" in t.title
    assert all(c.endswith("/ -") or c == "-" for r in t.rows for c in r[2:])


def test_paper_yaml_has_the_imagenet_numbers_their_sources_and_no_invented_top5():
    imnet = load_paper()["imagenet"]
    assert list(imnet) == [R34, MV1]
    top1 = {p: {m: e["top1"] for m, e in d.items()} for p, d in imnet.items()}
    assert top1 == {
        R34: {"teacher": 73.31, "student": 69.76, "DKD": 71.70, "KD": 71.03, "CRD": 71.17, "REVIEWKD": 71.61,
              "CAT_KD": 71.26},
        MV1: {"teacher": 76.16, "student": 68.87, "DKD": 72.05, "KD": 70.50, "CRD": 71.37, "REVIEWKD": 72.56,
              "CAT_KD": 72.24}}
    assert {(p, m): e["top5"] for p, d in imnet.items() for m, e in d.items() if e["top5"] is not None} == {
        (R34, "CAT_KD"): 90.45, (MV1, "CAT_KD"): 91.13}
    assert all("top5" in e and e["source"] for d in imnet.values() for e in d.values())
    assert "secondary" in imnet[R34]["CAT_KD"]["source"] and "CAT-KD paper" in imnet[R34]["CAT_KD"]["source"]
    assert "70.66" in imnet[R34]["KD"]["note"] and "71.62" in imnet[R34]["REVIEWKD"]["note"]
    assert "MDistiller" in imnet[MV1]["KD"]["source"] and "KD++" in imnet[MV1]["KD"]["source"]  # they agree
    assert not any(m in d for d in imnet.values() for m in ("AT", "OFD"))  # not found: no entry
