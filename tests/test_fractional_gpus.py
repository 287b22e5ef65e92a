"""Fractional GPUs: a study asking `resources: {gpu: 0.25}` runs 4 trials per GPU at once, each given
one GPU id, on every node of a Ray cluster; `--dry-run --address` counts the same slots node by node;
the live table shows the GPU ids Ray gave. The cluster's GPUs are logical (no CUDA here): each trial
says in its log that it trains on the CPU."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import yaml

from _helpers import kill_orphans
from catkd.study.slots import cluster_slots
from catkd.study.progress import progress_table

CPU_LINE = "but torch sees no CUDA here: training on the CPU"

STUDY = {
    "name": "fracgpu",
    "description": "a quarter of a GPU per trial",
    "base": "cifar100/vanilla/resnet20",  # no teacher to train
    "fixed": {"normalize": True},
    "space": {"lr": {"grid": [round(0.01 * i, 2) for i in range(1, 11)]}},  # 10 trials for 8 slots
    "search": {"algorithm": "grid"},
    "scheduler": {"type": "fifo"},
    "metric": "test_acc",
    "smoke": {"epochs": 1, "student": "resnet8", "val_size": 0, "max_concurrent": 10,
              "dataset": {"NUM_CLASSES": 4, "TRAIN_PER_CLASS": 100, "TEST_PER_CLASS": 30, "IMAGE_SIZE": 16},
              # CPU is not what binds: 4 CPUs a node hold 16 such trials, its GPU 4
              "resources": {"cpu": 0.25, "gpu": 0.25}},
}

# Run in a subprocess with its own RAY_TMPDIR (its orphans are killed by that path): a cluster of a
# head without CPUs and two worker nodes of 4 CPUs and 1 GPU each; the dry run and the study are run
# against it as a user would (--address), through the command's main in that process; then the actor
# table (kept for dead actors too) says which node each trial's process ran on, and the worker logs
# what each trial printed.
CLUSTER_SCRIPT = r"""
import contextlib, io, json, sys
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from ray._private.state import actors
from catkd.study.__main__ import main

study, storage, ray_tmp = sys.argv[1], sys.argv[2], Path(sys.argv[3])
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
for _ in range(2):
    cluster.add_node(num_cpus=4, num_gpus=1)
cluster.wait_for_nodes()
argv = [study, "--smoke", "--no-dashboard", "--storage", storage, "--address", cluster.address]


def command(args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = main(args)
    return [rc, out.getvalue()]


dry = command(argv + ["--dry-run"])
run = command(argv)
if not ray.is_initialized():
    ray.init(address=cluster.address, log_to_driver=False)
nodes = {a["Pid"]: a["Address"]["NodeID"] for a in actors().values() if a["ActorClassName"].endswith("ImplicitFunc")}
logs = {int(p.stem.rsplit("-", 1)[1]): p.read_text(errors="replace") for p in ray_tmp.rglob("worker-*.out")}
print(json.dumps({"dry": dry, "run": run, "head": cluster.head_node.node_id, "node_of_pid": nodes, "worker_logs": logs}))
ray.shutdown()
cluster.shutdown()
"""


def run_on_cluster(tmp: Path, gpu: float = 0.25) -> tuple[dict, Path]:
    """The dry run and the study (a quarter of a GPU per trial, or `gpu`) on the 2-node cluster."""
    study = tmp / "fracgpu.yaml"
    study.write_text(yaml.safe_dump({**STUDY, "smoke": {**STUDY["smoke"], "resources": {"cpu": 0.25, "gpu": gpu}}}))
    ray_tmp = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / f"fracgpu-{os.getpid()}"
    ray_tmp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    try:
        out = subprocess.run([sys.executable, "-c", CLUSTER_SCRIPT, str(study), str(tmp / "s"), str(ray_tmp)],
                             env=env, capture_output=True, text=True, timeout=600)
    finally:
        kill_orphans(ray_tmp)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), tmp / "s" / "fracgpu-smoke"


def trial_spans(exp: Path, node_of_pid: dict[str, str]) -> list[tuple[str, float, float]]:
    """(node, start, end) of each trial, from Tune's result.json rows: the last row's `timestamp`
    (whole seconds, rounded down) less the trial's `time_total_s`. Each span is cut to lie within the
    trial's run (its start moved 1 s later for the rounding), so the overlaps counted are ones that
    happened: never more than there were."""
    spans = []
    for t in pq.read_table(exp / "trials.parquet").to_pylist():
        rows = [json.loads(line) for line in (Path(t["trial_dir"]) / "result.json").read_text().splitlines()]
        assert len({r["pid"] for r in rows}) == 1  # one process ran the trial (nothing was retried)
        end = rows[-1]["timestamp"]
        spans.append((node_of_pid[str(rows[-1]["pid"])], end - rows[-1]["time_total_s"] + 1, end))
    return spans


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most spans that hold one moment (open intervals: one ending as another starts is not two)."""
    edges = sorted({x for s in spans for x in s})
    moments = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
    return max((sum(s < m < e for s, e in spans) for m in moments), default=0)


@pytest.mark.ray
@pytest.mark.slow
def test_a_quarter_gpu_per_trial_runs_4_trials_per_gpu_on_each_node_and_the_dry_run_counts_8(tmp_path):
    out, exp = run_on_cluster(tmp_path)
    dry_rc, dry = out["dry"]
    assert dry_rc == 0, dry[-3000:]
    # the dry run counted the slots node by node on the cluster: 4 per GPU, not this machine's cores
    assert "2 node(s) (1 more fit no trial): 8 CPU / 0.25 per trial, 2 GPU / 0.25 per trial = 8 slots" in dry, dry
    assert "at 8 concurrent trial(s) (max_concurrent 10; the Ray cluster at " in dry, dry
    rc, log = out["run"]
    assert rc == 0, log[-3000:]

    trials = pq.read_table(exp / "trials.parquet").to_pylist()
    assert len(trials) == 10 and all(t["status"] == "finished" for t in trials)
    assert all(re.fullmatch(r"\d+", t["gpu_ids"] or "") for t in trials), [t["gpu_ids"] for t in trials]

    spans = trial_spans(exp, out["node_of_pid"])
    nodes = {n for n, _, _ in spans}
    assert len(nodes) == 2 and out["head"] not in nodes  # both GPU nodes ran trials; the head (no CPU) none
    per_node = {n: most_at_once([(s, e) for m, s, e in spans if m == n]) for n in nodes}
    assert max(per_node.values()) == 4, per_node  # 4 trials shared one GPU at once, never more
    assert most_at_once([(s, e) for _, s, e in spans]) <= 8

    # the GPU Ray gave is logical here: every trial's process said it trains on the CPU
    pids = {str(json.loads((Path(t["trial_dir"]) / "result.json").read_text().splitlines()[0])["pid"])
            for t in trials}
    assert all(CPU_LINE in out["worker_logs"].get(p, "") for p in pids), sorted(out["worker_logs"])


def test_the_dry_run_counts_a_clusters_slots_node_by_node_as_ray_places_trials():
    head = {"CPU": 0.0, "memory": 1e9}
    gpu_node = {"CPU": 4.0, "GPU": 1.0, "memory": 1e9}
    assert cluster_slots(0.25, 0.25, [head, gpu_node, gpu_node]) == (
        8, "2 node(s) (1 more fit no trial): 8 CPU / 0.25 per trial, 2 GPU / 0.25 per trial = 8 slots")
    # CPU binds on a node with few cores: 2 CPUs hold 2 trials of 1 CPU, whatever its GPU holds
    assert cluster_slots(1, 0.25, [{"CPU": 2.0, "GPU": 1.0}, gpu_node])[0] == 2 + 4
    # a trial never spans nodes: two half GPUs on two nodes do not make one whole GPU
    assert cluster_slots(0.25, 1, [{"CPU": 4.0, "GPU": 0.5}, {"CPU": 4.0, "GPU": 0.5}])[0] == 0
    # 0.3 GPU / 0.1 is 3 trials, not 2 (floating point)
    assert cluster_slots(0.1, 0.1, [{"CPU": 1.0, "GPU": 0.3}])[0] == 3
    # a CPU-only study ignores the GPUs; one asking for a GPU on a cluster without any runs on CPU only
    assert cluster_slots(0.5, 0, [gpu_node])[0] == 8
    n, what = cluster_slots(1, 0.5, [{"CPU": 3.0}])
    assert n == 3 and "no GPU in the cluster: trials run on CPU only" in what


def _trial(tid: str, status: str, lr: float, gpu: float):
    from ray.tune.execution.placement_groups import PlacementGroupFactory

    return SimpleNamespace(trial_id=tid, status=status, config={"SOLVER.LR": lr},
                           placement_group_factory=PlacementGroupFactory([{"CPU": 0.25, "GPU": gpu}] if gpu else
                                                                         [{"CPU": 0.25}]))


def test_the_live_table_shows_each_trials_gpu_ids_only_when_the_study_asks_for_gpus():
    last = {"a": {"epoch": 2, "test_acc": 40.0, "gpu_ids": "0,1"}, "b": {"epoch": 1, "test_acc": 30.0, "gpu_ids": "1"}}
    table = progress_table([_trial("a", "RUNNING", 0.1, 0.25), _trial("b", "RUNNING", 0.2, 0.25),
                            _trial("c", "PENDING", 0.3, 0.25)], last, "test_acc")
    head, _, *rows = table.splitlines()[1:]
    assert head.split() == ["trial", "status", "settings", "gpu", "epoch", "test_acc"]
    cells = {r.split()[0]: r.split() for r in rows}
    assert cells["a"][3] == "0,1" and cells["b"][3] == "1"  # the ids as text, several ids in one cell
    assert cells["c"][:2] == ["c", "pending"] and len(cells["c"]) == 3  # not started: blank
    cpu_only = progress_table([_trial("a", "RUNNING", 0.1, 0)], {"a": {"epoch": 2, "test_acc": 40.0, "gpu_ids": ""}},
                              "test_acc")
    assert cpu_only.splitlines()[1].split() == ["trial", "status", "settings", "epoch", "test_acc"]
