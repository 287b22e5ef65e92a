"""Fault injection on whole studies: a worker node lost mid-trial, on a shared disk and in a bucket.
(The driver SIGKILLed in each stage and resumed is tests/test_resume.py; `python
scripts/fault_injection.py --kills 5` kills this file's study's driver at random moments, many times.)"""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from _helpers import kill_orphans

pytestmark = [pytest.mark.ray, pytest.mark.slow]

STUDY = {
    "name": "faults",
    "description": "fault injection",
    "base": "cifar100/CAT_KD/res56_res20",
    "fixed": {"normalize": True, "lr": 0.1},
    "space": {"beta": {"grid": [5.0, 50.0]}, "cam_resolution": {"grid": [1, 2]}},
    "search": {"algorithm": "grid"},
    "scheduler": {"type": "fifo"},
    "metric": "test_acc",
    "smoke": {"epochs": 4, "teacher": "resnet8", "student": "resnet8", "teacher_epochs": 2,
              # what is checked (every trial and epoch once, results equal) needs no learning: few images
              "dataset": {"NUM_CLASSES": 4, "TRAIN_PER_CLASS": 40, "TEST_PER_CLASS": 10, "IMAGE_SIZE": 16},
              "val_size": 0,
              "max_concurrent": 2},
}


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
