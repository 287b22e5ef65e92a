"""The tools researchers already use: the Optuna study in <experiment>/optuna.db (optuna-dashboard),
W&B and MLflow runs through Ray Tune's callbacks, and --dry-run's cost estimate."""
from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import optuna
import pyarrow.parquet as pq
import pytest
import yaml

from catkd.study import runner
from catkd.study.__main__ import main as study_main
from catkd.study.load import load_study

from _helpers import TINY


# the tests reading a finished study read conftest's `tiny_study`: TINY with this confirm stage, run
# with --log wandb --log mlflow
def _study_file(tmp: Path) -> Path:
    data = yaml.safe_load(TINY)
    data["confirm"] = {"top_k": 1, "seeds": [1]}  # real scale; --smoke confirms with seeds 1, 2
    p = tmp / "tiny.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def _trials(exp: Path) -> list[dict]:
    return pq.read_table(exp / "trials.parquet").to_pylist()


def _rows(exp: Path) -> list[dict]:
    return pq.read_table(exp / "results.parquet").to_pylist()


@pytest.mark.ray
def test_the_study_driver_prefetches_teacher_targets_and_stops_the_prefetcher_before_it_returns(tiny_study):
    # the tiny study runs one trial at a time on 2 cores: the other core is the prefetcher's when idle;
    # under the parallel suite another test may keep it busy the whole time, and then the prefetcher
    # must have spent its life waiting at the idle gate, not computing
    from catkd.teacher_cache.prefetch import totals

    stats = totals(tiny_study)
    assert stats["priority"] in ("SCHED_IDLE", "nice 19")
    assert stats["teacher_images"] > 0 or stats["gate_wait_s"] > 0, stats
    assert len(stats["pids"]) == 1
    for pid in stats["pids"]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone when run_study returned
    rows = _rows(tiny_study)
    trials_forwarded = sum(int(r["teacher_images"]) for r in rows)
    store = tiny_study.parent / ".cache" / "teacher"
    filled = sum(int(np.count_nonzero(np.fromfile(d / "flags.bin", dtype=np.uint8)))
                 for d in store.iterdir() if (d / "flags.bin").is_file())
    assert trials_forwarded + stats["teacher_images"] == filled  # each entry forwarded once, by someone


def test_optuna_db_holds_the_search_trials_with_their_states_and_intermediate_values(tiny_study):
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tiny_study / 'optuna.db'}")
    search = [t for t in _trials(tiny_study) if t["stage"] == "search"]
    assert len(study.trials) == len(search) == 6
    states = sorted(t.state.name for t in study.trials)
    assert states == sorted("PRUNED" if t["status"] == "stopped" else "COMPLETE" for t in search)
    assert "PRUNED" in states
    rows = [r for r in _rows(tiny_study) if r["stage"] == "search"]
    by_beta = {}
    for r in rows:
        by_beta.setdefault(r["CAT_KD.LOSS.CAT_loss_weight"], {})[r["epoch"]] = r["val_acc"]
    for t in study.trials:  # every epoch the trial reported, at its epoch, with its value
        assert t.intermediate_values == pytest.approx(by_beta[t.params["CAT_KD.LOSS.CAT_loss_weight"]])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ray
def test_optuna_dashboard_serves_the_study_on_localhost(tiny_study):
    port = _free_port()
    exe = Path(sys.executable).parent / "optuna-dashboard"
    proc = subprocess.Popen([str(exe), f"sqlite:///{tiny_study / 'optuna.db'}", "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body, t0 = None, time.time()
        while body is None and time.time() - t0 < 60:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    body = json.loads(r.read())
            except OSError:
                time.sleep(0.5)
        assert body is not None, "optuna-dashboard did not answer"
        summaries = body["study_summaries"]
        assert [s["study_name"] for s in summaries] == ["tiny"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summaries[0]['study_id']}",
                                    timeout=10) as r:
            detail = json.loads(r.read())
        assert len(detail["trials"]) == 6
        assert {t["state"] for t in detail["trials"]} >= {"Pruned", "Complete"}
    finally:
        proc.terminate()
        proc.wait(10)


def wandb_records(path: Path):
    """The protobuf records of an offline W&B run file: wandb's LevelDB-style log (a 7-byte file
    header ':W&B', then 32 KiB blocks of records, each with a (crc32, length, type) header and split
    FULL / FIRST, MIDDLE.., LAST across blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, hdr = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    pos, buf, out = hdr, b"", []
    while pos + hdr <= len(data):
        left = block - pos % block
        if left < hdr:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + hdr])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + hdr:pos + hdr + length]
        pos += hdr + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            r = pb.Record()
            r.ParseFromString(buf)
            out.append(r)
            buf = b""
    return out


@pytest.mark.ray
def test_wandb_has_one_offline_run_per_trial_grouped_by_study_and_stage_with_every_epoch(tiny_study):
    trials = _trials(tiny_study)
    runs = sorted((tiny_study / "wandb").glob("offline-run-*"))
    assert len(runs) == len(trials) == 8  # 6 search + 1 config x the 2 smoke confirm seeds
    rows = _rows(tiny_study)
    for run in runs:
        (f,) = run.glob("run-*.wandb")
        meta, history, config = None, [], {}
        for r in wandb_records(f):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                meta = r.run
                config.update({i.key: json.loads(i.value_json) for i in r.run.config.update})
            elif kind == "config":
                config.update({i.key: json.loads(i.value_json) for i in r.config.update})
            elif kind == "history":
                history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
        trial = next(t for t in trials if t["trial_id"] == meta.run_id)
        assert meta.project == "catkd" and meta.run_group == f"tiny/{trial['stage']}"
        assert config["stage"] == trial["stage"] and config["study"] == "tiny"
        assert config["CAT_KD.LOSS.CAT_loss_weight"] == pytest.approx(trial["CAT_KD.LOSS.CAT_loss_weight"])
        assert config["DATASET.TYPE"] == "synthetic"
        mine = sorted((r["epoch"], r["test_acc"]) for r in rows if r["trial_id"] == trial["trial_id"])
        got = sorted((h["epoch"], h["test_acc"]) for h in history if "test_acc" in h)
        assert [e for e, _ in got] == [e for e, _ in mine]
        assert [v for _, v in got] == pytest.approx([v for _, v in mine])


@pytest.mark.ray
def test_mlflow_has_one_run_per_trial_with_its_settings_and_every_epoch(tiny_study):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tiny_study / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny-smoke")
    runs = client.search_runs([exp.experiment_id])
    trials = {t["trial_id"]: t for t in _trials(tiny_study)}
    assert len(runs) == len(trials) == 8
    stages = sorted(r.data.tags["stage"] for r in runs)
    assert stages == sorted(t["stage"] for t in trials.values())
    rows = _rows(tiny_study)
    for run in runs:
        tid = next(t for t in trials if t in run.data.tags["trial_name"])
        assert run.data.tags["study"] == "tiny"
        assert float(run.data.params["CAT_KD.LOSS.CAT_loss_weight"]) == pytest.approx(trials[tid]["CAT_KD.LOSS.CAT_loss_weight"])
        hist = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "test_acc"))
        want = [r["test_acc"] for r in sorted((r for r in rows if r["trial_id"] == tid), key=lambda r: r["epoch"])]
        assert [v for _, v in hist] == pytest.approx(want)


def test_mlflow_gets_each_results_metrics_in_one_batch_the_ones_rays_callback_logs_one_by_one(monkeypatch):
    """One request per epoch of a trial, not one per metric (each its own database transaction); the
    metrics, values and step are those Ray's own callback logs."""
    import mlflow
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    from catkd.study.trackers import batched_mlflow_callback

    class Client:  # records what reaches the tracking store
        calls: list = []

        def __init__(self, tracking_uri=None):
            pass

        def log_batch(self, run_id, metrics):
            self.calls.append(("batch", run_id, [(m.key, m.value, m.step) for m in metrics]))

        def log_metric(self, run_id, key, value, step=None):
            self.calls.append(("metric", run_id, [(key, value, step)]))

    monkeypatch.setattr(mlflow, "MlflowClient", Client)
    result = {"training_iteration": 3, "epoch": 3, "test_acc": 41.5, "train_loss": 1.25, "done": False,
              "trial_id": "abc", "gpu_ids": None, "config": {"SOLVER.LR": 0.1, "DISTILLER.TYPE": "CAT_KD"}}
    trial = object()
    ours = batched_mlflow_callback()(tracking_uri="sqlite:///unused.db", experiment_name="x")
    ours._trial_runs = {trial: "run-1"}
    ours.log_trial_result(3, trial, result)
    (kind, run, batch), = Client.calls
    assert kind == "batch" and run == "run-1"
    Client.calls.clear()
    rays = MLflowLoggerCallback(tracking_uri="sqlite:///unused.db", experiment_name="x")
    rays._trial_runs = {trial: "run-1"}
    monkeypatch.setattr(rays.mlflow_util, "_get_client", lambda: Client(), raising=False)
    monkeypatch.setattr(rays.mlflow_util, "_run_exists", lambda run_id: True)
    rays.log_trial_result(3, trial, result)
    one_by_one = [m for kind, _, ms in Client.calls for m in ms]
    assert {kind for kind, _, _ in Client.calls} == {"metric"} and len(Client.calls) == len(batch) == 6
    assert sorted(batch) == sorted(one_by_one)
    assert ("config/SOLVER.LR", 0.1, 3) in batch and not any(k in ("trial_id", "gpu_ids") for k, _, _ in batch)


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_a_missing_tracker_extra_is_exit_2_with_the_pip_command(tmp_path, monkeypatch, capsys, tracker):
    monkeypatch.setitem(sys.modules, tracker, None)  # import fails as if not installed
    p = _study_file(tmp_path)
    rc = study_main([str(p), "--smoke", "--no-dashboard", "--storage", str(tmp_path / "s"), "--log", tracker])
    assert rc == 2
    assert f"pip install 'catkd[{tracker}]'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_dry_run_prints_plan_and_estimate_writes_nothing_and_starts_no_ray(tmp_path, capsys, monkeypatch):
    import ray

    def no_ray(*a, **k):
        raise AssertionError("--dry-run started Ray")

    monkeypatch.setattr(ray, "init", no_ray)
    p = _study_file(tmp_path)
    rc = study_main([str(p), "--smoke", "--dry-run", "--storage", str(tmp_path / "s")])
    out = capsys.readouterr().out
    assert rc == 0 and not (tmp_path / "s").exists()
    assert "[search] 6 trials" in out and "[confirm] 2 trials" in out
    assert "at most 24 trial-epochs" in out  # 6 x 4 epochs
    assert "expected under ASHA" in out and "estimate:" in out and "device-hours" in out
    assert "img/s with the live teacher" in out and "teacher cache" in out


def test_dry_run_of_a_real_study_without_its_data_says_preflight_would_stop_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CATKD_DATA", str(tmp_path / "nodata"))
    p = _study_file(tmp_path)
    rc = study_main([str(p), "--dry-run", "--storage", str(tmp_path / "s"), "--set", "fixed.SOLVER.EPOCHS=2",
                     "--set", "search.num_samples=2"])
    captured = capsys.readouterr()
    assert "estimate:" in captured.out
    assert rc == 2 and "pre-flight" in captured.err and "CIFAR-100 not found" in captured.err
    assert not (tmp_path / "s").exists()


SMALL_RUN = ["DATASET.TYPE", "synthetic", "DATASET.SYNTHETIC.NUM_CLASSES", "4", "DATASET.SYNTHETIC.TRAIN_PER_CLASS",
             "20", "DATASET.SYNTHETIC.TEST_PER_CLASS", "5", "SOLVER.EPOCHS", "2", "DISTILLER.STUDENT", "resnet8",
             "RUN.PROGRESS", "none", "LOG.WANDB", "True", "EXPERIMENT.PROJECT", "mine"]


def test_catkd_train_honours_log_wandb_with_one_offline_run_and_a_log_per_epoch(tmp_path, monkeypatch):
    from catkd.train import main as train_main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    out = tmp_path / "run"
    assert train_main(["--cfg", "cifar100/vanilla/resnet20", *SMALL_RUN, "--out", str(out)]) == 0
    import wandb

    # wandb's service process writes the run file and lives on in this (test) process, as it does not in
    # `catkd.train`'s own, whose exit tears it down: tear it down so the file is complete before we read it
    wandb.teardown()
    (f,) = out.glob("wandb/offline-run-*/run-*.wandb")
    records = wandb_records(f)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.project == "mine"
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert [h["test_acc"] for h in history] == pytest.approx([m["test_acc"] for m in metrics])


def test_catkd_train_without_wandb_installed_says_so_and_trains(tmp_path, monkeypatch, capsys):
    from catkd.train import main as train_main

    monkeypatch.setitem(sys.modules, "wandb", None)
    assert train_main(["--cfg", "cifar100/vanilla/resnet20", *SMALL_RUN, "--out", str(tmp_path / "r")]) == 0
    assert "pip install 'catkd[wandb]'" in capsys.readouterr().err
    assert (tmp_path / "r" / "metrics.jsonl").is_file()


def test_progress_is_a_tqdm_bar_on_a_terminal_and_one_line_per_epoch_otherwise(tmp_path, capsys):
    from catkd.train import main as train_main

    base = [a for a in SMALL_RUN if a not in ("LOG.WANDB", "True")]
    assert train_main(["--cfg", "cifar100/vanilla/resnet20", *base, "RUN.PROGRESS", "bar", "--out", str(tmp_path / "a")]) == 0
    bar = capsys.readouterr()
    assert "epoch 1/2" in bar.err and "step" in bar.err and "\r" in bar.err  # tqdm's live bar
    assert train_main(["--cfg", "cifar100/vanilla/resnet20", *base, "--out", str(tmp_path / "b")]) == 0  # auto, no tty
    plain = capsys.readouterr()
    assert "\r" not in plain.err and "\r" not in plain.out
    assert [line.split()[1] for line in plain.out.splitlines() if line.startswith("epoch ")] == ["1/2", "2/2"]


def test_dry_run_names_the_teacher_cache_stores_and_their_sizes_before_anything_is_allocated(tmp_path, capsys):
    # beta_sweep searches R in {2, 4}: two stores, 8.2 and 27.7 GB at CIFAR-100 scale
    from catkd.study.estimate import plan
    from catkd.study.stores import store_sizes

    spec = load_study("studies/beta_sweep.yaml")
    sizes = store_sizes(spec, plan(spec))
    assert sorted(round(v / 1e9, 1) for v in sizes.values()) == [8.2, 27.7]
    assert all("resnet32x4" in k for k in sizes)
