"""The study from Python (a notebook's door): `catkd.study.run(...)` returns the experiment directory.

`python -m catkd.study` is a thin wrapper of `run`. Bad input raises StudyError (the command turns it
into exit 2), naming every problem at once, before Ray starts and before anything is written.
Light imports at module level: Ray's trial workers import the `catkd.study` package.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Optional, Union

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def check_storage(storage: Union[str, Path]) -> Path:
    """--storage is a local or shared directory; an object-store URI (s3://, gs://, ...) is refused
    rather than read as a folder called `s3:`."""
    from catkd.study.spec import StudyError

    if _URI.match(str(storage)):
        raise StudyError(f"--storage {storage}: object storage (a scheme:// URI) is not supported yet; give a "
                         "local directory, or a directory every node of the cluster mounts")
    return Path(storage)


def run(study: Union[str, Path], smoke: bool = False, overrides: Optional[dict[str, Any]] = None,
        storage: Union[str, Path] = "./results", name: Optional[str] = None, resume: bool = False,
        address: Optional[str] = None, dashboard: bool = False, trackers: Iterable[str] = (),
        prefetch: bool = True) -> Path:
    """Run (or, with resume=True, continue) a study file; returns its experiment directory.

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

    collect(check_storage, storage)
    spec = collect(load_study, study, smoke=smoke, sets=overrides)
    collect(check_trackers, list(trackers), str(study))
    if errors:
        raise StudyError("\n".join(errors))
    storage = Path(storage)
    name = name or (spec.name + ("-smoke" if smoke else ""))
    run_study(spec, str(study), storage, name, resume=resume, address=address, dashboard=dashboard,
              trackers=trackers, prefetch=prefetch)
    return storage.expanduser().resolve() / name
