"""Fault injection on whole studies: the driver SIGKILLed several times in a row, each time
`--resume`d (the first time with Tune's checkpoint race left behind as a loaded machine leaves it);
at the end every trial appears once, every epoch row once, and each trial's results equal those of
its config trained straight through, in one go. CI runs 2 kills; `python scripts/fault_injection.py
--kills 5` the long one."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from _helpers import kill_orphans

pytestmark = [pytest.mark.ray, pytest.mark.slow]

STUDY = {
    "name": "faults",
    "description": "driver kills",
    "base": "cifar100/CAT_KD/res56_res20",
    "fixed": {"normalize": True, "lr": 0.1},
    "space": {"beta": {"grid": [5.0, 50.0]}, "cam_resolution": {"grid": [1, 2]}},
    "search": {"algorithm": "grid"},
    "scheduler": {"type": "fifo"},
    "metric": "test_acc",
    "smoke": {"epochs": 4, "teacher": "resnet8", "student": "resnet8", "teacher_epochs": 2,
              # what is checked (every trial and epoch once, results equal) needs no learning: few images
              "dataset": {"NUM_CLASSES": 4, "TRAIN_PER_CLASS": 40, "TEST_PER_CLASS": 10}, "val_size": 0,
              "max_concurrent": 2},
}


def _rows(exp: Path) -> int:
    try:
        return pq.read_table(exp / "results.parquet").num_rows
    except Exception:
        return 0


def leave_checkpoint_race(exp: Path) -> int:
    """Leave what a driver killed on a loaded machine can leave: Tune had saved a running trial's next
    checkpoint and deleted the one its saved state names. Renaming each trial's newest checkpoint up a
    number (for the trials Tune will restore) does that. Returns how many trials it did it to."""
    swapped = 0
    for d in exp.glob("trial_*"):
        ckpts = sorted(d.glob("checkpoint_*"))
        rows = (d / "result.json").read_text().splitlines() if (d / "result.json").is_file() else []
        if ckpts and not (rows and json.loads(rows[-1]).get("done")):  # a trial Tune will restore
            k = int(ckpts[-1].name.split("_")[1])
            ckpts[-1].rename(ckpts[-1].with_name(f"checkpoint_{k + 1:06d}"))
            swapped += 1
    return swapped


def kill_and_resume(tmp: Path, kills: int, seed: int = 0, epochs: int = 4, smoke_teacher=None) -> dict:
    """Run the study, SIGKILL the driver `kills` times at random moments after some progress,
    resume each time (after the first kill, from the checkpoint race `leave_checkpoint_race` leaves),
    then finish. Returns what was observed.
    `smoke_teacher(study, storage)`, if given, puts a ready smoke teacher in the storage first."""
    import random

    rnd = random.Random(seed)
    study = tmp / "faults.yaml"
    study.write_text(yaml.safe_dump({**STUDY, "smoke": {**STUDY["smoke"], "epochs": epochs}}))
    ray_tmp = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / f"faults-{os.getpid()}"
    ray_tmp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_AUTH_MODE": "disabled"}
    base = [sys.executable, "-m", "catkd.study", str(study), "--smoke", "--no-dashboard", "--storage", str(tmp / "s")]
    exp = tmp / "s" / "killed"
    killed_at, swapped = [], 0
    try:
        if smoke_teacher is not None:
            smoke_teacher(study, tmp / "s")
        for k in range(kills):
            cmd = base + ["--name", "killed"] + (["--resume"] if k else [])
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            start_rows = _rows(exp)
            wait_rows = start_rows + rnd.randint(1, 3)
            deadline = time.time() + 300
            while _rows(exp) < wait_rows and proc.poll() is None and time.time() < deadline:
                time.sleep(0.2)
            time.sleep(rnd.uniform(0, 2.0))  # a random point, possibly mid-write
            if proc.poll() is not None:
                break  # it finished before we could kill it
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_at.append(_rows(exp))
            kill_orphans(ray_tmp)
            if k == 0:
                swapped = leave_checkpoint_race(exp)
        final = subprocess.run(base + ["--name", "killed", "--resume"], env=env, capture_output=True, text=True,
                               timeout=900)
        kill_orphans(ray_tmp)
        assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    finally:
        kill_orphans(ray_tmp)
    return {"killed": exp, "killed_at_rows": killed_at, "epochs": epochs, "swapped": swapped}


def train_straight(trial_dir: Path, out: Path) -> list[tuple]:
    """(epoch, train loss, test accuracy) of each epoch of a trial's own config (`run/config.yaml`, what
    its Trainer was built from: the study's settings, its data, its teacher) trained straight through
    in this process, with the one thread a trial computes with."""
    import torch

    from catkd import train
    from catkd.train import load_config

    cfg = load_config(trial_dir / "run" / "config.yaml", quiet=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [(m["epoch"], m["train_loss"], m["test_acc"]) for m in train.run(cfg, out_dir=out, log=lambda s: None).history]
    finally:
        torch.set_num_threads(threads)


def check_equal_to_uninterrupted(obs: dict) -> None:
    key = ("CAT_KD.LOSS.CAT_loss_weight", "CAT_KD.LOSS.CAM_RESOLUTION")
    trials = pq.read_table(obs["killed"] / "trials.parquet").to_pylist()
    rows = pq.read_table(obs["killed"] / "results.parquet").to_pylist()
    assert len(trials) == 4 and len({t["trial_id"] for t in trials}) == 4  # every trial exactly once
    assert all(t["status"] == "finished" for t in trials)
    pairs = [(r["trial_id"], r["epoch"]) for r in rows]
    n = obs["epochs"]
    assert len(pairs) == len(set(pairs)) == 4 * n  # every epoch row exactly once
    for t in trials:  # epochs continuous 1..n
        assert sorted(r["epoch"] for r in rows if r["trial_id"] == t["trial_id"]) == list(range(1, n + 1))
    assert {tuple(t[k] for k in key) for t in trials} == {(5.0, 1), (5.0, 2), (50.0, 1), (50.0, 2)}  # the grid, each once
    for t in trials:  # every epoch's numbers, to the last bit, those of the trial's config trained straight through
        got = sorted((r["epoch"], r["train_loss"], r["test_acc"]) for r in rows if r["trial_id"] == t["trial_id"])
        assert got == train_straight(Path(t["trial_dir"]), obs["killed"].parent / f"straight-{t['trial_id']}"), t["trial_id"]


def test_study_killed_twice_and_resumed_equals_an_uninterrupted_run(tmp_path, smoke_teacher):
    obs = kill_and_resume(tmp_path, kills=int(os.environ.get("CATKD_FAULT_KILLS", "2")), smoke_teacher=smoke_teacher)
    assert obs["killed_at_rows"], "the driver was never killed"
    assert obs["swapped"], "no trial left to restore at the first kill: the checkpoint race was not tried"
    check_equal_to_uninterrupted(obs)


NODE_LOSS_SCRIPT = r"""
import json, sys, threading, time
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from catkd.storage import location
from catkd.study import runner
from catkd.study.load import load_study

study = Path(sys.argv[1])
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
workers = [cluster.add_node(num_cpus=1), cluster.add_node(num_cpus=1)]
ray.init(address=cluster.address, log_to_driver=False)
spec = load_study(study, smoke=True)

for where in sys.argv[2:]:  # a directory, then s3://bucket/prefix: the same study on the same cluster
    storage = location(where)
    exp = storage / "nodeloss"
    removed = {}

    def reported():
        return sum(len((exp / rel).read_bytes().splitlines()) for rel in exp.files() if rel.endswith("/result.json"))

    def remove_worker_mid_trial():
        deadline = time.time() + 300
        while time.time() < deadline:
            rows = reported()
            if rows >= 2:
                from ray._private.state import actors  # straight from the GCS (no dashboard here)
                nodes = {a["Address"]["NodeID"] for a in actors().values()
                         if a.get("ActorClassName", "").endswith("ImplicitFunc") and a.get("State") in ("ALIVE", 2)}
                victim = next((w for w in workers if w.node_id in nodes), None)
                if victim is not None:  # the node a running trial is on
                    cluster.remove_node(victim)
                    workers.remove(victim)
                    removed["rows"] = rows
                    return
            time.sleep(0.05 if storage.local else 0.3)

    print(f"=== {where}", flush=True)
    remover = threading.Thread(target=remove_worker_mid_trial, daemon=True)
    remover.start()
    rc = runner.run_study(spec, str(study), storage, "nodeloss", address=cluster.address, dashboard=False)
    remover.join(5)
    print(json.dumps({"rc": rc, "removed_at_rows": removed.get("rows")}), flush=True)
    workers.append(cluster.add_node(num_cpus=1))  # back to two workers for the next study
ray.shutdown()
cluster.shutdown()
"""


def test_losing_a_worker_node_mid_trial_retries_it_from_its_checkpoint_on_a_disk_and_in_a_bucket(tmp_path, smoke_teacher, s3):
    """On a shared disk, and in object storage: there the retried trial's checkpoint exists only in the
    bucket (its node's scratch copy went with the node), so resuming past epoch 1 means it was read there.
    One cluster (a head without CPUs and two 1-CPU workers) runs both studies, a worker node removed in
    each (and a new one added after the first)."""
    import json

    from catkd.storage import location

    spec = dict(STUDY, space={"beta": {"grid": [5.0, 50.0]}})
    spec["smoke"] = dict(STUDY["smoke"], epochs=8)
    study = tmp_path / "nodeloss.yaml"
    study.write_text(yaml.safe_dump(spec))
    ray_tmp = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / f"nodeloss-{os.getpid()}"
    ray_tmp.mkdir(parents=True, exist_ok=True)
    storages = {"disk": str(tmp_path / "s"), "s3": f"{s3.uri}/studies"}
    # with a URI storage the driver looks for the smoke teacher in <CATKD_CACHE>/teachers, with a directory
    # in <storage>/.cache/teachers
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_AUTH_MODE": "disabled", "CATKD_CACHE": str(tmp_path / ".cache")}
    smoke_teacher(study, tmp_path)
    smoke_teacher(study, tmp_path / "s")
    try:
        out = subprocess.run([sys.executable, "-c", NODE_LOSS_SCRIPT, str(study), *storages.values()], env=env,
                             capture_output=True, text=True, timeout=600)
    finally:
        kill_orphans(ray_tmp)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    said = dict(zip(storages, out.stdout.split("=== ")[1:]))
    assert list(said) == ["disk", "s3"], out.stdout[-3000:]
    for where, storage in storages.items():
        log = said[where]
        result = json.loads(log.strip().splitlines()[-1])
        assert result["rc"] == 0 and result["removed_at_rows"] is not None, where
        exp = location(storage) / "nodeloss"
        trials = pq.read_table(io.BytesIO((exp / "trials.parquet").read_bytes())).to_pylist()
        rows = pq.read_table(io.BytesIO((exp / "results.parquet").read_bytes())).to_pylist()
        assert len(trials) == 2 and all(t["status"] == "finished" for t in trials), where
        for t in trials:  # epoch rows continuous, each once
            assert sorted(r["epoch"] for r in rows if r["trial_id"] == t["trial_id"]) == list(range(1, 9)), where
        assert "FAILED (worker or node lost, failure 1)" in log, log[-3000:]  # the lost node's trial
        # with several nodes, the teacher cache is each node's own, and the driver says so (not silently)
        line = "teacher cache: on each node's local disk" if where == "s3" else "teacher cache: 3 nodes: each keeps its own store"
        assert line in log, log[-3000:]
        raw = {t["trial_id"]: (location(t["trial_dir"]) / "result.json").read_bytes().decode().splitlines() for t in trials}
        epochs = {k: [json.loads(line)["epoch"] for line in v] for k, v in raw.items() if v}
        # restarted from its last checkpoint: after the failure it does not start again at epoch 1
        assert all(e.count(1) == 1 for e in epochs.values()), (where, epochs)
