"""The command line: `python -m catkd.bench NAME [--quick] [--out FILE.json]`, and `docs`.

Each bench prints readable lines and, last, one JSON object of its named figures; `--out` also writes
them as a record (date, machine, commit, options) that docs/benchmarks.md is generated from.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from catkd.bench import asha, cache, estimate, gpu, pipeline, record, step, storage, study

BENCHES = ("step", "pipeline", "study", "cache")  # `all` runs these
# not part of `all`: gpu needs a CUDA device; asha (a grid and three ASHA orders, ~25 min on 2 cores)
# would take `all` past its 25-minute budget; storage needs an S3 endpoint (or moto, a test dependency)
EXTRA = ("gpu", "asha", "estimate", "storage")
QUICK = ("step", "pipeline", "gpu")  # the benches with a --quick mode
OPTIONS = {"step": ("device", "distiller"), "pipeline": ("dataset",), "all": ("device", "rounds"), "cache": ("rounds",), "storage": ("rounds",), "asha": ("asha_points", "asha_rf")}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m catkd.bench",
                                 description="Benchmarks: ratios of things measured side by side in one run.")
    ap.add_argument("name", choices=[*BENCHES, *EXTRA, "all", "docs"],
                    help="`all` runs step, pipeline, study and cache (asha, estimate and gpu: by name); `docs` "
                         "regenerates docs/benchmarks.md's latest figures from docs/benchmarks/*.json")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="for step")
    ap.add_argument("--distiller", metavar="NAME|all",
                    help="step: time this method's step (all: every method's) over the CE floor instead of CAT-KD's")
    ap.add_argument("--quick", action="store_true",
                    help="step: 3 repeats; pipeline: 2,000 images (imagenet: 300 JPEGs), one timed epoch; gpu: tiny "
                         "models and data, to check the script on a CPU")
    ap.add_argument("--dataset", choices=("cifar100", "imagenet"), default="cifar100",
                    help="pipeline: CIFAR-100's in-memory path (default) or ImageNet's JPEG folder path")
    ap.add_argument("--root", metavar="DIR",
                    help="pipeline --dataset imagenet: an ImageNet folder holding train/<class>/*.JPEG (default: "
                         "2,000 generated JPEGs in a temporary directory)")
    ap.add_argument("--asha-points", type=int, default=12, help="asha: β values in the grid (default 12)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="cache, storage: interleaved rounds of the smoke study, each side (default 2)")
    ap.add_argument("--asha-rf", type=float, default=4, help="asha: ASHA reduction factor (default 4)")
    ap.add_argument("--out", metavar="FILE.json", help="also write the figures as a JSON record (atomically)")
    ap.add_argument("--note", help="with --out: a note kept in the record (e.g. what else ran on the machine)")
    ap.add_argument("--check", action="store_true", help="docs: only check the page is current (exit 1 if not)")
    return ap


def run(name: str, args: argparse.Namespace) -> dict:
    """The figures of bench `name` (`all`: of each of BENCHES), each bench printing its own lines."""
    out: dict = {"device": args.device, "threads": torch.get_num_threads()}
    for one in (BENCHES if name == "all" else (name,)):
        if one == "step":
            out.update(step.run(args.device, quick=args.quick, distiller=args.distiller if name == "step" else None))
        elif one == "pipeline":
            out.update(pipeline.run(quick=args.quick, dataset=args.dataset if name == "pipeline" else "cifar100",
                                    root=args.root))
        elif one == "study":
            out.update(study.bench_study())
        elif one == "cache":
            # `all` leaves out its side without the prefetch: with it, `all` took 25 min 22 s on a
            # slow 2-core machine (budget: 25 min); `bench cache` runs every side
            out.update(cache.bench_cache(no_prefetch_side=name != "all", rounds=args.rounds))
        elif one == "asha":
            out.update(asha.bench_asha(points=args.asha_points, reduction_factor=args.asha_rf))
        elif one == "estimate":
            out.update(estimate.bench_estimate())
        elif one == "storage":
            out.update(storage.bench_storage(rounds=args.rounds))
        elif one == "gpu":
            out.update(gpu.bench_gpu(quick=args.quick))
    return out


def docs(check: bool) -> int:
    from catkd.bench import docs as page

    if check:
        ok = page.is_current()
        print(f"{page.PAGE}: " + ("current" if ok else "stale: run `python -m catkd.bench docs`"))
        return 0 if ok else 1
    print(f"{page.PAGE}: " + ("rewritten" if page.update() else "already current"))
    return 0


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.name == "docs":
        return docs(args.check)
    if args.check:
        ap.error("--check goes with `docs`")
    if args.quick and args.name not in QUICK:
        ap.error(f"--quick: only {', '.join(QUICK)} have a quick mode")
    if args.name != "pipeline" and (args.dataset != "cifar100" or args.root):
        ap.error("--dataset and --root go with `pipeline`")
    if args.root and args.dataset != "imagenet":
        ap.error("--root goes with --dataset imagenet")
    if args.note and not args.out:
        ap.error("--note goes with --out")
    ctx = record.context() if args.out else None  # before the bench: the load it meets, the code it runs
    t0 = time.perf_counter()
    out = run(args.name, args)
    wall = time.perf_counter() - t0
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}))
    if args.out:
        options = {"quick": args.quick, **{k: getattr(args, k) for k in OPTIONS.get(args.name, ())}}
        path = record.write_record(args.out, record.make_record(args.name, out, options, ctx, wall_s=wall,
                                                                note=args.note))
        print(f"figures written to {path} (docs/benchmarks.md: `python -m catkd.bench docs`)")
    return 0
