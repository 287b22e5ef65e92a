"""Shared fixtures: one private Ray session per test session (never `ray stop`, never local_mode)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Private Ray state, no usage stats (no network here), no token auth except where a test asks.
_RAY_TMP = Path(tempfile.mkdtemp(prefix="catkd-ray-"))
os.environ.setdefault("RAY_TMPDIR", str(_RAY_TMP))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# catkd.train's teacher cache (RUN.TEACHER_CACHE auto) goes here, never to the user's ~/.cache
os.environ["CATKD_CACHE"] = tempfile.mkdtemp(prefix="catkd-cache-")
os.environ.pop("CATKD_TEACHER_CACHE", None)


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2,
                 log_to_driver=False)
    yield ray
    ray.shutdown()
