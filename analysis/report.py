"""Report of one study: its table(s), plots and parameter importance.

    python analysis/report.py EXPERIMENT_DIR [--format md|latex|csv] [--out DIR] [--epoch auto|best-val|best-test|last]
    python analysis/report.py EXPERIMENT_DIR --cams [--trial TRIAL_ID] [--images 6] [--out DIR]

Reads EXPERIMENT_DIR/study.yaml, results.parquet and trials.parquet (or, when the Parquet files
are missing, Tune's per-trial result.json / params.json). Writes into --out (default
EXPERIMENT_DIR/report): report.md | report.tex | one CSV per table, plus PNG plots.
EXPERIMENT_DIR (and --out) may be an object-storage URI, s3://bucket/prefix/<experiment>: the
report reads the experiment there and, by default, writes into <experiment URI>/report.
--cams draws only the teacher/student CAM picture of one trial, cams_<trial_id>.png (analysis/cams.py).
Exit 0 on success, 2 when EXPERIMENT_DIR is not a study's experiment directory (or, with --cams,
when no trial has a checkpoint or the teacher file is missing).
"""
from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path
from typing import Optional, Sequence, Union

from analysis import importance as imp_mod  # `analysis` is installed with catkd (pip install -e .)
from analysis import plots as plot_mod
from analysis import tables
from analysis.load import NotAStudy, load
from catkd.fsutil import atomic_write_text
from catkd.storage import StorageError

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


def report(experiment_dir: Union[str, Path], out: Union[str, Path, None] = None, format: str = "md",
           epoch: str = "auto", plots: bool = True, echo: bool = False) -> Path:
    """Write a study's report (tables, plots, parameter importance) into `out` (default
    EXPERIMENT_DIR/report); returns report.md / report.tex (the folder of CSVs for format="csv").

    Raises NotAStudy for a directory that is not a study's, ValueError for an epoch rule the study
    cannot use. echo=True also prints the text and every file written (what the command shows)."""
    study = load(experiment_dir)
    try:
        return _report(study, out, format, epoch, plots, echo)
    finally:
        study.close()


def _report(study, out, format: str, epoch: str, plots: bool, echo: bool):
    mode = tables.resolve_epoch(study, epoch)
    out, put = _out_dir(study, out)
    tbls = tables.build(study, epoch)
    png: list[Path] = []
    imp, notes = {}, []
    if (study.spec.get("search") or {}).get("algorithm") in ("optuna", "random"):
        imp, notes = imp_mod.importances(study)
        t = imp_mod.table(study, imp, notes)
        if t is not None:
            tbls.append(t)
    if plots:
        png = plot_mod.all_plots(study, out, mode)
        bar = plot_mod.importance_bar(imp, study, out / "importance.png")
        if bar:
            png.append(bar)
    written: list[Path] = []
    if format == "csv":
        for t in tbls:
            path = out / f"{t.name}.csv"
            atomic_write_text(path, tables.csv_text(t))
            written.append(path)
        result = out
    else:
        text = tables.render(tbls, format)
        if format == "md" and png:
            text += _figures_md(png, out)
        result = out / ("report.md" if format == "md" else "report.tex")
        atomic_write_text(result, text)
        written.append(result)
        if echo:
            print(text)
    if put is not None:  # the report's own folder in object storage: each file one put
        try:
            put.push()
        finally:
            put.remove_local()
        shown = lambda p: f"{put.remote.uri}/{Path(p).relative_to(out).as_posix()}"  # noqa: E731
    else:
        shown = str
    if echo:
        for p in [*written, *png]:
            print(f"wrote {shown(p)}")
    return shown(result) if put is not None else result


def _figures_md(png: list[Path], out: Path) -> str:
    """The plots embedded in report.md, by their paths relative to it (the report's folder)."""
    lines = [f"![{p.stem.replace('_', ' ')}]({Path(p).relative_to(out).as_posix()})" for p in png]
    return "\n## Figures\n\n" + "\n\n".join(lines) + "\n"


def _out_dir(study, out):
    """The local folder the report is drawn in, and the Mirror that puts it in object storage (when
    --out is a URI, or by default for a study read from one: <experiment URI>/report)."""
    from catkd.storage import Mirror, is_uri, location, scratch_dir

    target = str(out) if out else (f"{study.uri}/report" if study.uri else str(study.path / "report"))
    if is_uri(target):
        put = Mirror(scratch_dir("report-out"), location(target))
        return put.local, put
    path = Path(target)
    path.mkdir(parents=True, exist_ok=True)
    return path, None


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        if not args.cams:
            report(args.experiment_dir, args.out, args.format, args.epoch, plots=not args.no_plots, echo=True)
            return 0
        study = load(args.experiment_dir, checkpoints=True)
        out, put = _out_dir(study, args.out)
    except (NotAStudy, ValueError, StorageError) as exc:
        print(f"report: {exc}", file=sys.stderr)
        return EXIT_NOT_A_STUDY
    from analysis.cams import CamError, cams_report

    try:
        png = cams_report(study, out, args.trial, args.images)
        if put is not None:
            put.push()
            png = f"{put.remote.uri}/{Path(png).relative_to(out).as_posix()}"
    except CamError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return EXIT_NOT_A_STUDY
    finally:
        study.close()
        if put is not None:
            put.remove_local()
    print(f"wrote {png}")
    return 0


class _CallableModule(types.ModuleType):
    """`analysis.report(exp, out=...)` is the report function, even once this module has been
    imported as `analysis.report` (an import binds the module to that name in the package)."""

    def __call__(self, *args, **kwargs) -> Path:
        return report(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # output piped into `head`
        sys.exit(0)
