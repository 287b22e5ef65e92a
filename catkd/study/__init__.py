"""Hyperparameter studies of CAT / CAT-KD on Ray Tune: `python -m catkd.study STUDY.yaml`."""
