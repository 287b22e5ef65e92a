"""Hyperparameter studies of CAT / CAT-KD on Ray Tune: `python -m catkd.study STUDY.yaml`, or from
Python `catkd.study.run("studies/beta_sweep.yaml", smoke=True)` -> the experiment directory."""
from catkd.study.api import run

__all__ = ["run"]
