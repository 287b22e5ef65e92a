"""Faults: a killed training run resumes bit for bit; corrupt, unsafe and unwritable files fail clearly
and leave what was written intact."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from catkd.train import main as train_main

pytestmark = pytest.mark.slow

# what is checked (bit-for-bit equality, every epoch once, files refused or kept) needs no learning
ARGS = ["DATASET.TYPE", "synthetic", "DATASET.SYNTHETIC.NUM_CLASSES", "4", "DATASET.SYNTHETIC.TRAIN_PER_CLASS", "60",
        "DATASET.SYNTHETIC.TEST_PER_CLASS", "20", "SOLVER.BATCH_SIZE", "32", "SOLVER.EPOCHS", "4",
        "SOLVER.LR_DECAY_STAGES", "[3]", "DISTILLER.STUDENT", "resnet8", "RUN.THREADS", "1",
        "RUN.PROGRESS", "none", "LOG.SAVE_CHECKPOINT_FREQ", "0"]


def train_cmd(prefix: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "catkd.train", "--cfg", "cifar100/vanilla/resnet8x4", *ARGS,
            "LOG.PREFIX", str(prefix), "EXPERIMENT.NAME", name, *extra]


def epochs_logged(run_dir: Path) -> int:
    try:
        return len((run_dir / "metrics.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def test_train_killed_with_sigkill_then_resumed_ends_bitwise_equal_to_uninterrupted(tmp_path):
    # the uninterrupted run goes on beside the killed one (one thread each)
    straight = subprocess.Popen(train_cmd(tmp_path, "straight"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc = subprocess.Popen(train_cmd(tmp_path, "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while epochs_logged(tmp_path / "killed") < 2 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # somewhere inside epoch 3 (or its checkpoint write)
    proc.wait()
    killed_at = epochs_logged(tmp_path / "killed")
    assert 2 <= killed_at < 4
    done = subprocess.run(train_cmd(tmp_path, "killed", "--resume"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stdout
    _, err = straight.communicate(timeout=600)
    assert straight.returncode == 0, err[-2000:]
    a = torch.load(tmp_path / "straight" / "checkpoint.pth", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoint.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    rows = [json.loads(l) for l in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]  # every epoch exactly once


def _run_one_epoch(tmp_path: Path, name: str) -> Path:
    rc = train_main(["--cfg", "cifar100/vanilla/resnet8x4", *ARGS, "SOLVER.EPOCHS", "1",
                     "LOG.PREFIX", str(tmp_path), "EXPERIMENT.NAME", name])
    assert rc == 0
    return tmp_path / name


def test_truncated_checkpoint_is_refused_with_exit_2_and_results_stay(tmp_path, capsys):
    run = _run_one_epoch(tmp_path, "t")
    metrics = (run / "metrics.jsonl").read_text()
    data = (run / "checkpoint.pth").read_bytes()
    (run / "checkpoint.pth").write_bytes(data[: len(data) // 2])
    rc = train_main(["--cfg", "cifar100/vanilla/resnet8x4", *ARGS, "LOG.PREFIX", str(tmp_path),
                     "EXPERIMENT.NAME", "t", "--resume"])
    assert rc == 2
    assert "cannot load checkpoint safely" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text() == metrics
    assert (run / "checkpoint.pth").stat().st_size == len(data) // 2  # nothing overwritten


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path, capsys):
    run = _run_one_epoch(tmp_path, "p")
    marker = tmp_path / "PWNED"
    payload = _Payload()
    payload.marker = marker
    torch.save({"model": payload}, run / "checkpoint.pth")  # what a malicious file would hold
    rc = train_main(["--cfg", "cifar100/vanilla/resnet8x4", *ARGS, "LOG.PREFIX", str(tmp_path),
                     "EXPERIMENT.NAME", "p", "--resume"])
    assert rc == 2 and not marker.exists()
    assert "cannot load checkpoint safely" in capsys.readouterr().err


def test_disk_full_while_checkpointing_keeps_the_last_checkpoint_and_says_so(tmp_path, monkeypatch, capsys):
    """ENOSPC from inside the write, after the temporary file exists and holds part of the data:
    atomic_write's own cleanup must remove it and leave the previous checkpoint intact."""
    import errno

    real_save = torch.save
    seen_tmp: list[Path] = []

    def save_until_the_disk_is_full(obj, f, *a, **k):
        name = Path(os.readlink(f"/proc/self/fd/{f.fileno()}")) if hasattr(f, "fileno") else Path("")
        if name.name.startswith(".checkpoint.pth.") and isinstance(obj, dict) and obj.get("epoch") == 2:
            f.write(b"half a checkpoint")
            f.flush()
            assert name.is_file()  # the temporary file is on disk when the write fails
            seen_tmp.append(name)
            raise OSError(errno.ENOSPC, "No space left on device", str(name))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    rc = train_main(["--cfg", "cifar100/vanilla/resnet8x4", *ARGS, "LOG.PREFIX", str(tmp_path), "EXPERIMENT.NAME", "f"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "--resume" in err
    assert seen_tmp and not seen_tmp[0].exists()  # the real cleanup removed it
    state = torch.load(tmp_path / "f" / "checkpoint.pth", weights_only=True)
    assert state["epoch"] == 1  # the epoch-1 checkpoint is intact and loadable
    assert not list((tmp_path / "f").glob(".checkpoint.pth.*"))  # no temporary file left behind


def test_unwritable_output_directory_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    rc = train_main(["--cfg", "cifar100/vanilla/resnet8x4", *ARGS, "LOG.PREFIX", str(blocker / "out")])
    assert rc == 1
    assert "cannot write the run's files" in capsys.readouterr().err


def test_unwritable_study_storage_exits_2_before_ray(tmp_path, monkeypatch, capsys):
    from catkd.study import runner
    from catkd.study.__main__ import main as study_main

    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    monkeypatch.setattr(runner, "start_ray", lambda *a, **k: pytest.fail("Ray was started"))
    repo = Path(__file__).resolve().parents[1]
    rc = study_main([str(repo / "studies" / "teachers.yaml"), "--smoke", "--no-dashboard", "--storage", str(blocker)])
    assert rc == 2
    assert "--storage" in capsys.readouterr().err
