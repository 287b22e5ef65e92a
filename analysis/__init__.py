"""Reports of catkd studies: `python analysis/report.py EXPERIMENT_DIR` (tables, plots, importance)."""
