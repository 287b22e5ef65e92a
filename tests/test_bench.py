"""catkd.bench: the command line, the JSON record of a run, and docs/benchmarks.md's generated figures.

No test here times anything: benches measure, they do not assert.
"""
from __future__ import annotations

import ast
import datetime as dt
import json
import os
import subprocess
from pathlib import Path

import pytest

from catkd.bench import cli, docs, record

NAMES = ["step", "pipeline", "study", "cache", "all", "estimate", "asha", "gpu", "storage"]
BENCH_DIR = Path(cli.__file__).parent


# ---- the command line -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", [*NAMES, "docs"])
def test_every_bench_name_parses(name):
    args = cli.build_parser().parse_args([name])
    assert args.name == name and args.quick is False and args.out is None


def test_the_choices_are_the_benches_and_docs():
    (action,) = [a for a in cli.build_parser()._actions if a.dest == "name"]
    assert sorted(action.choices) == sorted([*NAMES, "docs"])
    assert set(cli.BENCHES) == {"step", "pipeline", "study", "cache"}  # what `all` runs


@pytest.mark.parametrize("argv", [["study", "--quick"], ["cache", "--quick"], ["asha", "--quick"],
                                  ["all", "--quick"], ["step", "--check"], ["step", "--note", "x"],
                                  ["nope"]])
def test_options_a_bench_does_not_have_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


def test_quick_step_prints_its_figures_and_writes_a_record(tmp_path, capsys, monkeypatch):
    from catkd.bench import step

    monkeypatch.setattr(step, "PAIRS", {"cpu": ("resnet8", "resnet8"), "cuda": ("resnet8", "resnet8")})  # test time
    out = tmp_path / "sub" / "step.json"
    assert cli.main(["step", "--quick", "--out", str(out), "--note", "a test"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-2])  # last: "figures written to"
    rec = json.loads(out.read_text())
    assert rec["bench"] == "step"
    assert {"catkd_step_ms", "floor_step_ms", "catkd_over_floor", "device", "threads"} <= set(rec["figures"])
    assert set(printed) == set(rec["figures"])
    assert rec["figures"]["catkd_over_floor"] == pytest.approx(
        rec["figures"]["catkd_step_ms"] / rec["figures"]["floor_step_ms"])
    assert rec["args"] == {"quick": True, "device": rec["figures"]["device"], "distiller": None}
    assert rec["note"] == "a test" and rec["wall_s"] > 0
    assert_record_context(rec)
    assert [p.name for p in out.parent.iterdir()] == ["step.json"]  # no temporary file left


def test_quick_step_of_named_methods_times_each_against_its_floor(capsys, monkeypatch):
    from catkd.bench import step

    monkeypatch.setattr(step, "PAIRS", {"cpu": ("resnet8", "resnet8"), "cuda": ("resnet8", "resnet8")})  # test time
    figures = step.run("cpu", quick=True, distiller="CRD")
    assert set(figures) == {"CRD_step_ms", "CRD_floor_ms", "CRD_over_floor", "CRD_extra_parameters"}
    assert figures["CRD_over_floor"] == pytest.approx(figures["CRD_step_ms"] / figures["CRD_floor_ms"])
    assert figures["CRD_extra_parameters"] > 2 * 50_000 * 128  # the memory bank is counted, as MDistiller
    assert step.GOALS["CRD_over_floor"] == ("<=", 1.10)
    assert "step CRD: resnet8->resnet8" in capsys.readouterr().out


def test_quick_pipeline_measures_both_sides():
    from catkd.bench import pipeline

    f = pipeline.run(quick=True)
    assert f["speedup_vs_pil"] == pytest.approx(f["ours_images_per_s"] / f["pil_images_per_s"])
    assert f["ours_images_per_s"] > 0 and f["pil_images_per_s"] > 0


# ---- the benches' pieces on tiny inputs: they still fit the code they measure ------------------------
def test_cache_bench_step_and_store_dtype_run_on_tiny_models(tmp_path):
    import torch

    from catkd.bench import cache
    from catkd.models import build_model

    f = cache.bench_cached_step(repeats=1, teacher="resnet8", student="resnet8")
    assert f["cached_step_over_student_step"] == pytest.approx(f["cached_step_ms"] / f["student_step_ms"])
    assert f["live_step_over_student_step"] == pytest.approx(f["live_step_ms"] / f["student_step_ms"])
    cfg = cache.smoke_cfg("unused", str(tmp_path))  # the smoke study's teacher, randomly initialised
    ckpt = tmp_path / "teacher.pth"
    torch.save({"model": build_model(cfg.DISTILLER.TEACHER, cfg.DATASET.SYNTHETIC.NUM_CLASSES).state_dict()}, ckpt)
    d = cache.bench_store_dtype(str(ckpt), steps=1)
    assert set(d) == {f"loss_rel_diff_{t}_{s}" for t in ("fp16", "bf16") for s in ("median", "max")}
    assert all(0 <= v < float("inf") for v in d.values())


def test_real_scale_fraction_is_distinct_draws_over_forwards():
    from catkd.bench import cache

    f = cache.bench_real_fraction()  # the loader's draws only: no images, no training
    assert 0 < f["real_distinct_pairs"] <= f["real_forwards_without_cache"]
    assert f["teacher_forward_fraction_real"] == pytest.approx(f["real_distinct_pairs"] / f["real_forwards_without_cache"])


def test_the_asha_bench_study_is_a_valid_study_sweeping_the_key_it_reads(tmp_path):
    from catkd.bench.asha import ASHA_STUDY
    from catkd.study.load import load_study

    path = tmp_path / "asha.yaml"
    path.write_text(ASHA_STUDY.format(betas=[1.0, 10.0], scheduler="asha", epochs=3, rf=4))
    spec = load_study(str(path), smoke=True)
    assert list(spec.space) == ["CAT_KD.LOSS.CAT_loss_weight"]  # the results column bench_asha reads
    assert spec.fixed["DATASET.VAL_SIZE"] == 2000


# ---- the record -----------------------------------------------------------------------------------
def assert_record_context(rec: dict) -> None:
    date = dt.datetime.fromisoformat(rec["date"])
    assert date.utcoffset() == dt.timedelta(0)
    m = rec["machine"]
    assert m["cpu_cores"] == os.cpu_count()
    assert m["platform"] and m["torch"]
    assert m["device"] == "cpu" or m["device"]  # the CUDA device's name where there is one
    assert len(m["load_average_1_5_15min"]) == len(m["load_average_1_5_15min_at_end"]) == 3
    assert "commit" in rec


def test_a_record_holds_bench_figures_date_machine_commit_and_args(tmp_path):
    import torch

    ctx = record.context(cwd=tmp_path)
    rec = record.make_record("pipeline", {"speedup_vs_pil": 21.5}, {"quick": False}, ctx, wall_s=12.34)
    assert rec["bench"] == "pipeline" and rec["figures"] == {"speedup_vs_pil": 21.5}
    assert rec["args"] == {"quick": False} and rec["wall_s"] == 12.3
    assert rec["machine"]["torch"] == torch.__version__
    assert rec["machine"]["device"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
    assert rec["commit"] is None  # tmp_path is no git checkout
    assert "note" not in rec
    assert_record_context(rec)
    path = record.write_record(tmp_path / "r.json", rec)
    assert json.loads(path.read_text()) == rec


def test_write_record_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "step.json"
    record.write_record(path, {"bench": "old"})

    def fail(*a, **k):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", fail)  # dies between writing the new file and renaming it
    with pytest.raises(OSError):
        record.write_record(path, {"bench": "new"})
    assert json.loads(path.read_text()) == {"bench": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["step.json"]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_commit_is_the_short_hash_and_dirty_only_for_tracked_changes(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    assert record.git_commit(repo) is None  # no commit yet
    (repo / "a.txt").write_text("1")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-q", "-m", "one")
    short = _git(repo, "rev-parse", "--short", "HEAD")
    assert record.git_commit(repo) == short
    (repo / "untracked.txt").write_text("x")  # untracked files do not change the code that ran
    assert record.git_commit(repo) == short
    (repo / "a.txt").write_text("2")
    assert record.git_commit(repo) == short + "+dirty"
    _git(repo, "add", "a.txt")  # staged counts too
    assert record.git_commit(repo) == short + "+dirty"


def test_commit_outside_a_git_checkout_is_none(tmp_path):
    assert record.git_commit(tmp_path) is None
    assert record.git_commit(tmp_path / "missing") is None


# ---- docs/benchmarks.md ---------------------------------------------------------------------------
def test_the_page_shows_what_the_records_hold_now():
    """If this fails: `python -m catkd.bench docs` (after writing a record with --out)."""
    assert docs.current() == docs.render().strip("\n")
    assert cli.main(["docs", "--check"]) == 0


def test_every_record_of_the_repository_is_complete():
    recs = docs.load_records()
    assert recs, "docs/benchmarks/ holds no record"
    for fname, rec in recs:
        # one record per bench, or per variant of its options (step-distillers.json: step --distiller all)
        assert fname == f"{rec['bench']}.json" or fname.startswith(f"{rec['bench']}-"), fname
        assert {"bench", "figures", "date", "machine", "commit", "args"} <= set(rec)
        assert isinstance(rec["args"]["quick"], bool)
        assert dt.datetime.fromisoformat(rec["date"]).utcoffset() == dt.timedelta(0)
        assert {"cpu_cores", "platform", "torch", "device"} <= set(rec["machine"])


def _rec(bench: str, figures: dict, **over) -> dict:
    return {"bench": bench, "figures": figures, "date": "2026-01-02T03:04:05+00:00",
            "machine": {"cpu_cores": 2, "platform": "Linux-x", "torch": "2.0", "device": "cpu",
                        "load_average_1_5_15min": [1.5, 1.0, 0.5],
                        "load_average_1_5_15min_at_end": [2.0, 1.1, 0.6]},
            "commit": "abc1234+dirty", "args": {"quick": False}, "wall_s": 9.0, **over}


def test_render_a_table_per_bench_with_goals_and_the_benches_not_recorded(tmp_path):
    (tmp_path / "pipeline.json").write_text(json.dumps(_rec("pipeline", {
        "ours_images_per_s": 250000.4, "speedup_vs_pil": 19.3})))
    (tmp_path / "step.json").write_text(json.dumps(_rec("step", {"catkd_over_floor": 1.0163, "threads": 2},
                                                        args={"quick": True, "device": "cpu"}, commit=None,
                                                        note="shared machine")))
    text = docs.render(tmp_path)
    assert text.index("### Figures of `step`") < text.index("### Figures of `pipeline`")  # the page's bench order
    assert "| `catkd_over_floor` | 1.0163 | ≤ 1.05: met |" in text
    assert "| `speedup_vs_pil` | 19.30 | ≥ 20: **missed** |" in text
    assert "| `ours_images_per_s` | 250,000 |  |" in text
    assert "| `threads` | 2 |  |" in text
    assert "- run: `python -m catkd.bench step --quick --device cpu` (quick mode, 9 s)" in text
    assert "- run: `python -m catkd.bench pipeline` (full mode, 9 s)" in text
    assert "2026-01-02T03:04:05+00:00" in text and "commit: `abc1234+dirty`" in text
    assert "not a git checkout" in text and "note: shared machine" in text
    assert "load average (1 / 5 / 15 min) 1.5 / 1.0 / 0.5 at the start, 2.0 / 1.1 / 0.6 at the end" in text
    assert "No figures recorded yet for: `study`, `cache`, `estimate`, `asha`, `gpu`" in text


def test_update_rewrites_only_between_the_markers(tmp_path):
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "step.json").write_text(json.dumps(_rec("step", {"catkd_over_floor": 1.2})))
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# Title\n\nhand-written\n\n{docs.BEGIN}\nold figures\n{docs.END}\n\nafter\n")
    assert not docs.is_current(page, tmp_path / "rec")
    assert docs.update(page, tmp_path / "rec") is True
    text = page.read_text()
    assert text.startswith("# Title\n\nhand-written\n\n" + docs.BEGIN + "\n")
    assert text.endswith(docs.END + "\n\nafter\n") and "old figures" not in text
    assert "| `catkd_over_floor` | 1.2000 | ≤ 1.05: **missed** |" in text
    assert docs.is_current(page, tmp_path / "rec")
    assert docs.update(page, tmp_path / "rec") is False  # idempotent


@pytest.mark.parametrize("body", ["no markers", f"{docs.END}\n{docs.BEGIN}", f"{docs.BEGIN}\n{docs.BEGIN}\n{docs.END}"])
def test_a_page_without_one_pair_of_markers_is_refused(tmp_path, body):
    page = tmp_path / "p.md"
    page.write_text(body)
    with pytest.raises(ValueError, match="marker|expected"):
        docs.update(page, tmp_path)


# ---- the package's shape --------------------------------------------------------------------------
def test_bench_modules_import_each_other_without_a_cycle():
    graph: dict[str, set[str]] = {}
    for path in BENCH_DIR.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "catkd.bench":
                    deps |= {a.name for a in node.names}
                elif node.module.startswith("catkd.bench."):
                    deps.add(node.module.split(".")[2])
        graph[path.stem] = deps

    def visit(mod: str, stack: tuple[str, ...]) -> None:
        assert mod not in stack, f"import cycle: {' -> '.join((*stack, mod))}"
        for dep in graph.get(mod, ()):
            visit(dep, (*stack, mod))

    for mod in graph:
        visit(mod, ())
    assert graph["common"] == set()  # what the benches share depends on none of them
    assert not [m for m, deps in graph.items() if "cli" in deps and m != "__main__"]
