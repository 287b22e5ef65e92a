"""The study from Python (a notebook's door): `catkd.study.run(...)` returns the experiment directory.

`python -m catkd.study` is a thin wrapper of `run`. Bad input raises StudyError (the command turns it
into exit 2), naming every problem at once, before Ray starts and before anything is written.
Light imports at module level: Ray's trial workers import the `catkd.study` package.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Optional, Union


def check_storage(storage: Union[str, Path]):
    """--storage: a local or shared directory, or an object-store URI (s3://bucket/prefix, gs://...)
    whose endpoint answers, whose bucket exists and whose credentials are accepted (read, not written)."""
    from catkd.storage import StorageError, check, location
    from catkd.study.spec import StudyError

    try:
        loc = location(storage)
        check(loc)
    except StorageError as e:
        raise StudyError(f"--storage {e}") from None
    return loc


def run(study: Union[str, Path], smoke: bool = False, overrides: Optional[dict[str, Any]] = None,
        storage: Union[str, Path] = "./results", name: Optional[str] = None, resume: bool = False,
        address: Optional[str] = None, dashboard: bool = False, trackers: Iterable[str] = (),
        prefetch: bool = True) -> Union[Path, str]:
    """Run (or, with resume=True, continue) a study file; returns its experiment directory (its URI
    when `storage` is object storage: s3://bucket/prefix).

    overrides: study keys as `--set` takes them, e.g. {"search.num_samples": 4, "fixed.SOLVER.EPOCHS": 30}.
    name: the experiment's directory under `storage` (default the study's name, "-smoke" added under smoke).
    dashboard: start the Ray dashboard (the command's default; off here, where a notebook has no use for it).
    trackers: "wandb", "mlflow" (optional extras). Raises StudyError on bad input.
    """
    from catkd.study.load import load_study
    from catkd.study.runner import run_study
    from catkd.study.spec import StudyError
    from catkd.study.trackers import check_trackers

    trackers = tuple(dict.fromkeys(trackers))
    errors: list[str] = []  # the storage, the study file and the trackers: every problem in one error

    def collect(check, *args, **kwargs):
        try:
            return check(*args, **kwargs)
        except StudyError as e:
            errors.append(str(e))

    root = collect(check_storage, storage)
    if address or os.environ.get("RAY_ADDRESS"):
        from catkd.study.stages import check_address

        collect(check_address, address or os.environ["RAY_ADDRESS"])
    spec = collect(load_study, study, smoke=smoke, sets=overrides)
    collect(check_trackers, list(trackers), str(study))
    if errors:
        raise StudyError("\n".join(errors))
    name = name or (spec.name + ("-smoke" if smoke else ""))
    run_study(spec, str(study), root, name, resume=resume, address=address, dashboard=dashboard,
              trackers=trackers, prefetch=prefetch)
    exp = root / name
    return Path(exp.path) if root.local else exp.uri
