"""A killed driver's last Tune state can name a trial checkpoint that Tune had already deleted.

Tune (2.x, `num_to_keep=1`) deletes a trial's previous checkpoint as soon as it registers the next
one, and saves its experiment state in a later step of its loop. A driver killed in between leaves a
state naming `checkpoint_<K-1>` while the trial's folder holds only `checkpoint_<K>`, and on resume
the trial fails three times with "does not exist on storage anymore" and ends as an error (seen
under a heavily loaded machine). Before a resume, `mend` writes the missing predecessor of the newest
checkpoint of each trial that state has not ended, as a copy of it: the trial then continues from its
newest state, whose epochs are already recorded (catkd keys its rows by epoch, so a replayed epoch is
kept once). `tidy` removes the copies Tune did not take over once the stage has run.
"""
from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from catkd.storage import Location

_CKPT = re.compile(r"^(trial_[^/]+)/checkpoint_(\d+)/")


def _checkpoints(files: list[str]) -> dict[str, set[int]]:
    """{trial folder: indices of its checkpoint_<index> folders} directly under the experiment."""
    out: dict[str, set[int]] = {}
    for rel in files:
        m = _CKPT.match(rel)
        if m:
            out.setdefault(m.group(1), set()).add(int(m.group(2)))
    return out


def _unfinished(exp: "Location", files: list[str]) -> Optional[set[str]]:
    """The folders of the trials Tune's newest saved state has not ended (None: state unreadable)."""
    states = sorted(f for f in files if re.fullmatch(r"experiment_state-[^/]+\.json", f))
    try:
        trials = [json.loads(t[0]) for t in json.loads((exp / states[-1]).read_bytes())["trial_data"]]
        return {f"trial_{t['trial_id']}" for t in trials if t["status"] != "TERMINATED"}
    except (IndexError, KeyError, TypeError, ValueError):
        return None


def mend(exp: "Location") -> list["Location"]:
    """Copy the newest checkpoint of each trial Tune will restore to the index before it where that one
    is missing (every trial's, when Tune's state cannot be read); returns the copies made."""
    import pyarrow.fs as pafs

    files = list(exp.files())
    todo = _unfinished(exp, files)
    made = []
    for trial, indices in sorted(_checkpoints(files).items()):
        if todo is not None and trial not in todo:
            continue
        k = max(indices)
        if k > 0 and k - 1 not in indices:
            src, dst = exp / f"{trial}/checkpoint_{k:06d}", exp / f"{trial}/checkpoint_{k - 1:06d}"
            exp.fs.create_dir(dst.path, recursive=True)
            pafs.copy_files(src.path, dst.path, source_filesystem=exp.fs, destination_filesystem=exp.fs)
            made.append(dst)
    return made


def tidy(made: list["Location"]) -> None:
    """Remove the copies `mend` made that are still there (Tune deletes those it restored from once
    it has a newer checkpoint; the others it never knew)."""
    for d in made:
        if d.exists():
            d.fs.delete_dir(d.path)
