"""python -m catkd.train --cfg FILE [KEY VALUE ...]: one training run, no Ray.

FILE is a packaged preset (e.g. cifar100/CAT_KD/res32x4_shuv1) or a config file of the reference
implementation, unchanged. Exit codes: 0 finished, 1 diverged or failed, 2 bad input (config,
missing dataset or teacher), nothing trained.

From Python: `cfg = catkd.train.load_config(FILE, {"SOLVER.EPOCHS": 2})`, `result = catkd.train.run(cfg)`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from catkd.config import ConfigError, parse_value, resolve_preset
from catkd.engine.validate import load_run_config as load_config

EXIT_BAD_INPUT = 2


def parse_overrides(pairs: Sequence[str]) -> dict:
    if len(pairs) % 2:
        raise ConfigError(f"overrides come in KEY VALUE pairs; {pairs[-1]!r} has no value")
    return {pairs[i]: parse_value(pairs[i + 1]) for i in range(0, len(pairs), 2)}


def run(cfg, out_dir=None, log=print):
    """Train one run of a config (from `load_config`); returns the RunResult (status, epochs done,
    best/last accuracies, output directory). Bad input raises ConfigError, DataError,
    TeacherWeightsError or CheckpointError before anything is trained. LOG.WANDB: also logs to W&B."""
    from catkd.engine import Trainer
    from catkd.tracking import wandb_run

    trainer = Trainer.from_config(cfg, out_dir=out_dir, log=log)
    if trainer.targets is not None:
        where = trainer.targets.store.dir if trainer.targets.cached else "off: live teacher"
        log(f"catkd: teacher cache: {where}")
    tracker = wandb_run(cfg, trainer.out_dir, lambda m: print(f"catkd: note: {m}", file=sys.stderr)) \
        if cfg.LOG.WANDB else None
    result = trainer.fit(report=tracker[0] if tracker else None)
    if tracker:
        tracker[1](result.status)
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m catkd.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cfg", required=True, help="packaged preset name or path to a yaml config")
    ap.add_argument("--resume", action="store_true", help="continue from <output dir>/checkpoint.pth")
    ap.add_argument("--download", action="store_true", help="download CIFAR-100 if missing (network needed)")
    ap.add_argument("--out", help="output directory (default: LOG.PREFIX/EXPERIMENT.NAME or TAG)")
    ap.add_argument("overrides", nargs="*", metavar="KEY VALUE", help="dotted config overrides, e.g. SOLVER.EPOCHS 2")
    args = ap.parse_args(argv)

    from catkd.data import DataError
    from catkd.engine.checkpoint import CheckpointError
    from catkd.models import TeacherWeightsError

    try:
        overrides = parse_overrides(args.overrides)
        if args.resume:
            overrides["RUN.RESUME"] = True
        if args.download:
            overrides["DATASET.DOWNLOAD"] = True
        cfg_path = resolve_preset(args.cfg)
        cfg = load_config(cfg_path, overrides)
        out_dir = args.out or cfg.output_dir
        print(f"catkd: {cfg.DISTILLER.TYPE} {cfg.DISTILLER.TEACHER if cfg.DISTILLER.TYPE != 'NONE' else ''}"
              f"{' -> ' if cfg.DISTILLER.TYPE != 'NONE' else ''}{cfg.DISTILLER.STUDENT} on {cfg.DATASET.TYPE}"
              f"{' (SYNTHETIC data)' if cfg.DATASET.TYPE == 'synthetic' else ''}; output: {out_dir}",
              flush=True)
        result = run(cfg, out_dir, log=lambda m: print(m, flush=True))
    except (ConfigError, DataError, TeacherWeightsError, CheckpointError) as e:
        msg = str(e)
        if args.cfg not in msg and "cfg_path" in locals() and str(cfg_path) not in msg:
            msg = f"{cfg_path}: {msg}"  # errors found while building the run name the file too
        print(f"catkd: error: {msg}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("catkd: interrupted; resume with --resume", file=sys.stderr)
        return 130
    except OSError as e:  # unwritable output directory, disk full, ...
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"catkd: error: cannot write the run's files{where}: {e.strerror or e}. Files already written "
              "(the last complete checkpoint) are intact; fix the cause and continue with --resume",
              file=sys.stderr)
        return 1
    best_val = f", best val {result.best_val_acc:.2f}" if result.best_val_acc is not None else ""
    print(
        f"catkd: {result.status} after {result.epochs_done} epochs: best test top-1 {result.best_test_acc:.2f}, "
        f"last {result.last_test_acc:.2f}{best_val}; results in {result.out_dir}"
    )
    return 0 if result.status == "finished" else 1


if __name__ == "__main__":
    from catkd.cli import exit_now

    exit_now(main())
