"""The partial-CAM figure (analysis/layouts/partial_cams.py `figure_data`, analysis/plots.py
`partial_cams_plot`): top-1 against n, top-n and lowest-n as two lines (mean over seeds with a 95 %
Student t interval), the all-classes run as a horizontal reference line with its band; embedded in
report.md. Built from a fabricated finished study (no training)."""
from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from analysis import cells, plots, report, tables
from analysis.layouts.partial_cams import figure_data
from analysis.load import load

P, N, S = "CAT_KD.IF_OnlyTransferPartialCAMs", "CAT_KD.CAMs_Nums", "CAT_KD.Strategy"
# t_{0.975, df} from a printed t table, not from the code under test
T975 = {1: 12.706205, 2: 4.302653}

# (strategy, n, best-test top-1 per seed): None = all classes' CAMs; strategy 0 = top-n, 1 = lowest-n
RUNS = [
    (None, 100, [75.0, 76.0, 77.0]),
    (0, 10, [70.0, 72.0, 74.0]), (0, 25, [71.0, 72.0, 73.0]), (0, 50, [73.0, 74.0, 75.0]),
    (0, 75, [74.0, 75.0, 76.0]),
    (1, 75, [72.0, 73.0, 74.0]), (1, 10, [68.0, 69.0, 70.0]), (1, 25, [69.0, 70.0]),  # one seed missing
    (1, 50, [71.0]),                                                                   # one seed only
]


def _trials(runs=RUNS, smoke=False):
    rows = []
    for strategy, n, values in runs:
        for seed, v in enumerate(values):
            tid = f"{'all' if strategy is None else strategy}_{n}_{seed}"
            rows.append({
                "trial_id": tid, "study": "partial_cams", "stage": "search", "seed": seed,
                "DISTILLER.TYPE": "CAT_KD", "DISTILLER.TEACHER": "resnet32x4", "DISTILLER.STUDENT": "resnet8x4",
                "CAT_KD.onlyCAT": True, P: strategy is not None, N: n, S: 0 if strategy is None else strategy,
                "DATASET.TYPE": "synthetic" if smoke else "cifar100",
                **({"DATASET.SYNTHETIC.NUM_CLASSES": 10} if smoke else {}),
                "EXPERIMENT.SEED": seed, "status": "finished", "epochs_done": 2, "epochs_budget": 2,
                "best_val_acc": None, "best_test_acc": v, "last_test_acc": v - 10.0, "last_val_acc": None,
                "test_acc_at_best_val": None, "wall_seconds": 1.0, "trial_dir": f"/nowhere/{tid}"})
    return rows


def _study(path: Path, runs=RUNS, smoke=False) -> Path:
    trials = _trials(runs, smoke)
    spec = {"name": "partial_cams", "base": "x", "search": {"algorithm": "grid"}, "scheduler": {"type": "fifo"},
            "metric": "test_acc", "mode": "max", "seeds": [0, 1, 2],
            "space": [{"partial_cams": {"grid": [False]}},
                      {"partial_cams": {"grid": [True]}, "cam_strategy": {"grid": ["top", "lowest"]},
                       "cam_count": {"grid": [10, 25, 50, 75]}}]}
    if smoke:
        spec["smoke_mode"] = True
    path.mkdir(parents=True, exist_ok=True)
    (path / "study.yaml").write_text(yaml.safe_dump(spec))
    pq.write_table(pa.Table.from_pylist(trials), path / "trials.parquet")
    epochs = [{"trial_id": t["trial_id"], "study": t["study"], "stage": t["stage"], "seed": t["seed"], "epoch": ep,
               "test_acc": t["best_test_acc"] - (2 - ep)} for t in trials for ep in (1, 2)]
    pq.write_table(pa.Table.from_pylist(epochs), path / "results.parquet")
    return path


def _half(values):
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return T975[n - 1] * std / math.sqrt(n)


def test_t_interval_half_width_is_t_times_std_over_sqrt_n():
    mean, half, n = cells.t_interval([70.0, 72.0, 74.0])
    assert (mean, n) == (72.0, 3) and half == pytest.approx(4.302653 * 2.0 / math.sqrt(3), abs=1e-5)
    assert cells.t_interval([69.0, 70.0])[1] == pytest.approx(12.706205 * math.sqrt(0.5) / math.sqrt(2), abs=1e-5)
    assert cells.t_interval([71.0]) == (71.0, None, 1)  # one seed: no interval
    assert cells.t_interval([float("nan"), 71.0]) == (71.0, None, 1)
    assert cells.t_interval([]) == (None, None, 0)


def test_figure_lines_are_top_n_and_lowest_n_against_n_with_mean_and_t_interval_over_seeds(tmp_path):
    fig = figure_data(load(_study(tmp_path / "pc")), "best-test")
    assert list(fig.lines) == ["top-n", "lowest-n"] and fig.classes == 100
    top, low = fig.lines["top-n"], fig.lines["lowest-n"]
    assert [n for n, _ in top] == [10, 25, 50, 75] and [n for n, _ in low] == [10, 25, 50, 75]  # n ascending
    assert [p.mean for _, p in top] == pytest.approx([72.0, 72.0, 74.0, 75.0])
    assert [p.mean for _, p in low] == pytest.approx([69.0, 69.5, 71.0, 73.0])
    assert [p.seeds for _, p in low] == [3, 2, 1, 3]
    assert top[0][1].half == pytest.approx(_half([70.0, 72.0, 74.0]), abs=1e-5)  # 4.9683
    assert top[0][1].half == pytest.approx(4.96827, abs=1e-4)
    assert low[1][1].half == pytest.approx(_half([69.0, 70.0]), abs=1e-5)     # 2 seeds: t with 1 df
    assert low[2][1].half is None                                              # 1 seed: no interval
    # the all-classes run: the reference line, with its own band
    assert fig.reference.mean == pytest.approx(76.0) and fig.reference.seeds == 3
    assert fig.reference.half == pytest.approx(_half([75.0, 76.0, 77.0]), abs=1e-5)


def test_figure_reads_the_reports_value_column(tmp_path):
    fig = figure_data(load(_study(tmp_path / "pc")), "last")  # last_test_acc = best - 10
    assert [p.mean for _, p in fig.lines["top-n"]] == pytest.approx([62.0, 62.0, 64.0, 65.0])
    assert fig.reference.mean == pytest.approx(66.0)


def _drawn(monkeypatch, study, epoch):
    """The figure partial_cams_plot draws (its axes), instead of a PNG on disk."""
    got = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: (got.update(fig=fig), path)[1])
    assert plots.partial_cams_plot(study, Path("unused.png"), epoch) is not None
    return got["fig"].axes[0]


def test_plot_draws_the_two_lines_the_reference_and_its_band_with_labels(tmp_path, monkeypatch):
    study = load(_study(tmp_path / "pc"))
    ax = _drawn(monkeypatch, study, "best-test")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0].startswith("all 100 classes (3 seeds)") and "95 % CI" in legend[0]
    assert legend[1].startswith("top-n: the n top-scoring classes (3 seeds)")
    assert legend[2].startswith("lowest-n: the n lowest-scoring classes (1-3 seeds)")
    assert "95 % Student t interval" in ax.get_legend().get_title().get_text()
    assert "(n=1) has none" in ax.get_legend().get_title().get_text()
    # the two lines, nudged apart sideways by less than a unit of n so that their intervals do not overlap
    drawn = [(c.lines[0].get_xdata(), list(c.lines[0].get_ydata())) for c in ax.containers]  # the errorbars
    assert [y for _, y in drawn] == [[72.0, 72.0, 74.0, 75.0], [69.0, 69.5, 71.0, 73.0]]
    assert all(list(x) == pytest.approx([10, 25, 50, 75], abs=1.0) for x, _ in drawn)
    assert drawn[0][0][0] < drawn[1][0][0]
    bars = ax.containers[1].lines[2][0].get_segments()  # lowest-n's interval bars
    assert bars[1][:, 1] == pytest.approx([69.5 - _half([69.0, 70.0]), 69.5 + _half([69.0, 70.0])])
    assert bars[2][0, 1] == bars[2][1, 1] == 71.0  # one seed: no interval (zero length)
    ref = [l for l in ax.get_lines() if list(l.get_ydata()) == [76.0, 76.0]]
    assert ref, "the all-classes reference line"
    band = ax.patches[0]  # the shaded 95 % band of the reference (a Rectangle, y in data units)
    half = _half([75.0, 76.0, 77.0])
    assert (band.get_y(), band.get_y() + band.get_height()) == pytest.approx((76.0 - half, 76.0 + half), abs=1e-6)
    assert "n" in ax.get_xlabel() and "transferred" in ax.get_xlabel()
    assert ax.get_ylabel() == "top-1 %"
    assert ax.get_title().startswith("partial_cams: top-1 vs the number of transferred CAMs\n")
    assert "best TEST epoch" in ax.get_title()  # which epoch: the report's rule
    assert list(ax.get_xticks()) == [10, 25, 50, 75]


def test_smoke_figure_is_marked_and_says_one_seed_has_no_interval(tmp_path, monkeypatch):
    runs = [(None, 10, [20.0]), (0, 3, [10.0]), (1, 3, [15.0])]
    study = load(_study(tmp_path / "sm", runs, smoke=True))
    fig = figure_data(study, "best-test")
    assert fig.classes == 10 and fig.reference.half is None
    ax = _drawn(monkeypatch, study, "best-test")
    assert "SYNTHETIC/SMOKE" in ax.get_title()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert all("1 seed (n=1): no interval" in t for t in legend) and legend[0].startswith("all 10 classes")
    assert not ax.patches  # no band without an interval


def test_all_plots_draws_it_for_partial_cams_and_report_md_embeds_it(tmp_path):
    d = _study(tmp_path / "pc")
    made = plots.all_plots(load(d), tmp_path / "png")
    png = tmp_path / "png" / "accuracy_vs_n.png"
    assert png in made and png.stat().st_size > 1024
    md = report(d, out=tmp_path / "rep")
    text = md.read_text()
    assert "![accuracy vs n](accuracy_vs_n.png)" in text and (tmp_path / "rep" / "accuracy_vs_n.png").exists()
    assert "72.00 ± 2.00 (3)" in text  # the table is still there, the same values as the figure's top-n n = 10
    assert "accuracy_vs_n" not in tables.render(tables.build(load(d)), "md")  # tables know no plots


def test_no_figure_for_other_layouts(tmp_path):
    d = _study(tmp_path / "pc")
    spec = yaml.safe_load((d / "study.yaml").read_text())
    (d / "study.yaml").write_text(yaml.safe_dump({**spec, "name": "something_else", "report": "generic"}))
    assert not any(p.name == "accuracy_vs_n.png" for p in plots.all_plots(load(d), tmp_path / "png"))
