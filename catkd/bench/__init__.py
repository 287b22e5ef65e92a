"""Benchmarks: `python -m catkd.bench {step,pipeline,study,cache,all,estimate,asha,gpu} [--quick] [--out FILE.json]`.

The machines these run on are shared and noisy, so every figure is a ratio of two things timed
interleaved in the same process, as the median of repeats. Nothing here asserts a time. One module
per bench (each declares its figures' GOALS); `common` holds what they share, `record` the JSON
record of a run, `docs` the generated figures of docs/benchmarks.md; what each measures:
docs/benchmarks.md.
"""
