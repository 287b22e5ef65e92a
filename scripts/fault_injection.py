"""Long fault-injection run: SIGKILL the study driver N times in a row (default 5) at random moments,
possibly mid-write, --resume each time (after the first kill from Tune's checkpoint race, as a
loaded machine can leave it), then check that every trial and every epoch is there once and that
each trial's every epoch equals its config trained straight through. Prints what it observed.
(The test suite kills a study in each of its stages: tests/test_resume.py.)

    python scripts/fault_injection.py [--kills 5] [--seed 0] [--epochs 10]
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _helpers import kill_orphans, leave_checkpoint_race, train_straight  # noqa: E402
from test_faults import STUDY  # noqa: E402


def _rows(exp: Path) -> int:
    try:
        return pq.read_table(exp / "results.parquet").num_rows
    except Exception:
        return 0


def kill_and_resume(tmp: Path, kills: int, seed: int = 0, epochs: int = 4) -> dict:
    """Run the study, SIGKILL the driver `kills` times at random moments after some progress,
    resume each time (after the first kill, from the checkpoint race `leave_checkpoint_race` leaves),
    then finish. Returns what was observed."""
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=10, help="epochs per trial (4 trials): room for the kills")
    args = ap.parse_args()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="catkd-faults-") as tmp:
        obs = kill_and_resume(Path(tmp), args.kills, args.seed, args.epochs)
        check_equal_to_uninterrupted(obs)
    print(f"driver SIGKILLed {len(obs['killed_at_rows'])} times (epoch rows on disk at each kill: "
          f"{obs['killed_at_rows']}), resumed each time ({obs['swapped']} trial(s) left with the checkpoint race): "
          f"4 trials once, {4 * args.epochs} epoch rows once, results equal to each trial's config trained straight "
          f"through; {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
