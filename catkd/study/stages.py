"""The stages of a study on Ray Tune: the Ray session, one Tuner per stage (search, then confirm),
and which configurations the confirm stage re-runs."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from catkd.study import checkpoints
from catkd.study.checks import run_config
from catkd.study.progress import make_callback, say
from catkd.study.keys import ROLE_KEY
from catkd.study.results import ARMS_DIR, SEED_KEY
from catkd.study.spec import Arm, StudySpec, arms, separate_searches

if TYPE_CHECKING:
    from catkd.storage import Location
    from catkd.study.results import ResultsWriter


# ---- Ray ----------------------------------------------------------------------------------------
# what the driver imports after Ray is up (the Tuner, ASHA, Optuna's RDB storage): ~1.5-2 s of CPU on
# a 2-core machine, while `ray.init` mostly waits for the processes it starts
# (catkd.study.search brings in optuna and Ray's OptunaSearch; ray.tune.schedulers brings in ray.tune)
_DRIVER_MODULES = ("ray.tune.schedulers", "sqlalchemy", "catkd.study.search", "catkd.study.trainable")


def _preimport(modules: tuple[str, ...] = _DRIVER_MODULES) -> Any:
    """Import `modules` in a daemon thread (started before `ray.init`, joined after it), so the
    imports overlap Ray's start-up instead of following it. A failure here is ignored: the same
    import then fails, with its normal traceback, where the module is used."""
    import importlib
    import threading

    def run() -> None:
        for m in modules:
            try:
                importlib.import_module(m)
            except Exception:  # noqa: BLE001 - re-raised at the real import
                pass

    t = threading.Thread(target=run, name="catkd-preimport", daemon=True)
    t.start()
    return t


def check_address(address: str, timeout: float = 10.0) -> None:
    """A cluster address answers (a TCP connection to its host and port), so a mistyped --address is
    a one-line error in seconds, not minutes of Ray's own retries. `auto` and `local` are not checked."""
    import re
    import socket

    from catkd.study.spec import StudyError

    m = re.match(r"^(?:ray://)?\[?([^\]/]+?)\]?:(\d+)/?$", address.strip())
    if address in ("auto", "local") or m is None:
        return
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout).close()
    except OSError as e:
        raise StudyError(f"--address {address}: no Ray cluster answers there ({e.strerror or e}); start one "
                         "(`ray start --head`) or give its address (head:6379, or ray://head:10001 for Ray Client)") from None


def _skip_callback_census() -> None:
    """Tune counts the callbacks it is given, for Ray's usage statistics, by importing Ray's MLflow, W&B,
    Comet and Aim integrations (MLflow itself: 0.8 s of CPU in every driver), even with the statistics
    off. With them off (catkd's default), nothing is counted, so nothing is imported."""
    if os.environ.get("RAY_USAGE_STATS_ENABLED") != "0":
        return
    from ray.air._internal import usage

    if hasattr(usage, "tag_callbacks"):
        usage.tag_callbacks = lambda callbacks: False


def start_ray(address: Optional[str], dashboard: bool) -> Any:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # A Ray this driver starts would first start one idle worker process per CPU, each importing Ray
    # (~0.5 s of CPU and a process per core), and Tune's trials start their own: none of them is used.
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    _skip_callback_census()
    # Ctrl-C must stop the study as a kill does, resumable. Tune's own SIGINT handler ends `fit()`
    # normally, so the stage would be recorded done and `--resume` would skip what was left of it.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    if ray.is_initialized():
        return None
    imports = _preimport()
    kw: dict[str, Any] = {"log_to_driver": False}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_address(address)
        ctx = ray.init(address=address, **kw)
    else:
        ctx = ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1", **kw)
    imports.join()
    url = getattr(ctx, "dashboard_url", None)
    if url:
        url = url if url.startswith("http") else f"http://{url}"
        say(f"Ray dashboard: {url}")
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "disabled" and not address:
            say("  Ray's token authentication is on: the page asks for the token in "
                f"{Path.home() / '.ray' / 'auth_token'} (API clients send 'Authorization: Bearer <token>')")
    return ctx


def teacher_cache_env(env: dict[str, str], explicit: bool) -> int:
    """Memory-mapped stores are coherent between the processes of one machine, not across machines
    on a network filesystem: with several nodes each keeps its own (its user cache directory),
    unless the user named the directory (CATKD_TEACHER_CACHE or fixed.RUN.TEACHER_CACHE)."""
    import ray

    from catkd.teacher_cache.provider import ENV_DIR

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and not explicit:
        env.pop(ENV_DIR, None)
        say(f"teacher cache: {len(nodes)} nodes: each keeps its own store (~/.cache/catkd/teacher on "
            "that node); set CATKD_TEACHER_CACHE to share one directory")
    return len(nodes)


def run_stage(
    spec: StudySpec,
    stage: str,
    root: Location,
    name: str,
    resume: bool,
    env: dict[str, str],
    writer: ResultsWriter,
    params_list: Optional[list[dict[str, Any]]] = None,
    trackers: tuple[str, ...] = (),
    study_dir: Optional[Path] = None,
    arm: Optional[Arm] = None,
) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from catkd.study.search import make_searcher
    from catkd.study.space import param_space
    from catkd.study.trackers import tracker_callbacks
    from catkd.study.trainable import train_trial

    import ray

    metric = spec.metric if stage == "search" else "test_acc"
    gpu = spec.resources.gpu
    if gpu and not ray.cluster_resources().get("GPU"):
        say(f"no GPU in this Ray cluster: trials run on CPU only ({spec.resources.cpu:g} CPU each)")
        gpu = 0
    resources = {"cpu": spec.resources.cpu, "gpu": gpu}
    exp = root / name
    assert study_dir is not None  # the experiment's (local copy of its) directory: optuna.db, trackers
    # Tune reads and writes the experiment where it is; a bucket through the pyarrow filesystem
    fs = None if root.local else root.fs
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, study=spec.model_dump(mode="json"), env={**env, **_storage_env()},
                             cpus=spec.resources.cpu, exp_path=exp.uri),
        resources,
    )
    mended: list = []
    restore = resume and tune.Tuner.can_restore(exp.path if fs else exp.uri, storage_filesystem=fs)
    set_aside = checkpoints.set_aside_unreadable(exp) if restore else None
    if set_aside:
        say(f"[{stage}] Tune's saved state was cut by the kill (Tune writes it in place): set aside in "
            f"{exp / checkpoints.SET_ASIDE}: {', '.join(set_aside)}")
        restore = checkpoints.readable_state(exp)
        if not restore:
            say(f"[{stage}] no earlier readable state: the stage starts over")
            if (study_dir / "optuna.db").is_file():  # the Optuna study starts over too; its old records kept
                shutil.copyfile(study_dir / "optuna.db", Path(exp.path) / checkpoints.SET_ASIDE / "optuna.db")
    if restore:
        say(f"[{stage}] resuming {exp}")
        mended = checkpoints.mend(exp)  # a state saved before Tune's last checkpoint swap names the old one
        tuner = tune.Tuner.restore(exp.path if fs else exp.uri, trainable=trainable, resume_errored=True,
                                   storage_filesystem=fs)
    else:
        if stage == "search":
            searcher = make_searcher(spec, metric, spec.mode, study_dir / "optuna.db", arm, start_over=bool(set_aside))
            space = param_space(spec)
            num_samples = spec.search.num_samples if searcher is not None else 1
            if spec.scheduler.type == "asha":
                scheduler = ASHAScheduler(
                    time_attr="epoch",
                    max_t=run_config(spec, {}).SOLVER.EPOCHS,
                    grace_period=spec.scheduler.grace_period,
                    reduction_factor=spec.scheduler.reduction_factor,
                    brackets=spec.scheduler.brackets,
                )
            else:
                scheduler = FIFOScheduler()
        else:  # confirm: explicit grid, full budget, no early stopping
            searcher, scheduler, num_samples = None, FIFOScheduler(), 1
            space = {"grid": tune.grid_search(params_list)}
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=num_samples,
                max_concurrent_trials=spec.max_concurrent,
                metric=metric,
                mode=spec.mode,
                reuse_actors=True,  # a new trial reuses a finished one's worker: no process start or torch import
                trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=root.path,
                storage_filesystem=fs,
                callbacks=[make_callback(writer, metric, stage),
                           *tracker_callbacks(list(trackers), spec, study_dir, study_dir.name, stage)],
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=0,
            ),
        )
    with ctrl_c_raises():
        results = tuner.fit()
    checkpoints.tidy(mended)
    return results


@contextlib.contextmanager
def ctrl_c_raises() -> Iterator[None]:
    """Ctrl-C inside the block raises KeyboardInterrupt, whatever SIGINT handler an earlier Tune run or a
    library left installed (Tune's own ends `fit()` normally and never restores the one before it). A
    press whose KeyboardInterrupt Tune or Ray caught still raises one when the block ends, so the stage
    is never recorded done."""
    pressed: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        pressed.append(signum)
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():  # signals reach only the main thread
        yield
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:  # None: the previous handler was not set from Python (an embedding host's)
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)
    if pressed:
        raise KeyboardInterrupt


def _storage_env() -> dict[str, str]:
    """The object-store endpoint and region the trials' nodes use as the driver does (credentials are
    not passed on: each node has its own, from its environment or instance role)."""
    keys = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")
    return {k: os.environ[k] for k in keys if os.environ.get(k)}


def confirm_params(spec: StudySpec, trials: list[dict[str, Any]],
                   local_dir: Callable[[str], Path] = Path) -> list[dict[str, Any]]:
    """Each arm's top-k search configurations (by the study metric at their best epoch), and with
    `confirm.preset` the arm's preset settings, x the confirm seeds."""
    assert spec.confirm is not None
    key = "best_val_acc" if spec.metric == "val_acc" else "best_test_acc"
    study_arms = separate_searches(spec)
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for t in trials:
        if t["stage"] == "search" and t.get(key) is not None:
            by_arm.setdefault(arm_of(local_dir(t["trial_dir"])), []).append(t)
    out: list[dict[str, Any]] = []
    for label in [a.label for a in study_arms] or [""]:  # a single search runs in <study> itself
        out += _top_k(spec, by_arm.get(label, []), key, local_dir)
    if spec.confirm.preset:
        for a in study_arms or (arms(spec) if spec.search.algorithm != "grid" else [Arm("", {}, {})]):
            out += [{**a.constants, ROLE_KEY: "preset", SEED_KEY: s} for s in spec.confirm.seeds]
    return out


def _top_k(spec: StudySpec, pool: list[dict[str, Any]], key: str,
           local_dir: Callable[[str], Path]) -> list[dict[str, Any]]:
    assert spec.confirm is not None
    finished = [t for t in pool if t["status"] == "finished"]
    pool = finished if len(finished) >= spec.confirm.top_k else pool
    pool = sorted(pool, key=lambda t: t[key], reverse=spec.mode == "max")
    out: list[dict[str, Any]] = []
    seen: list[dict[str, Any]] = []
    for t in pool:
        params = _params_of(local_dir(t["trial_dir"]))
        params.pop(SEED_KEY, None)
        if params in seen:
            continue
        seen.append(params)
        role = {ROLE_KEY: "tuned"} if spec.confirm.preset else {}
        out += [{**params, **role, SEED_KEY: s} for s in spec.confirm.seeds]
        if len(seen) == spec.confirm.top_k:
            break
    return out


def arm_of(trial_dir: Path) -> str:
    """The arm a search trial belongs to: its experiment's folder under <study>/arms, else ""."""
    return trial_dir.parent.name if trial_dir.parent.parent.name == ARMS_DIR else ""


def _params_of(trial_dir: Path) -> dict[str, Any]:
    from catkd.study.space import trial_params

    return trial_params(json.loads((trial_dir / "params.json").read_text()))
