"""Fill a study's teacher cache ahead of its trials, from CPU time nobody else wants.

The views a trial trains on are fixed by its seed and data settings (`TrainLoader.epoch_views`),
so the study driver knows, before any trial runs, every (image, view) entry the search seeds and
the confirm seeds will ask for. The prefetch process computes those entries at the lowest CPU
priority the OS has (Linux SCHED_IDLE; elsewhere nice 19): it gets a core only while the core
would otherwise wait -- Ray starting, a lone trial at the end of a stage, the barrier between the
search and the confirm stage -- and it never takes or waits for an entry a trial has claimed
(`TeacherStore.fetch(wait=False)`). It goes through the same Trainer, store and key as a trial, so
the values are the ones the trial would have computed: the cache stays exact.

Order: the search seeds' epochs first, then the confirm seeds' (new seeds, whose views the search
never draws), each stage epoch by epoch across its seeds (its trials run side by side). It stops
when it has done everything, when the study driver stops it, or when the driver is gone. It counts its work in `<experiment>/prefetch-<k>.json` (`teacher_images`;
`totals` sums the files), so a study's teacher forwards are the trials' `teacher_images` plus that.

Run by the driver as `python -m catkd.teacher_cache.prefetch <job.json> <k>`; on CPU-only, single-node
studies with the cache on (`--no-prefetch` turns it off).
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

REPORT_EVERY_S = 2.0


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
    core that Ray's trial workers (nice 15) want; so, from /proc/stat, the cores that were idle
    since the last look plus the ones this process used itself must reach `need` (Linux only;
    elsewhere the priority alone decides)."""

    def __init__(self, need: float = 0.5, poll_s: float = 0.05):
        self.need, self.poll_s = need, poll_s
        self.ok = Path("/proc/stat").is_file()
        self._last = self._sample() if self.ok else None

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        with open("/proc/stat") as f:
            v = [float(x) for x in f.readline().split()[1:9]]  # user .. steal (guest is inside user)
        t = os.times()
        return sum(v), v[3] + (v[4] if len(v) > 4 else 0.0), t.user + t.system  # all, idle + iowait, own

    def spare(self) -> float:
        """Cores spare (idle, or used by this process) since the last call."""
        now = self._sample()
        total, idle, own = (a - b for a, b in zip(now, self._last))
        self._last = now
        cores = os.cpu_count() or 1
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        wall = total / cores / hz  # seconds since the last call
        return cores * idle / total + own / wall if total > 0 and wall > 0 else cores

    def wait(self, should_stop: Callable[[], bool]) -> None:
        if not self.ok:
            return
        while self.spare() < self.need and not should_stop():
            time.sleep(self.poll_s)


def _signature(cfg) -> str:
    """What the teacher targets depend on, to skip configs that cannot need another store (β, the
    student and the schedule do not; a duplicate only costs a Trainer, never a missing store)."""
    cat = cfg.CAT_KD.model_dump(mode="json")
    cat.get("LOSS", {}).pop("CAT_loss_weight", None)
    cat.get("LOSS", {}).pop("CE_loss_weight", None)
    return json.dumps({"distiller": cfg.DISTILLER.TYPE, "teacher": cfg.DISTILLER.TEACHER,
                       "ckpt": cfg.DISTILLER.TEACHER_CKPT, "data": cfg.DATASET.model_dump(mode="json"),
                       "precision": cfg.RUN.PRECISION, "channels_last": cfg.RUN.CHANNELS_LAST,
                       "cache": cfg.RUN.TEACHER_CACHE, "cat": cat}, sort_keys=True)


def prefetch_configs(spec) -> tuple[list, Optional[str]]:
    """(configs whose stores to fill, or why there is nothing to prefetch)."""
    from catkd.distillers import DISTILLERS
    from catkd.study.preflight import probe_configs, target_variant_configs
    from catkd.study.results import canonical

    names = [canonical(n) for g in spec.subgrids for n in g]
    if spec.search.algorithm != "grid" and any(n.startswith("DATASET.") for n in names):
        return [], "the study samples data settings, so the views its trials draw are not known ahead"
    cfgs = list(probe_configs(spec)) + target_variant_configs(spec)
    out, seen = [], set()
    for c in cfgs:
        if not DISTILLERS.get(c.DISTILLER.TYPE).needs_teacher or c.RUN.TEACHER_CACHE == "off":
            continue
        sig = _signature(c)
        if sig not in seen:
            seen.add(sig)
            out.append(c)
    return out, (None if out else "no trial uses the teacher cache")


def plan(spec) -> dict[str, Any]:
    """The job the prefetch process runs: the study, and its seeds by stage (search, then confirm)."""
    search = list(dict.fromkeys(spec.seeds))
    confirm = [s for s in dict.fromkeys(spec.confirm.seeds if spec.confirm is not None else []) if s not in search]
    return {"study": spec.model_dump(mode="json"), "seeds": search + confirm,
            "stages": [g for g in (search, confirm) if g]}


def run(job: dict[str, Any], out: Path, should_stop: Callable[[], bool] = lambda: False,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fill the stores of the study's configs for job['seeds'], epoch by epoch; returns the counts
    (also written to `out`, atomically, every REPORT_EVERY_S and at the end)."""
    import torch

    from catkd.engine import Trainer
    from catkd.fsutil import atomic_write_json
    from catkd.study.spec import StudySpec

    spec = StudySpec.model_validate(job["study"])
    cfgs, why = prefetch_configs(spec)
    prior = json.loads(out.read_text()) if out.is_file() else {}
    stats = {"teacher_images": int(prior.get("teacher_images", 0)), "batches": 0, "done": False,
             "priority": job.get("priority", ""), "seconds": float(prior.get("seconds", 0.0)),
             "pid": os.getpid()}
    t0 = time.monotonic()
    last = -1e9

    def report(final: bool = False) -> None:
        nonlocal last
        if final or time.monotonic() - last > REPORT_EVERY_S:
            last = time.monotonic()
            atomic_write_json(out, {**stats, "seconds": stats["seconds"] + time.monotonic() - t0})

    if why:
        log(f"teacher prefetch: nothing to do ({why})")
    fillers: dict[str, Trainer] = {}
    for cfg in cfgs:
        if should_stop():
            break
        c = cfg.model_copy(deep=True)
        c.RUN.PROGRESS = "none"
        t = Trainer.from_config(c, out_dir=out.parent / ".prefetch", log=lambda s: None, notice=log, optimizer=False)
        if not getattr(t.targets, "cached", False):
            continue
        # one filler per teacher and data: its forwards fill the other target specs' stores too
        base = json.dumps({k: v for k, v in t.targets.key.items() if k != "targets"}, sort_keys=True)
        fillers.setdefault(base, t)
    epochs = max((t.cfg.SOLVER.EPOCHS for t in fillers.values()), default=0)
    gate = IdleGate() if job.get("gate", True) else None
    # a stage's trials of different seeds run side by side, epoch for epoch: fill epoch-major across
    # them, so the prefetch stays ahead of all of them rather than finishing one seed first
    for seeds in job.get("stages") or [job["seeds"]]:
        for epoch, seed, t in ((e, s, t) for e in range(1, epochs + 1) for s in seeds for t in fillers.values()):
            for batch in t.data.train.epoch_batches(epoch, seed):
                if should_stop():
                    report(final=True)
                    return stats
                if not t.targets.needs(batch):
                    continue  # a trial got there first: no need to wait for a spare core
                if gate is not None:
                    gate.wait(should_stop)
                images = t._images(batch.images)
                with torch.no_grad(), t._autocast():
                    stats["teacher_images"] += t.targets.fill(batch, images)
                stats["batches"] += 1
                report()
    stats["done"] = True
    report(final=True)
    return stats


# ---- the processes -------------------------------------------------------------------------------
# processes: each single-threaded and runs only on an idle core. One: two (so both cores idle while
# Ray starts or at the stage barrier fill at once) prefetched no more in beta_sweep --smoke here
# (12,000-17,300 teacher images vs 10,600-19,700 with one), since each pays its own start-up
PROCS = 1


def start(spec, env: dict[str, str], exp_dir: Path) -> list[subprocess.Popen]:
    """Start the prefetch process(es) for a study ([] with a line saying why where they cannot help);
    with several, claims keep them off each other's entries."""
    from catkd.fsutil import atomic_write_json
    from catkd.study.progress import say

    cfgs, why = prefetch_configs(spec)
    if why:
        say(f"teacher prefetch: off ({why})")
        return []
    job, todo = exp_dir / ".prefetch-job.json", plan(spec)
    atomic_write_json(job, todo)
    procs = []
    with open(exp_dir / "prefetch.log", "ab") as logf:
        for k in range(min(os.cpu_count() or 1, PROCS)):
            procs.append(subprocess.Popen([sys.executable, "-m", "catkd.teacher_cache.prefetch", str(job), str(k)],
                                          env={**os.environ, **env}, stdout=logf, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL))
    say(f"teacher prefetch: filling the teacher cache for seeds {todo['seeds']} from idle CPU time "
        f"(at the lowest CPU priority; log {exp_dir / 'prefetch.log'})")
    return procs


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


def totals(exp_dir: Path) -> Optional[dict[str, Any]]:
    """The prefetch processes' counts summed (None if the study ran none): `teacher_images`, `pids`."""
    files = sorted(Path(exp_dir).glob("prefetch*.json"))
    if not files:
        return None
    out: dict[str, Any] = {"teacher_images": 0, "pids": [], "done": True, "priority": ""}
    for f in files:
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        out["teacher_images"] += int(d.get("teacher_images") or 0)
        out["pids"] += [d["pid"]] if "pid" in d else []
        out["done"] = out["done"] and bool(d.get("done"))
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
          f"({job['priority']})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
