"""Report of one study: its table(s), plots and parameter importance.

    python analysis/report.py EXPERIMENT_DIR [--format md|latex|csv] [--out DIR] [--epoch auto|best-val|best-test|last]
    python analysis/report.py EXPERIMENT_DIR --cams [--trial TRIAL_ID] [--images 6] [--out DIR]

Reads EXPERIMENT_DIR/study.yaml, results.parquet and trials.parquet (or, when the Parquet files
are missing, Tune's per-trial result.json / params.json). Writes into --out (default
EXPERIMENT_DIR/report): report.md | report.tex | one CSV per table, plus PNG plots.
--cams draws only the teacher/student CAM picture of one trial, cams_<trial_id>.png (analysis/cams.py).
Exit 0 on success, 2 when EXPERIMENT_DIR is not a study's experiment directory (or, with --cams,
when no trial has a checkpoint or the teacher file is missing).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from analysis import importance as imp_mod  # `analysis` is installed with catkd (pip install -e .)
from analysis import plots, tables
from analysis.load import NotAStudy, load

EXIT_NOT_A_STUDY = 2


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="analysis/report.py", description=__doc__.split("\n\n")[0])
    p.add_argument("experiment_dir", help="a study's experiment directory (results/<study>)")
    p.add_argument("--format", choices=("md", "latex", "csv"), default="md")
    p.add_argument("--out", default=None, help="output folder (default EXPERIMENT_DIR/report)")
    p.add_argument("--epoch", choices=("auto", "best-val", "best-test", "last"), default="auto",
                   help="which epoch's test top-1 a cell shows: auto (default) = at the best-validation "
                        "epoch when the study has a validation split, else best-test (the paper's "
                        "convention, labelled) with the last epoch beside it; best-val; best-test; last")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--cams", action="store_true",
                   help="only draw teacher/student CAMs of the best (or --trial) trial: cams_<trial>.png")
    p.add_argument("--trial", default=None, help="with --cams: the trial id (default: best finished trial)")
    p.add_argument("--images", type=int, default=6, help="with --cams: first N test images (default 6)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        study = load(args.experiment_dir)
    except NotAStudy as exc:
        print(f"report: {exc}", file=sys.stderr)
        return EXIT_NOT_A_STUDY
    out = Path(args.out) if args.out else study.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    if args.cams:
        from analysis.cams import CamError, cams_report

        try:
            print(f"wrote {cams_report(study, out, args.trial, args.images)}")
        except CamError as exc:
            print(f"report: {exc}", file=sys.stderr)
            return EXIT_NOT_A_STUDY
        return 0

    try:
        mode = tables.resolve_epoch(study, args.epoch)
    except ValueError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return EXIT_NOT_A_STUDY
    tbls = tables.build(study, args.epoch)
    png: list[Path] = []
    imp, notes = {}, []
    if (study.spec.get("search") or {}).get("algorithm") in ("optuna", "random"):
        imp, notes = imp_mod.importances(study)
        t = imp_mod.table(study, imp, notes)
        if t is not None:
            tbls.append(t)
    if not args.no_plots:
        png = plots.all_plots(study, out, mode)
        bar = plots.importance_bar(imp, study, out / "importance.png")
        if bar:
            png.append(bar)

    if args.format == "csv":
        for t in tbls:
            path = out / f"{t.name}.csv"
            path.write_text(tables.csv_text(t), newline="")
            print(f"wrote {path}")
    else:
        text = tables.render(tbls, args.format)
        path = out / ("report.md" if args.format == "md" else "report.tex")
        path.write_text(text)
        print(text)
        print(f"wrote {path}")
    for p in png:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # output piped into `head`
        sys.exit(0)
