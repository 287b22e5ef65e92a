"""Reports of catkd studies: `python analysis/report.py EXPERIMENT_DIR`, or from Python

    study = analysis.load(exp)            # study.trials, study.results: DataFrames, settings by dotted key
    analysis.report(exp, out="report/")   # report.md and its plots; returns the report's path
"""
from analysis import report  # noqa: F401  (a callable module: analysis.report(exp, out=...))
from analysis.load import NotAStudy, Study, load

__all__ = ["NotAStudy", "Study", "load", "report"]
