"""A killed driver's last Tune state can name a trial checkpoint that Tune had already deleted.

Tune (2.x, `num_to_keep=1`) deletes a trial's previous checkpoint as soon as it registers the next
one, and saves its experiment state in a later step of its loop, at most every few seconds. A driver
killed in between leaves a state naming `checkpoint_<J>` (the one reported with the trial's last
saved result; with short epochs J can be several behind) while the trial's folder holds only newer
ones, and on resume the trial fails three times with "does not exist on storage anymore" and ends as
an error (seen under a heavily loaded machine). Before a resume, `mend` writes the checkpoint the
state names for each trial it has not ended, where it is missing, as a copy of the trial's newest:
the trial then continues from its newest state. That state can hold epochs Tune never recorded (the
driver was killed after Tune took a checkpoint, before it wrote the epoch's result), so the copy
carries `recorded.json`, the last epoch the state holds: the restored trial reports the epochs after
it again from its history (catkd keys its rows by epoch, so one reported twice is kept once).
`tidy` removes the copies Tune did not take over once the stage has run.

Tune also writes its experiment state file in place, not atomically: a driver killed while it does
leaves an empty or cut file, and on resume Tune then says "Failed to restore the run state" and
restarts the experiment with its searcher's saved state (a grid that believes it is done runs one
trial with no parameters; the earlier trials stay beside the new ones). `set_aside_unreadable` puts
such a state, with its session's other files, in `.unreadable-state/` first: Tune then restores the
newest readable state, and the trial folders that state does not know move there too; with no
readable state left the stage starts over. (An object store is not exposed to this: an object is
visible only once its upload completes.)
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from catkd.storage import Location

_CKPT = re.compile(r"^(trial_[^/]+)/checkpoint_(\d+)/")
_STATE = re.compile(r"^experiment_state-(.+)\.json$")
SET_ASIDE = ".unreadable-state"
RECORDED = "recorded.json"  # in a mended checkpoint: {"epoch": the last epoch Tune's state holds}


def _checkpoints(files: list[str]) -> dict[str, set[int]]:
    """{trial folder: indices of its checkpoint_<index> folders} directly under the experiment."""
    out: dict[str, set[int]] = {}
    for rel in files:
        m = _CKPT.match(rel)
        if m:
            out.setdefault(m.group(1), set()).add(int(m.group(2)))
    return out


def _trials(state: bytes) -> Optional[dict[str, tuple[str, Optional[int], int]]]:
    """{trial id: (status, index of the checkpoint it restores from, last epoch recorded)} of a saved Tune
    experiment state (None: empty, cut or not Tune's). The checkpoint is the one reported with the
    trial's last result; the epoch that result's (0: none)."""
    def restores_from(meta) -> tuple[Optional[int], int]:
        try:
            last = json.loads(meta)["last_result"]
        except (KeyError, TypeError, ValueError):
            return None, 0
        epoch = last.get("epoch") if isinstance(last, dict) else None
        epoch = epoch if isinstance(epoch, int) else 0
        try:
            return int(re.fullmatch(r"checkpoint_(\d+)", last["checkpoint_dir_name"]).group(1)), epoch
        except (AttributeError, KeyError, TypeError, ValueError):
            return None, epoch

    try:
        return {t["trial_id"]: (t["status"], *restores_from(r[1]))
                for t, r in ((json.loads(r[0]), r) for r in json.loads(state)["trial_data"])}
    except (IndexError, KeyError, TypeError, ValueError):
        return None


def _unfinished(exp: "Location", files: list[str]) -> Optional[dict[str, tuple[Optional[int], int]]]:
    """{folder: (the checkpoint index it restores from (None: not named), the last epoch recorded)} of
    the trials Tune's newest saved state has not ended (None: state unreadable)."""
    states = sorted(f for f in files if re.fullmatch(r"experiment_state-[^/]+\.json", f))
    trials = _trials((exp / states[-1]).read_bytes()) if states else None
    return None if trials is None else {f"trial_{t}": (k, e) for t, (s, k, e) in trials.items() if s != "TERMINATED"}


def mend(exp: "Location") -> list["Location"]:
    """Copy the newest checkpoint of each trial Tune will restore to the name Tune's saved state gives
    for it where that one is missing (the index before the newest, where the state names none or cannot
    be read: then for every trial), with the last epoch the state records for it; returns the copies made."""
    import pyarrow.fs as pafs

    files = list(exp.files())
    todo = _unfinished(exp, files)
    made = []
    for trial, indices in sorted(_checkpoints(files).items()):
        if todo is not None and trial not in todo:
            continue
        k = max(indices)
        # the state can lag several checkpoints behind (Tune saves it every few seconds; short epochs)
        named, recorded = todo.get(trial, (None, 0)) if todo is not None else (None, 0)
        want = k - 1 if named is None else named
        if 0 <= want < k and want not in indices:
            src, dst = exp / f"{trial}/checkpoint_{k:06d}", exp / f"{trial}/checkpoint_{want:06d}"
            exp.fs.create_dir(dst.path, recursive=True)
            pafs.copy_files(src.path, dst.path, source_filesystem=exp.fs, destination_filesystem=exp.fs)
            if named is not None:  # Tune restores this copy: the epochs after `recorded` it never saw
                (dst / RECORDED).write_bytes(json.dumps({"epoch": recorded}).encode())
            made.append(dst)
    return made


def tidy(made: list["Location"]) -> None:
    """Remove the copies `mend` made that are still there (Tune deletes those it restored from once
    it has a newer checkpoint; the others it never knew)."""
    for d in made:
        if d.exists():
            d.fs.delete_dir(d.path)


def _trial_ids(state_file: Path) -> Optional[set[str]]:
    """The trial ids a saved experiment state file holds (None: unreadable)."""
    try:
        trials = _trials(state_file.read_bytes())
    except OSError:
        return None
    return None if trials is None else set(trials)


def set_aside_unreadable(exp: "Location") -> Optional[list[str]]:
    """Move each newest experiment state Tune could not read, with its session's searcher and callback
    states, into `<exp>/.unreadable-state/`, and the trial folders the newest readable state does not
    know (every one when none is left) beside them. Returns what was moved (None: the newest state is
    readable, or the experiment is not on a local or shared disk)."""
    if not exp.local:
        return None
    root = Path(exp.path)
    states = sorted((p for p in root.glob("experiment_state-*.json") if _STATE.match(p.name)), key=lambda p: p.name)
    known: Optional[set[str]] = None
    moved: list[str] = []
    aside = root / SET_ASIDE
    while states and known is None:
        newest = states.pop()  # Tune's own rule: the greatest name
        known = _trial_ids(newest)
        if known is None:
            session = _STATE.match(newest.name).group(1)
            for f in sorted(root.glob(f"*-{session}.*")):
                if f.is_file():
                    aside.mkdir(exist_ok=True)
                    f.rename(aside / f.name)
                    moved.append(f.name)
    if not moved:
        return None
    for d in sorted(root.glob("trial_*")):
        if d.is_dir() and (known is None or d.name[len("trial_"):] not in known):
            d.rename(aside / d.name)
            moved.append(d.name + "/")
    return moved


def readable_state(exp: "Location") -> bool:
    """Does the experiment hold an experiment state Tune can restore from?"""
    return not exp.local or any(_trial_ids(p) is not None for p in Path(exp.path).glob("experiment_state-*.json"))
