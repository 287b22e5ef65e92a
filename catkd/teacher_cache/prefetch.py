"""Fill teacher cache stores ahead of the runs that will read them, from CPU time nobody else wants.

The views a run trains on are fixed by its seed and data settings (`TrainLoader.epoch_views`), so,
given the run configs and the seeds, every (image, view) entry those runs will ask for is known
before any of them starts. A prefetch process computes those entries at the lowest CPU priority the
OS has (Linux SCHED_IDLE; elsewhere nice 19): it gets a core only while the core would otherwise
wait, and it never takes or waits for an entry a run has claimed (`TeacherStore.fetch(wait=False)`).
It goes through the same Trainer, store and key as a run (`Trainer.fill_teacher_targets`), so the
values are the ones the run would have computed: the cache stays exact.

The job (a JSON file): `configs` (run configs, `Config.model_dump(mode="json")`), `stages` (lists of
seeds, filled in order, each epoch by epoch across its seeds), `gate` (wait for a spare core, default
true). The process stops when it has done everything, when it is stopped (SIGTERM) or when its parent
is gone. It counts its work in `prefetch-<k>.json` beside the job (`teacher_images`; `totals` sums
the files), so the teacher forwards of a set of runs are the runs' `teacher_images` plus that.

Started as `python -m catkd.teacher_cache.prefetch <job.json> <k>` by `start`.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import psutil

REPORT_EVERY_S = 2.0
JOB_FILE = ".prefetch-job.json"
# processes: each single-threaded and runs only on an idle core. One: two (so both cores idle while
# Ray starts or at the stage barrier fill at once) prefetched no more in beta_sweep --smoke here
# (12,000-17,300 teacher images vs 10,600-19,700 with one), since each pays its own start-up
PROCS = 1


def lowest_priority() -> str:
    """Run this process only when a core is otherwise idle; returns what was set."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # Linux
        return "SCHED_IDLE"
    except (AttributeError, OSError):
        try:
            os.nice(19)
            return "nice 19"
        except OSError:
            return "normal"


class IdleGate:
    """Compute only while the machine has a core to spare. SCHED_IDLE alone still takes ~8 % of a
    core that Ray's trial workers (nice 15) want; so the cores that were idle since the last look
    plus the ones this process used itself must reach `need`."""

    def __init__(self, need: float = 0.5, poll_s: float = 0.05):
        self.need, self.poll_s = need, poll_s
        self.cores = psutil.cpu_count() or 1
        self._last = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        """CPU seconds of all cores, of their idle time (with iowait), and of this process."""
        c = psutil.cpu_times()
        # guest time is inside user time (Linux): not counted twice, as psutil.cpu_percent does
        total = sum(c) - getattr(c, "guest", 0.0) - getattr(c, "guest_nice", 0.0)
        t = os.times()
        return total, c.idle + getattr(c, "iowait", 0.0), t.user + t.system

    def spare(self) -> float:
        """Cores spare (idle, or used by this process) since the last call."""
        now = self._sample()
        total, idle, own = (a - b for a, b in zip(now, self._last))
        self._last = now
        wall = total / self.cores  # seconds since the last call
        return self.cores * idle / total + own / wall if total > 0 else self.cores

    def wait(self, should_stop: Callable[[], bool]) -> bool:
        """Wait for a spare core; False if told to stop first."""
        while self.spare() < self.need:
            if should_stop():
                return False
            time.sleep(self.poll_s)
        return True


def run(job: dict[str, Any], out: Path, should_stop: Callable[[], bool] = lambda: False,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fill the stores of job['configs'] for the seeds of job['stages'], epoch by epoch; returns the
    counts (also written to `out`, atomically, every REPORT_EVERY_S and at the end)."""
    from catkd.engine import Trainer
    from catkd.engine.validate import config_from_dict
    from catkd.fsutil import atomic_write_json

    prior = json.loads(out.read_text()) if out.is_file() else {}
    stats = {"teacher_images": int(prior.get("teacher_images", 0)), "batches": 0, "done": False,
             "priority": job.get("priority", ""), "seconds": float(prior.get("seconds", 0.0)),
             "pid": os.getpid(), "gate_wait_s": float(prior.get("gate_wait_s", 0.0))}
    t0 = time.monotonic()
    last = -1e9

    def report(final: bool = False) -> None:
        nonlocal last
        if final or time.monotonic() - last > REPORT_EVERY_S:
            last = time.monotonic()
            atomic_write_json(out, {**stats, "seconds": stats["seconds"] + time.monotonic() - t0})

    if not job.get("configs"):
        log("teacher prefetch: nothing to do (no run config)")
    fillers: dict[str, Trainer] = {}
    for d in job.get("configs") or []:
        if should_stop():
            break
        c = config_from_dict(d)
        c.RUN.PROGRESS = "none"
        t = Trainer.from_config(c, out_dir=out.parent / ".prefetch", log=lambda s: None, notice=log, optimizer=False)
        if not getattr(t.targets, "cached", False):
            continue
        # one filler per teacher and data: its forwards fill the other target specs' stores too
        base = json.dumps({k: v for k, v in t.targets.key.items() if k != "targets"}, sort_keys=True)
        fillers.setdefault(base, t)
    epochs = max((t.cfg.SOLVER.EPOCHS for t in fillers.values()), default=0)
    gate = IdleGate() if job.get("gate", True) else None
    # a stage's runs of different seeds run side by side, epoch for epoch: fill epoch-major across
    # them, so the prefetch stays ahead of all of them rather than finishing one seed first
    for seeds in job.get("stages") or []:
        for epoch, seed, t in ((e, s, t) for e in range(1, epochs + 1) for s in seeds for t in fillers.values()):
            for batch in t.data.train.epoch_batches(epoch, seed):
                if should_stop():
                    report(final=True)
                    return stats
                if not t.targets.needs(batch):
                    continue  # a run got there first: no need to wait for a spare core
                if gate is not None:
                    t_gate = time.monotonic()
                    opened = gate.wait(should_stop)
                    stats["gate_wait_s"] += time.monotonic() - t_gate
                    if not opened:
                        continue  # stopped while no core was spare: the loop's next check returns
                stats["teacher_images"] += t.fill_teacher_targets(batch)
                stats["batches"] += 1
                report()
    stats["done"] = True
    report(final=True)
    return stats


# ---- the processes -------------------------------------------------------------------------------
def start(job: dict[str, Any], directory: Path, env: dict[str, str], log_path: Path,
          procs: int = PROCS) -> list[subprocess.Popen]:
    """Start the prefetch process(es) of `job`: the job and their counts go in `directory`, their
    output to `log_path`. With several, claims keep them off each other's entries."""
    from catkd.fsutil import atomic_write_json

    path = Path(directory) / JOB_FILE
    atomic_write_json(path, job)
    out = []
    with open(log_path, "ab") as logf:
        for k in range(min(os.cpu_count() or 1, procs)):
            out.append(subprocess.Popen([sys.executable, "-m", "catkd.teacher_cache.prefetch", str(path), str(k)],
                                        env={**os.environ, **env}, stdout=logf, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL))
    return out


def stop(procs: Optional[list[subprocess.Popen]], timeout: float = 5.0) -> None:
    live = [p for p in procs or [] if p.poll() is None]
    for p in live:
        p.send_signal(signal.SIGTERM)  # each writes its counts and exits; a kill loses no entry either
    for p in live:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def totals(directory: Path) -> Optional[dict[str, Any]]:
    """The prefetch processes' counts in `directory` summed (None if none ran there): `teacher_images`,
    `pids`, `done`, `priority`, `gate_wait_s` (seconds spent waiting for a spare core)."""
    files = sorted(Path(directory).glob("prefetch*.json"))
    if not files:
        return None
    out: dict[str, Any] = {"teacher_images": 0, "pids": [], "done": True, "priority": "", "gate_wait_s": 0.0}
    for f in files:
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        out["teacher_images"] += int(d.get("teacher_images") or 0)
        out["pids"] += [d["pid"]] if "pid" in d else []
        out["done"] = out["done"] and bool(d.get("done"))
        out["gate_wait_s"] += float(d.get("gate_wait_s") or 0.0)
        out["priority"] = d.get("priority") or out["priority"]
    return out


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job_path, k = Path(argv[0]), int(argv[1]) if len(argv) > 1 else 0
    job = json.loads(job_path.read_text())
    job["priority"] = lowest_priority()
    import torch

    torch.set_num_threads(1)
    parent = os.getppid()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    out = job_path.parent / f"prefetch-{k}.json"
    stats = run(job, out, should_stop=lambda: bool(stopping) or os.getppid() != parent,
                log=lambda s: print(s, flush=True))
    print(f"teacher prefetch: {'done' if stats['done'] else 'stopped'}: {stats['teacher_images']} teacher images "
          f"({job['priority']}; {stats['gate_wait_s']:.0f} s waiting for a spare core)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
