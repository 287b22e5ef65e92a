"""python -m catkd.study STUDY.yaml [--smoke] [--resume] [--storage DIR] [--name NAME]
[--address ADDR] [--dashboard/--no-dashboard] [--set KEY=VALUE ...] [--log wandb|mlflow] [--no-prefetch] [--dry-run]

Exit 0 when the study finished (even if some trials failed; they are reported), 2 on bad input
(before Ray starts, nothing written), 1 on any other failure.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Optional, Sequence

EXIT_BAD_INPUT = 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m catkd.study", description="Run a CAT/CAT-KD study on Ray Tune.")
    ap.add_argument("study", help="study file (yaml), e.g. studies/beta_sweep.yaml")
    ap.add_argument("--smoke", action="store_true",
                    help="the same study shrunk to the embedded synthetic data, small models, few epochs")
    ap.add_argument("--resume", action="store_true", help="continue a killed or interrupted study")
    ap.add_argument("--storage", default="./results",
                    help="where experiment directories go: a directory, or s3://bucket/prefix (default ./results)")
    ap.add_argument("--name", help="experiment name (default: the study's name, + '-smoke' with --smoke)")
    ap.add_argument("--address", help="existing Ray cluster (default: RAY_ADDRESS, else a local one)")
    ap.add_argument("--dashboard", action=argparse.BooleanOptionalAction, default=True,
                    help="start the Ray dashboard on 127.0.0.1 (local clusters)")
    ap.add_argument("--dashboard-without-auth", action="store_true",
                    help="turn off Ray's token authentication (only on a machine no one else can reach: "
                         "anyone who reaches an open dashboard can run code on the cluster)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="change a study key, e.g. --set search.num_samples=8 --set fixed.SOLVER.EPOCHS=30")
    ap.add_argument("--log", action="append", default=[], choices=["wandb", "mlflow"],
                    help="also track every trial in Weights & Biases / MLflow (repeatable; optional extras)")
    ap.add_argument("--prefetch", action=argparse.BooleanOptionalAction, default=True,
                    help="fill the teacher cache for the trials' seeds ahead of them from idle CPU time "
                         "(CPU-only local studies; at the lowest CPU priority)")
    ap.add_argument("--dry-run", action="store_true",
                    help="validate, print the trials, epoch budget and a measured cost estimate; run nothing")
    args = ap.parse_args(argv)

    from catkd.study.api import run
    from catkd.study.load import load_study, parse_set
    from catkd.study.spec import StudyError

    if args.dashboard_without_auth:
        import os

        os.environ["RAY_AUTH_MODE"] = "disabled"
        print("catkd.study: WARNING: Ray token authentication disabled (--dashboard-without-auth)", file=sys.stderr)
    try:
        sets = parse_set(args.sets)
        if args.dry_run:
            return dry_run(load_study(args.study, smoke=args.smoke, sets=sets), args.study, args.address)
        run(args.study, smoke=args.smoke, overrides=sets, storage=args.storage, name=args.name, resume=args.resume,
            address=args.address, dashboard=args.dashboard, trackers=args.log, prefetch=args.prefetch)
        return 0
    except StudyError as e:
        print(f"catkd.study: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("catkd.study: interrupted; continue with --resume", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("catkd.study: failed (see above); a partial study can be continued with --resume", file=sys.stderr)
        return 1
    finally:
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except Exception:
            pass


def dry_run(spec, source: str, address: Optional[str] = None) -> int:
    """--dry-run: the plan and a measured cost estimate; nothing written, no Ray started (on a cluster,
    --address or RAY_ADDRESS, its nodes are read to count the slots). Exit 2 if the pre-flight
    (dataset and teacher files) would stop the real run."""
    from catkd.study.estimate import estimate
    from catkd.study.preflight import absolutise, preflight
    from catkd.study.progress import say
    from catkd.study.spec import StudyError

    from catkd.config import ConfigError

    spec, env = absolutise(spec)
    if address or os.environ.get("RAY_ADDRESS"):
        from catkd.study.stages import check_address

        try:
            check_address(address or os.environ["RAY_ADDRESS"])
        except StudyError as e:
            print(f"catkd.study: error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
    try:
        estimate(spec, say=say, address=address)
    except (ConfigError, StudyError, ValueError) as e:  # a setting the cost measurement cannot run with
        print(f"catkd.study: error: {source}: the cost measurement cannot run this study: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if spec.smoke_mode:
        from catkd.distillers import DISTILLERS
        from catkd.study.preflight import probe_configs

        if any(DISTILLERS.get(c.DISTILLER.TYPE).needs_teacher for c in probe_configs(spec)):
            say(f"--smoke: the small teacher ({spec.smoke.teacher}) is trained first unless it is cached; "
                "not in the estimate")
        return 0
    os.environ.update({k: v for k, v in env.items() if k.startswith("CATKD_") and k not in os.environ})
    try:
        preflight(spec, source)
    except StudyError as e:
        print(f"catkd.study: error: the real run would stop at pre-flight: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    say("pre-flight: dataset and teacher files found; nothing was written")
    return 0


if __name__ == "__main__":
    from catkd.cli import exit_now

    exit_now(main())
