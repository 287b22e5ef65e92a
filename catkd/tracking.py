"""`python -m catkd.train` with the reference's `LOG.WANDB: True`: one W&B run, one log per epoch.

Project EXPERIMENT.PROJECT, run name the experiment's, the whole resolved config as the run's config,
files under the output directory. Offline (upload later with `wandb sync`) when no API key is
configured; `WANDB_MODE` / `WANDB_DIR` / `WANDB_PROJECT` as wandb reads them. Without wandb installed:
a one-line notice and the run goes on (metrics are in the output directory either way).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional


def wandb_mode() -> Optional[str]:
    """WANDB_MODE if set; "offline" when no API key is configured (env or `wandb login`); else None."""
    import wandb

    mode = os.environ.get("WANDB_MODE")
    if mode or os.environ.get("WANDB_API_KEY"):
        return mode or None
    try:
        logged_in = bool(wandb.api.api_key)
    except Exception:
        logged_in = False
    return None if logged_in else "offline"


def numbers(metrics: dict[str, Any]) -> dict[str, Any]:
    """The numbers of a metrics dict (what W&B charts); a flag is no number."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def wandb_run(cfg, out_dir: Path, notice: Callable[[str], None]) -> Optional[tuple[Callable, Callable]]:
    """(report(metrics, run_dir), finish(status)) for Trainer.fit, or None."""
    try:
        import wandb
    except ImportError:
        notice("LOG.WANDB: True, but wandb is not installed (pip install 'catkd[wandb]'); "
               "metrics go to the output directory only")
        return None
    from catkd.config import flatten

    mode = wandb_mode()
    if mode == "offline" and not os.environ.get("WANDB_MODE"):
        notice("LOG.WANDB: no W&B API key configured: the run is written offline (upload it with `wandb sync`)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=os.environ.get("WANDB_PROJECT") or cfg.EXPERIMENT.PROJECT, name=cfg.experiment_name,
                     config=flatten(cfg.to_dict()), dir=os.environ.get("WANDB_DIR") or str(out_dir), mode=mode,
                     reinit="finish_previous")
    notice(f"W&B: run {run.name} in project {run.project}" + (f" (offline, {run.dir})" if mode == "offline" else ""))

    def report(metrics: dict[str, Any], _run_dir: Path) -> None:
        run.log(numbers(metrics), step=int(metrics["epoch"]))

    def finish(status: str) -> None:
        run.summary["status"] = status
        run.finish(exit_code=0 if status == "finished" else 1)

    return report, finish
