"""A study whose --storage is object storage (s3://, against moto's S3 server): it runs, is killed and
resumed from what the bucket holds, leaves nothing of the experiment on the local disk, and its report
is read from (and written to) the bucket."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from _helpers import TINY, epoch_rows, kill_orphans


def _results(s3, prefix: str) -> dict[str, list[dict]]:
    """{trial folder (relative to the experiment): its epoch rows in Tune's result.json}, from the bucket."""
    return {k[len(prefix):-len("/result.json")]: epoch_rows(s3.read(k))
            for k in s3.objects(prefix) if k.endswith("/result.json")}


@pytest.mark.ray
def test_a_smoke_study_on_s3_killed_mid_search_resumes_from_the_bucket_losing_and_repeating_nothing(
        tmp_path, s3, smoke_teacher, monkeypatch, capsys):
    data = yaml.safe_load(TINY)
    data["confirm"] = {"top_k": 1, "seeds": [1, 2]}
    data["smoke"]["dataset"].update(TRAIN_PER_CLASS=40, TEST_PER_CLASS=10)  # what is checked needs no learning
    # 4 search trials: the kill at 6 epochs still lands mid-search (Tune puts every trial's files again at
    # each trial checkpoint, so a bucket's requests grow with the square of the trials)
    data["smoke"]["num_samples"] = 4
    work = tmp_path / "cwd"  # the user's working directory: nothing of the experiment may land here
    work.mkdir()
    study = work / "tiny.yaml"
    study.write_text(yaml.safe_dump(data, sort_keys=False))
    cache = tmp_path / "home" / ".cache"  # this machine's caches (the smoke teacher, fetched copies)
    smoke_teacher(study, cache.parent)  # -> <cache>/teachers: where the driver looks with CATKD_CACHE
    ray_tmp = Path(os.environ["RAY_TMPDIR"]) / "s3study"
    ray_tmp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "PYTHONUNBUFFERED": "1", "CATKD_CACHE": str(cache),
           "CATKD_SCRATCH": str(tmp_path / "scratch"), "HOME": str(tmp_path / "home")}
    storage = f"{s3.uri}/studies"
    prefix = "studies/tiny-smoke/"
    cmd = [sys.executable, "-m", "catkd.study", str(study), "--smoke", "--no-dashboard", "--storage", storage]

    # kill: SIGKILL the driver once the bucket holds 6 epochs of the search
    proc = subprocess.Popen(cmd, env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while sum(len(r) for r in _results(s3, prefix).values()) < 6:
            assert proc.poll() is None, f"the study ended (rc {proc.returncode}) before the moment to kill it"
            assert time.time() < deadline, "the bucket never held 6 epochs"
            time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        kill_orphans(ray_tmp)
    at_kill = {t: len(r) for t, r in _results(s3, prefix).items() if r and r[-1].get("done")}
    assert s3.objects(prefix + "study.yaml"), "study.yaml is the first thing the driver puts in the bucket"

    # a fresh scratch directory: --resume reads back only what the bucket holds
    env["CATKD_SCRATCH"] = str(tmp_path / "scratch2")
    done = subprocess.run(cmd + ["--resume"], env=env, cwd=work, capture_output=True, text=True, timeout=900)
    kill_orphans(ray_tmp)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"experiment directory {storage}/tiny-smoke" in done.stdout
    assert "teacher cache: on each node's local disk" in done.stdout  # said, not silently recomputed

    objects = s3.objects(prefix)
    for name in ("study.yaml", "stage.json", "optuna.db", "results.parquet", "trials.parquet"):
        assert prefix + name in objects, sorted(objects)
    trials = pq.read_table(io.BytesIO(s3.read(prefix + "trials.parquet"))).to_pylist()
    rows = pq.read_table(io.BytesIO(s3.read(prefix + "results.parquet"))).to_pylist()
    search = [t for t in trials if t["stage"] == "search"]
    confirm = [t for t in trials if t["stage"] == "confirm"]
    assert len(search) == 4 and len(confirm) == 2 and all(t["status"] == "finished" for t in confirm)
    assert all(t["trial_dir"].startswith(f"{storage}/tiny-smoke/") for t in trials)
    raw = _results(s3, prefix)
    for t, n in at_kill.items():  # ended before the kill: not run again
        assert len(raw[t]) == n, t
    for t in trials:
        epochs = [r["epoch"] for r in raw[t["trial_dir"][len(f"{storage}/tiny-smoke/"):]]]
        assert epochs.count(1) == 1, (t["trial_id"], epochs)  # started once
        # none lost, each once, in the results: Tune's own result.json in a bucket can lack the epoch whose
        # checkpoint the restored trial continued from (Tune puts it back later than the checkpoint); the
        # results take that epoch from the trial's own record
        assert sorted(r["epoch"] for r in rows if r["trial_id"] == t["trial_id"]) == list(
            range(1, t["epochs_done"] + 1)), (t["trial_id"], epochs)
        assert set(epochs) <= set(range(1, t["epochs_done"] + 1)) and max(epochs) == t["epochs_done"], epochs
        # each trial's own files are in the bucket, beside Tune's: its settings and its best student
        run = t["trial_dir"][len(f"{s3.uri}/"):] + "/run/"
        assert run + "settings.json" in objects and run + "metrics.jsonl" in objects, t["trial_id"]
        if t["status"] == "finished":
            assert run + "student_best.pth" in objects
    # the Tune checkpoints a restore reads are in the bucket; the resume checkpoint only there
    assert any("/checkpoint_" in k for k in objects)
    # nothing of the experiment on the local disk: the working directory holds the study file only,
    # and a study that ends removes its scratch copies (the driver's and its trials'; a SIGKILLed
    # process cannot: the first run's stay in the temporary directory)
    assert sorted(p.name for p in work.iterdir()) == ["tiny.yaml"]
    assert not any(p.is_file() for p in (tmp_path / "scratch2").rglob("*"))

    # the report command reads the experiment from the bucket and, by default, writes beside it (its
    # main in this process: the command is `python analysis/report.py` around it)
    from analysis.report import main as report_main

    for var in ("HOME", "CATKD_CACHE"):
        monkeypatch.setenv(var, env[var])
    scratch = tmp_path / "scratch3"
    monkeypatch.setenv("CATKD_SCRATCH", str(scratch))
    monkeypatch.chdir(work)
    capsys.readouterr()
    assert report_main([f"{storage}/tiny-smoke"]) == 0
    assert f"wrote {storage}/tiny-smoke/report/report.md" in capsys.readouterr().out
    assert sorted(p.name for p in work.iterdir()) == ["tiny.yaml"]
    md = s3.read(prefix + "report/report.md").decode()
    assert "tiny" in md and "confirm" in md.lower()
    assert any(k.endswith(".png") for k in s3.objects(prefix + "report/"))
    # and, from Python, into a local folder: the same report
    import analysis

    assert analysis.report(f"{storage}/tiny-smoke", out=tmp_path / "rep") == tmp_path / "rep" / "report.md"
    assert (tmp_path / "rep" / "report.md").read_text() == md
    # the local copies a report reads and writes through are gone once it is done; a loaded study's
    # copy lives as long as the study
    import gc

    gc.collect()
    assert not any(p.is_file() for p in scratch.rglob("*"))
    study = analysis.load(f"{storage}/tiny-smoke")
    assert (study.path / "trials.parquet").is_file() and study.path.is_relative_to(scratch)
    study.close()
    assert not study.path.exists()
    study = analysis.load(f"{storage}/tiny-smoke")
    del study
    gc.collect()
    assert not any(p.is_file() for p in scratch.rglob("*"))
