"""Checkpoints: everything a run needs to continue exactly, written atomically, loaded safely.

`checkpoint.pth` (full state, for resume) holds the student, optimizer, scheduler, epoch, best
metrics, the metric history, the resolved config and every RNG state. `student_best.pth` and
`ckpt_epoch_<e>.pth` are MDistiller-format ({"model": student state_dict, ...}) so a vanilla run's
file loads as a teacher unchanged.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catkd.fsutil import atomic_torch_save

FULL = "checkpoint.pth"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, unsafe or from another configuration."""


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": _numpy_state_plain(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_python_rng(state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_rng(s: Any) -> tuple:
    # weights_only loading returns lists where random.getstate() gave tuples
    return (s[0], tuple(s[1]), s[2])


def save_full(out_dir: Path, state: dict[str, Any]) -> Path:
    return atomic_torch_save(out_dir / FULL, state)


def save_student(path: Path, student_state: dict, **meta: Any) -> Path:
    return atomic_torch_save(path, {"model": student_state, **meta})


def load_full(path: Path) -> dict[str, Any]:
    """Load a full checkpoint with weights_only=True (a pickle that would run code is refused)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a torch file, or refused as unsafe
        raise CheckpointError(f"{path}: cannot load checkpoint safely ({type(e).__name__}: {str(e)[:200]})") from None
    for key in ("model", "optimizer", "scheduler", "epoch", "rng"):
        if key not in state:
            raise CheckpointError(f"{path}: not a catkd checkpoint (missing {key!r})")
    return state


def _numpy_state_plain(s: tuple) -> tuple:
    # numpy arrays are not allowed by weights_only loading: store the key array as a list of ints
    return (s[0], s[1].tolist(), int(s[2]), int(s[3]), float(s[4]))
