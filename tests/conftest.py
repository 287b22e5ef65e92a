"""Shared fixtures: one private Ray session per test session (never `ray stop`, never local_mode), the
one smoke study that tests reading a finished study's results share, and the two test tiers
(tests/_tiers.py: tests that start Ray or a study are marked `e2e`; `make test-fast` runs the rest)."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import types
from pathlib import Path

import pytest
import yaml

from _helpers import TINY, seed_smoke_teacher
from _tiers import guard, mark_e2e

pytest_plugins = ("pytester",)

# The processes the tests start (study drivers, Ray's workers, W&B's service) put their temporary files
# in this process's own folder, removed when it ends: what a killed process leaves (a trial's scratch
# copy, multiprocessing's and W&B's folders) does not pile up in /tmp. Ray's state and the cache stay
# directly under the system's temporary directory (Ray's socket paths must stay under 108 bytes).
_TMP_ROOT = os.environ.setdefault("CATKD_TESTS_TMP_ROOT", tempfile.gettempdir())
os.environ["TMPDIR"] = tempfile.mkdtemp(prefix="catkd-tmp-", dir=_TMP_ROOT)

# Private Ray state, no usage stats (no network here), no token auth except where a test asks.
_RAY_TMP = Path(tempfile.mkdtemp(prefix="catkd-ray-", dir=_TMP_ROOT))
os.environ.setdefault("RAY_TMPDIR", str(_RAY_TMP))
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers: each its own Ray state
    os.environ["RAY_TMPDIR"] = str(_RAY_TMP)  # a short path: Ray's socket paths must stay under 108 bytes
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Each xdist worker computes with one thread (and so do the processes it starts, unless a test sets
# RUN.THREADS): two workers with torch's default of one thread per core oversubscribe the cores, and
# the fast tier then takes 12 % longer on 2 cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# OpenMP's threads spin while they wait for work: with more threads than free cores (two workers, the
# processes they start, Ray's trials) the spinning burns the CPU the computing needs (four test files
# training with 2 threads, on 2 workers: 65 CPU-s spinning, 36 waiting passively). Set before torch is
# imported, so for this process and every one it starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# as a study's driver does for the Ray it starts: no idle worker per CPU that no trial would use (the
# Ray session below and the clusters tests build with ray.cluster_utils read it from here)
os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# catkd.train's teacher cache (RUN.TEACHER_CACHE auto) goes here, never to the user's ~/.cache; it and
# the Ray state (and the temporary folder above) are removed when the test process ends (a session's
# stores take gigabytes)
os.environ["CATKD_CACHE"] = tempfile.mkdtemp(prefix="catkd-cache-", dir=_TMP_ROOT)
for _tmp in (os.environ["CATKD_CACHE"], _RAY_TMP, os.environ["TMPDIR"]):
    atexit.register(shutil.rmtree, _tmp, ignore_errors=True)
os.environ.pop("CATKD_TEACHER_CACHE", None)


def pytest_collection_modifyitems(items):
    mark_e2e(items)
    schedule_order(items)


def schedule_order(items):
    """The order `make test`'s two workers take tests in, one at a time (`--maxschedchunk 1`): the first
    test that reads the shared smoke study starts it at once, the other end-to-end tests keep the other
    worker busy meanwhile, then come the smoke study's other readers (it is done by then: nobody waits
    on its lock) and the fast tier, which fills the gaps and the end."""
    reads = [it for it in items if "tiny_study" in getattr(it, "fixturenames", ())]
    e2e = [it for it in items if it.get_closest_marker("e2e") is not None and it not in reads]
    rest = [it for it in items if it.get_closest_marker("e2e") is None and it not in reads]
    items[:] = reads[:1] + e2e + reads[1:] + rest


@pytest.fixture(autouse=True)
def _tier_guard(request, monkeypatch):
    """A fast-tier test that starts Ray or a study driver fails, naming the detector that missed it."""
    if request.node.get_closest_marker("e2e") is None:
        guard(monkeypatch)


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2,
                 log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """moto's standalone S3 server, one per test session (per xdist worker)."""
    from _s3 import start, stop

    server = start()
    yield server
    stop(server)


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The S3 server's AWS variables set for this test, and a fresh bucket: `s3.uri` is s3://<bucket>."""
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CATKD_STORAGE_TIMEOUT", "10")
    bucket = s3_server.bucket()
    return types.SimpleNamespace(server=s3_server, bucket=bucket, uri=f"s3://{bucket}",
                                 objects=lambda prefix="": s3_server.objects(bucket, prefix),
                                 read=lambda key: s3_server.read(bucket, key))


@pytest.fixture(scope="session")
def smoke_teacher(tmp_path_factory):
    """`smoke_teacher(study, storage, sets=None)`: the study's smoke teacher, trained once per test session,
    put where its driver finds it (the tests of training, killing or resuming that teacher train their own)."""
    cache = tmp_path_factory.mktemp("smoke-teachers")
    return lambda study, storage, sets=None: seed_smoke_teacher(study, storage, cache, sets)


def run_root(tmp_path_factory) -> Path:
    """The test run's base temporary directory: under pytest-xdist the one above each worker's own, where
    what the workers share is made once (under a file lock) and read by all."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


@pytest.fixture(scope="session")
def trained_teacher(tmp_path_factory) -> Path:
    """A resnet14 trained alone for 5 epochs on 4 synthetic classes (its final file, MDistiller format),
    for the tests that distil from a teacher that has learnt something. Trained once per test run: the
    first worker to get here trains it, the others wait for it and read the same file."""
    from catkd.engine import Trainer
    from catkd.engine.validate import build_run_config
    from filelock import FileLock

    root = run_root(tmp_path_factory)
    out = root / "trained-teacher"
    with FileLock(str(root / "trained-teacher.lock")):
        if not (out / "done").is_file():
            cfg = build_run_config({}, "<test>", {
                "DATASET.TYPE": "synthetic", "DATASET.SYNTHETIC.NUM_CLASSES": 4, "DATASET.SYNTHETIC.TRAIN_PER_CLASS": 48,
                "DATASET.SYNTHETIC.TEST_PER_CLASS": 20, "SOLVER.BATCH_SIZE": 32, "SOLVER.LR": 0.05,
                "SOLVER.LR_DECAY_STAGES": [100], "SOLVER.EPOCHS": 5, "RUN.PROGRESS": "none", "RUN.THREADS": 1,
                "RUN.TEACHER_CACHE": "off", "LOG.SAVE_CHECKPOINT_FREQ": 0, "LOG.PREFIX": str(out),
                "EXPERIMENT.NAME": "t", "DISTILLER.TYPE": "NONE", "DISTILLER.STUDENT": "resnet14"}, quiet=True)
            assert Trainer.from_config(cfg, log=lambda s: None).fit().status == "finished"
            (out / "done").write_text("")
    return out / "t" / "ckpt_epoch_5.pth"


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory, ray_session, smoke_teacher) -> Path:
    """The TINY smoke study, run once for every test that only reads a finished study: 6 search trials
    under ASHA, then the confirm stage (the best configuration with seeds 1 and 2), with
    --log wandb (offline) --log mlflow. Returns its experiment directory. Under pytest-xdist the
    workers share it: the first to get here runs it, the others wait for it and read the same one."""
    import catkd.study
    from catkd.study.load import load_study
    from filelock import FileLock

    root = run_root(tmp_path_factory)
    tmp = root / "tiny-study"
    exp = (tmp / "store" / "tiny-smoke").resolve()
    with FileLock(str(root / "tiny-study.lock")):
        if (tmp / "done").is_file():
            return exp
        tmp.mkdir(exist_ok=True)
        data = yaml.safe_load(TINY)
        data["confirm"] = {"top_k": 1, "seeds": [1]}  # real scale; --smoke confirms with seeds 1, 2
        # ten steps an epoch (batch 32): by ASHA's rung at epoch 3 the trials have drawn apart, and it
        # stops those below the median for what they learnt; at batch 64 they could all still be at
        # chance there, tied, and nothing was stopped
        data["smoke"]["fixed"]["SOLVER.BATCH_SIZE"] = 32
        study = tmp / "tiny.yaml"
        study.write_text(yaml.safe_dump(data, sort_keys=False))
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("WANDB_MODE", "offline")
            mp.setenv("WANDB_SILENT", "true")
            mp.delenv("WANDB_DIR", raising=False)
            mp.delenv("MLFLOW_TRACKING_URI", raising=False)
            smoke_teacher(load_study(study, smoke=True), tmp / "store")
            # through the Python API (the command wraps the same call): it returns the experiment directory
            got = catkd.study.run(study, smoke=True, storage=tmp / "store", name="tiny-smoke",
                                  trackers=("wandb", "mlflow"))
        assert got == exp and (exp / "trials.parquet").is_file()
        (tmp / "done").write_text("")
    return exp
