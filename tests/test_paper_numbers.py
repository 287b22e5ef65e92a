"""analysis/paper.yaml: every published number carries its source, no entry holds a key the report does
not know (a typo cannot hide a number), and where two sources disagree the file holds both and the
tables' notes name both."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from analysis import tables
from analysis.load import load, load_paper

NUMBERS = ("top1", "top5")                     # a published accuracy, % (top5 null = unknown, never a guess)
ENTRY_KEYS = {*NUMBERS, "source", "note", "disagree", "range", "finding"}
DISAGREE_KEYS = {*NUMBERS, "source"}


def problems(node: Any, path: str = "") -> list[str]:
    """What is wrong with paper.yaml below `path`. A mapping is an entry when it holds any key an entry
    may hold or any value that is no mapping; otherwise it groups entries (pairs, methods, ...)."""
    if not isinstance(node, dict):
        return [f"{path}: {node!r} is neither an entry nor a group of entries"]
    is_entry = bool(ENTRY_KEYS & set(node)) or any(not isinstance(v, dict) for v in node.values())
    if not is_entry:
        return [p for k, v in node.items() for p in problems(v, f"{path}/{k}")]
    out = [f"{path}: unknown key {k!r}" for k in node if k not in ENTRY_KEYS]
    if not (isinstance(node.get("source"), str) and node["source"].strip()):
        out.append(f"{path}: no source")
    for key in NUMBERS:
        v = node.get(key)
        if key in node and v is not None and not (isinstance(v, (int, float)) and 0 < v <= 100):
            out.append(f"{path}: {key} {v!r} is no accuracy")
    other = node.get("disagree")
    if other is not None:
        if not isinstance(other, dict):
            return out + [f"{path}: disagree must be a mapping ({', '.join(sorted(DISAGREE_KEYS))})"]
        out += [f"{path}/disagree: unknown key {k!r}" for k in other if k not in DISAGREE_KEYS]
        if not (isinstance(other.get("source"), str) and other["source"].strip()):
            out.append(f"{path}/disagree: no source")
        if other.get("source") == node.get("source"):
            out.append(f"{path}/disagree: the same source as the entry")
        keys = [k for k in NUMBERS if other.get(k) is not None]
        if not keys:
            out.append(f"{path}/disagree: no number")
        for k in keys:
            if node.get(k) is None or other[k] == node[k]:
                out.append(f"{path}/disagree: {k} {other[k]} is no disagreement with {node.get(k)}")
            elif f"{other[k]:.2f}" not in str(node.get("note", "")) or f"{node[k]:.2f}" not in str(node.get("note", "")):
                out.append(f"{path}: its note must say which number is shown ({node[k]:.2f}) and name the other "
                           f"({other[k]:.2f})")
    return out


def _flat(node: Any, path: str = "") -> dict[str, dict]:
    """Every entry of the file by its path (/pairs/<pair>/<method>)."""
    if isinstance(node, dict) and (ENTRY_KEYS & set(node)):
        return {path: node}
    return {p: e for k, v in (node.items() if isinstance(node, dict) else []) for p, e in _flat(v, f"{path}/{k}").items()}


def test_every_published_number_in_paper_yaml_has_a_source_and_no_unknown_key():
    paper = load_paper()
    assert problems({k: v for k, v in paper.items() if k != "dataset"}) == []
    assert isinstance(paper["dataset"], str)
    entries = _flat(paper)
    assert len([e for e in entries.values() if e.get("top1") is not None]) > 150  # the walk reached the numbers


@pytest.mark.parametrize("entry, found", [
    ({"top1": 70.0}, "no source"),
    ({"top1": 70.0, "source": "  "}, "no source"),
    ({"top1": 70.0, "sorce": "x"}, "unknown key 'sorce'"),
    ({"top_1": 70.0, "source": "x"}, "unknown key 'top_1'"),
    ({"top_1": 70.0, "sorce": "x"}, "unknown key 'top_1'"),  # no known key at all: still an entry
    ({"top1": "70", "source": "x"}, "is no accuracy"),
    ({"top1": 70.0, "source": "x", "disagree": {"top1": 70.5}}, "disagree: no source"),
    ({"top1": 70.0, "source": "x", "disagree": {"top1": 70.0, "source": "y"}}, "no disagreement"),
    ({"top1": 70.0, "source": "x", "disagree": {"top1": 70.5, "source": "y"}}, "note must say"),
    ({"top1": 70.0, "source": "x", "disagree": {"top1": 70.5, "source": "y", "why": "z"}}, "unknown key 'why'"),
])
def test_the_walk_finds_a_missing_source_a_typo_and_a_half_told_disagreement(entry, found):
    paper = {"pairs": {"a->b": {"KD": entry, "DKD": {"top1": 71.0, "source": "ok"}}}}
    got = problems(paper)
    assert got and all(p.startswith("/pairs/a->b/KD") for p in got) and any(found in p for p in got), got
    assert problems({"pairs": {"a->b": {"DKD": {"top1": 71.0, "source": "ok", "disagree": {
        "top1": 71.5, "source": "other"}, "note": "the table shows 71.00; the other prints 71.50"}}}}) == []


def test_paper_yaml_has_the_kd_number_of_wrn_40_2_to_shufflev1():
    kd = load_paper()["pairs"]["wrn_40_2->ShuffleV1"]["KD"]
    assert kd["top1"] == 74.83 and "CRD paper" in kd["source"] and "RepDistiller" in kd["source"]


def test_paper_yaml_says_where_two_sources_disagree_and_which_number_the_tables_show():
    paper = load_paper()
    got = {path: (e["top1"], e["disagree"]["top1"]) for path, e in _flat(paper).items() if "disagree" in e}
    assert got == {"/pairs/ResNet50->MobileNetV2/KD": (67.35, 67.65),
                   "/imagenet/ResNet34->ResNet18/KD": (71.03, 70.66),
                   "/imagenet/ResNet34->ResNet18/REVIEWKD": (71.61, 71.62)}
    for path in got:
        e = _flat(paper)[path]
        assert "KD++" in e["disagree"]["source"] and "secondary" in e["disagree"]["source"]
        assert f"the table shows {e['top1']:.2f}" in e["note"]
    # the teachers and students trained alone on ImageNet, per pair (top-5 unknown: null, not a guess)
    imnet = paper["imagenet"]
    assert {p: (d["teacher"]["top1"], d["student"]["top1"]) for p, d in imnet.items()} == {
        "ResNet34->ResNet18": (73.31, 69.76), "ResNet50->MobileNetV1": (76.16, 68.87)}
    assert all(d[m]["top5"] is None and d[m]["source"] for d in imnet.values() for m in ("teacher", "student"))


# ----------------------------------------------------------------------------- the tables' notes

def _row(tid, typ, teacher, student, best, stage="search", role=None, dataset="cifar100"):
    return {"trial_id": tid, "study": "x", "stage": stage, "seed": 0, "DISTILLER.TYPE": typ,
            "DISTILLER.TEACHER": teacher, "DISTILLER.STUDENT": student, "DATASET.TYPE": dataset,
            "EXPERIMENT.SEED": 0 if stage == "search" else 10, **({"role": role} if role else {}),
            "status": "finished", "epochs_done": 2, "epochs_budget": 2, "best_val_acc": None,
            "best_test_acc": best, "last_test_acc": best, "last_val_acc": None, "test_acc_at_best_val": None,
            "wall_seconds": 1.0, "trial_dir": f"/nowhere/{tid}"}


def _study(path: Path, name: str, trials: list[dict]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "study.yaml").write_text(yaml.safe_dump({
        "name": name, "base": "x", "search": {"algorithm": "grid"}, "scheduler": {"type": "fifo"},
        "metric": "test_acc", "mode": "max", "seeds": [0]}))
    pq.write_table(pa.Table.from_pylist(trials), path / "trials.parquet")
    pq.write_table(pa.Table.from_pylist([{"trial_id": t["trial_id"], "study": "x", "stage": t["stage"], "seed": 0,
                                          "epoch": 1, "test_acc": t["best_test_acc"]} for t in trials]),
                   path / "results.parquet")
    return path


def _disagreement(notes: list[str], start: str) -> str:
    found = [n for n in notes if n.startswith(start)]
    assert len(found) == 1, notes
    return found[0]


def test_main_results_notes_name_both_numbers_where_sources_disagree(tmp_path):
    d = _study(tmp_path / "m", "main_results", [_row("k", "KD", "ResNet50", "MobileNetV2", 67.0),
                                                _row("c", "CAT_KD", "ResNet50", "MobileNetV2", 71.0)])
    t = tables.build(load(d))[0]
    note = _disagreement(t.notes, "KD ResNet50->MobileNetV2: published 67.35 — sources disagree:")
    assert "67.35 from MDistiller / RepDistiller vs 67.65 from KD++" in note and "the table shows 67.35" in note
    assert next(r for r in t.rows if r[1] == "KD")[2] == "67.00 (1) / 67.35 (-0.35)"  # the shown number
    assert not any("CAT-KD ResNet50" in n for n in t.notes)  # an entry without note or disagreement: no line


def test_imagenet_notes_name_both_numbers_where_sources_disagree(tmp_path):
    d = _study(tmp_path / "i", "imagenet", [_row("r", "REVIEWKD", "ResNet34", "ResNet18", 71.0, dataset="imagenet")])
    note = _disagreement(tables.build(load(d))[0].notes, "ReviewKD ResNet34->ResNet18: published 71.61 — sources disagree:")
    assert "71.61 from Papers with Code" in note and "vs 71.62 from KD++" in note and "the table shows 71.61" in note


def test_tuned_baselines_notes_name_both_numbers_where_sources_disagree(tmp_path):
    pair = ("ResNet50", "MobileNetV2")
    d = _study(tmp_path / "t", "tuned_baselines", [
        _row("ks", "KD", *pair, 66.0), _row("kt", "KD", *pair, 67.0, stage="confirm", role="tuned"),
        _row("kp", "KD", *pair, 66.5, stage="confirm", role="preset")])
    t = tables.build(load(d))[0]
    assert t.name == "tuned_baselines" and t.rows[0][5] == "67.35"
    note = _disagreement(t.notes, "KD ResNet50->MobileNetV2: published 67.35 — sources disagree:")
    assert "vs 67.65 from KD++" in note
