"""python -m catkd.study STUDY.yaml [--smoke] [--resume] [--storage DIR] [--name NAME]
[--address ADDR] [--dashboard/--no-dashboard] [--set KEY=VALUE ...]

Exit 0 when the study finished (even if some trials failed; they are reported), 2 on bad input
(before Ray starts, nothing written), 1 on any other failure.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Optional, Sequence

EXIT_BAD_INPUT = 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m catkd.study", description="Run a CAT/CAT-KD study on Ray Tune.")
    ap.add_argument("study", help="study file (yaml), e.g. studies/beta_sweep.yaml")
    ap.add_argument("--smoke", action="store_true",
                    help="the same study shrunk to the embedded synthetic data, small models, few epochs")
    ap.add_argument("--resume", action="store_true", help="continue a killed or interrupted study")
    ap.add_argument("--storage", default="./results", help="where experiment directories go (default ./results)")
    ap.add_argument("--name", help="experiment name (default: the study's name, + '-smoke' with --smoke)")
    ap.add_argument("--address", help="existing Ray cluster (default: RAY_ADDRESS, else a local one)")
    ap.add_argument("--dashboard", action=argparse.BooleanOptionalAction, default=True,
                    help="start the Ray dashboard on 127.0.0.1 (local clusters)")
    ap.add_argument("--dashboard-without-auth", action="store_true",
                    help="turn off Ray's token authentication (only on a machine no one else can reach: "
                         "anyone who reaches an open dashboard can run code on the cluster)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="change a study key, e.g. --set search.num_samples=8 --set fixed.SOLVER.EPOCHS=30")
    args = ap.parse_args(argv)

    from catkd.study.spec import StudyError, load_study, parse_set

    try:
        spec = load_study(args.study, smoke=args.smoke, sets=parse_set(args.sets))
    except StudyError as e:
        print(f"catkd.study: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    name = args.name or (spec.name + ("-smoke" if args.smoke else ""))

    from catkd.study.runner import run_study

    if args.dashboard_without_auth:
        import os

        os.environ["RAY_AUTH_MODE"] = "disabled"
        print("catkd.study: WARNING: Ray token authentication disabled (--dashboard-without-auth)", file=sys.stderr)

    try:
        return run_study(spec, args.study, Path(args.storage), name, resume=args.resume,
                         address=args.address, dashboard=args.dashboard)
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


if __name__ == "__main__":
    sys.exit(main())
