"""Where a run computes: its device (RUN.DEVICE) and its memory format (RUN.CHANNELS_LAST), resolved once
for the Trainer and for whatever must compute as a run would (the dry run's step timing)."""
from __future__ import annotations

from typing import Any

import torch

from catkd.config import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"RUN.DEVICE: {name!r} asked for, but no CUDA device is available")
    return dev


def channels_last(setting: Any, device: torch.device) -> bool:
    """RUN.CHANNELS_LAST resolved for a device: `auto` is channels-last on a CPU, where oneDNN's
    convolutions run a training step faster in it (`python -m catkd.bench step`:
    channels_last_over_contiguous), and the default format on a GPU, where channels-last pays with
    bf16 (`RUN.PRECISION bf16`; the gpu bench)."""
    return device.type == "cpu" if setting == "auto" else bool(setting)
