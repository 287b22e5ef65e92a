"""`--dry-run`: what a study will cost, before it runs (nothing written, no Ray started).

The plan: trials per stage, the epoch budget (the most it can take; under ASHA also the expected
epochs from its rungs). The cost: a short measurement, on this machine's device, of each distinct
(teacher, student, distiller, batch size, image size) of the study - training steps with the live
teacher, with the teacher cache warm (the student's step plus reading targets), the teacher's
forward alone (filling the cache) and the evaluation forward - turned into device-hours and wall
time at the study's concurrency.

Model (stated in the output): device time = trial-epochs x (training images / training img/s +
evaluation images / evaluation img/s); with the cache, the teacher runs once per distinct (image,
view) its seeds draw (the expected count for uniformly drawn views) and every step costs the
warm-cache step. Wall, per stage: its trials started in order on the concurrent slots, each when a
slot frees (Tune's way), so a stage's end, where slots wait for its last trials, is counted: the
confirm stage runs in waves of `slots` trials, and under ASHA the trial that runs to the end may
start late (which trials go on is unrelated to their order: the mean over seeded shuffles).
Concurrency = min(max_concurrent, what this machine fits of the study's per-trial resources; with a
Ray cluster's address, what its alive nodes fit, node by node, as Ray places trials); trials
sharing one GPU are assumed not to slow each other (a lower bound there; `python -m catkd.bench gpu`
measures what 4 trials on one GPU give).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Optional

import torch

from catkd.config import Config
from catkd.study.spec import StudySpec, expand_grid
from catkd.study.slots import slots as _slots
from catkd.study.stores import cache_usable, store_sizes


def asha_survivors(arrivals: float, rf: float) -> float:
    """Expected trials that go on from a rung `arrivals` trials reach, under Ray's asynchronous ASHA:
    each arrival continues unless it is below the (1 - 1/rf) percentile of the results the rung has
    recorded before it, so the first always goes on and early ones more often than 1/rf. For the
    k-th arrival with exchangeable results that is 1 - ((1 - 1/rf)(k - 2) + 1) / k (k >= 2; the
    expected interpolated order statistic of k - 1 uniform draws); within 1 % of a simulation of
    Ray's rule with uniform or normal results for 6, 11 and 32 arrivals."""
    def p(k: int) -> float:
        return 1.0 if k == 1 else 1.0 - ((1.0 - 1.0 / rf) * (k - 2) + 1.0) / k

    whole = int(arrivals)
    return sum(p(k) for k in range(1, whole + 1)) + (arrivals - whole) * p(whole + 1)


def _rungs(grace: int, rf: float, max_t: int) -> list[int]:
    out, rung = [], grace
    while rung < max_t:
        out.append(int(rung))
        rung = int(round(rung * rf))
    return out


def asha_trial_epochs(num_samples: int, grace: int, rf: float, max_t: int) -> list[float]:
    """Expected trials still running at each epoch 1..max_t under ASHA (one bracket): at every rung
    (grace * rf^k) `asha_survivors` of the trials that reach it go on; at least one runs to max_t."""
    alive, out, rungs = float(num_samples), [], set(_rungs(grace, rf, max_t))
    for epoch in range(1, max_t + 1):
        out.append(alive)
        if epoch in rungs:
            alive = max(asha_survivors(alive, rf), 1.0)
    return out


def asha_trial_lengths(num_samples: int, grace: int, rf: float, max_t: int) -> list[int]:
    """Whole trials' epoch counts under ASHA: of the trials that reach a rung, round(asha_survivors)
    go on, the rest stop there -- `asha_trial_epochs` in whole trials."""
    lengths: list[int] = []
    alive = num_samples
    for rung in _rungs(grace, rf, max_t):
        if alive <= 1:
            break
        go_on = max(1, round(asha_survivors(alive, rf)))
        lengths += [rung] * (alive - go_on)
        alive = go_on
    return lengths + [max_t] * alive


def makespan(lengths: list[float], slots: int) -> float:
    """Wall of trials started in this order on `slots`, each as soon as a slot frees."""
    import heapq

    free = [0.0] * max(1, slots)
    for n in lengths:
        heapq.heappush(free, heapq.heappop(free) + n)
    return max(free)


def stage_packing(lengths: list[float], slots: int, shuffles: int = 200) -> float:
    """Wall of a stage over its work spread evenly on the slots (>= 1): what its end costs while
    slots wait for its last trials. The mean over seeded shuffles of the order, since which trial
    runs longest is not known when they start."""
    import random

    if not lengths or slots <= 1:
        return 1.0
    even = sum(lengths) / slots
    if len(set(lengths)) == 1:
        return makespan(lengths, slots) / even
    rng = random.Random(0)
    order, spans = list(lengths), []
    for _ in range(shuffles):
        rng.shuffle(order)
        spans.append(makespan(order, slots))
    return sum(spans) / len(spans) / even


@dataclass
class Group:
    """Trials of one stage with the same cost key."""

    stage: str
    cfg: Config
    trials: int
    max_epochs: float  # trial-epochs if none is stopped early
    expected_epochs: float  # under the stage's scheduler
    seeds: tuple[int, ...]


def _cost_key(cfg: Config) -> tuple:
    return (cfg.DISTILLER.TYPE, cfg.DISTILLER.TEACHER, cfg.DISTILLER.STUDENT, cfg.SOLVER.BATCH_SIZE,
            cfg.DATASET.TYPE, cfg.DATASET.SYNTHETIC.IMAGE_SIZE if cfg.DATASET.TYPE == "synthetic" else 0,
            cfg.RUN.CHANNELS_LAST)


def plan(spec: StudySpec) -> list[Group]:
    """The trials of each stage, grouped by cost key, with their epoch budgets."""
    from catkd.study.checks import run_config
    from catkd.study.preflight import probe_configs

    if spec.search.algorithm == "grid":
        searches = [[run_config(spec, p) for p in expand_grid(spec)]]
    else:  # each arm: the sampled values are not known yet, so spread num_samples over its finite model choices
        from catkd.study.spec import arms

        searches = []
        for arm in arms(spec):
            probes = probe_configs(spec.model_copy(update={"space": {**arm.space, **_grid(arm.constants)}}))
            searches.append([probes[i % len(probes)] for i in range(spec.search.num_samples)])
    by_key: dict[tuple, list[tuple[Config, float]]] = {}
    for cfgs in searches:  # each search has its own scheduler
        n, epochs = len(cfgs), max(c.SOLVER.EPOCHS for c in cfgs)
        share = 1.0
        if spec.scheduler.type == "asha":
            share = sum(asha_trial_epochs(n, spec.scheduler.grace_period, spec.scheduler.reduction_factor,
                                          epochs)) / (n * epochs)
        for c in cfgs:
            by_key.setdefault(_cost_key(c), []).append((c, share))
    groups: list[Group] = []
    for cs in by_key.values():
        total = sum(c.SOLVER.EPOCHS for c, _ in cs)
        groups.append(Group("search", cs[0][0], len(cs), total, sum(c.SOLVER.EPOCHS * f for c, f in cs),
                            tuple(sorted({c.EXPERIMENT.SEED for c, _ in cs}))))
    if spec.confirm is not None:  # per search: its top k (and the preset) x the confirm seeds
        per = (spec.confirm.top_k + int(spec.confirm.preset)) * len(spec.confirm.seeds)
        for cfgs in searches:
            c = cfgs[0]
            groups.append(Group("confirm", c, per, per * c.SOLVER.EPOCHS, per * c.SOLVER.EPOCHS,
                                tuple(spec.confirm.seeds)))
    return groups


def _searches(spec: StudySpec) -> int:
    """How many independent searches (arms) the search stage runs."""
    from catkd.study.spec import separate_searches

    return len(separate_searches(spec)) or 1


def _grid(constants: dict[str, Any]) -> dict[str, Any]:
    """An arm's constants as one-value grid dimensions (a space probe_configs can read)."""
    from catkd.study.spec import Dim

    return {k: Dim(grid=[v]) for k, v in constants.items()}


# ---- measurement ------------------------------------------------------------------------------
_MEASURED: dict[tuple, dict[str, float]] = {}


def measure(cfg: Config, threads: int, steps: int = 3) -> dict[str, float]:
    """Images/s on this machine's device: a training step with the live teacher, a warm-cache step
    (the student's step; the cache bench measures it at 1.01-1.04x), the teacher's forward, and the
    student's evaluation forward. Random weights and inputs: the speed does not depend on them."""
    key = (*_cost_key(cfg), threads)
    if key in _MEASURED:
        return _MEASURED[key]
    from catkd.data import dataset_entry
    from catkd.distillers import DISTILLERS, build_distiller
    from catkd.engine.device import channels_last, resolve_device
    from catkd.engine.trainer import train_step
    from catkd.models import build_model

    torch.set_num_threads(max(1, threads))
    dev = resolve_device(cfg.RUN.DEVICE)
    entry = dataset_entry(cfg)
    k, size = entry.num_classes(cfg), entry.image_size(cfg)
    family = entry.family
    kind = DISTILLERS.get(cfg.DISTILLER.TYPE)
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        student = build_model(cfg.DISTILLER.STUDENT, k, head_bias=kind.student_head_bias, family=family)
        teacher = build_model(cfg.DISTILLER.TEACHER, k, family=family) if kind.needs_teacher else None
    dist = build_distiller(cfg, student, teacher, k, timing=True).to(dev)
    # what the run binds (CRD: a memory row per training image, negatives drawn by label)
    n_train = max(1, entry.sizes(cfg)[0] - cfg.DATASET.VAL_SIZE)
    train = SimpleNamespace(labels=torch.randint(0, k, (n_train,), generator=g), source_index=torch.arange(n_train))
    dist.bind_data(SimpleNamespace(train=train))
    dist.train()
    opt = torch.optim.SGD(dist.learnable_parameters(), lr=1e-3, momentum=0.9)
    b = measured_batch(cfg.SOLVER.BATCH_SIZE, size, dev)
    if b < cfg.SOLVER.BATCH_SIZE:
        steps = 1  # a CPU timing large images: one step of ~40 images is seconds, and steady (no GPU queue)
    x = torch.randn(b, 3, size, size, generator=g).to(dev)
    if channels_last(cfg.RUN.CHANNELS_LAST, dev):  # timed in the memory format the run trains in
        dist.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, k, (b,), generator=g).to(dev)
    index = torch.arange(b) % n_train
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    null = contextlib.nullcontext

    def timed(fn) -> float:
        fn()  # warm-up
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        sync()
        return (time.perf_counter() - t0) / steps

    live = timed(lambda: train_step(dist, opt, x, y, {"epoch": 1, "index": index}, null()))
    out = {"train_live": b / live}
    if teacher is not None:
        with torch.no_grad():
            t = {kk: v.detach() for kk, v in dist.live_targets(x).items()}
        out["train_cached"] = b / timed(lambda: train_step(dist, opt, x, y,
                                                           {"epoch": 1, "index": index, "teacher_targets": t}, null()))
        with torch.no_grad():
            out["teacher_forward"] = b / timed(lambda: dist.teacher(x))
    else:
        out["train_cached"] = out["train_live"]
    dist.eval()
    with torch.no_grad():
        out["eval"] = b / timed(lambda: dist.student(x))
    _MEASURED[key] = out
    return out


def _timed_at(cfg, dev: torch.device) -> str:
    from catkd.data import dataset_entry

    b = measured_batch(cfg.SOLVER.BATCH_SIZE, dataset_entry(cfg).image_size(cfg), dev)
    return f" (timed at batch {b})" if b != cfg.SOLVER.BATCH_SIZE else ""


def measured_batch(batch: int, size: int, dev: torch.device) -> int:
    """The batch a step is timed at: the run's, except on a CPU, where large images at a large batch
    (ImageNet: 512 x 224 px, over a minute a step) are timed at the batch that holds about 2 M pixels
    per channel (32 at 224 px; CIFAR's 64 x 32 px unchanged): a CPU's images/s hardly depends on the
    batch beyond a few dozen images."""
    if dev.type != "cpu":
        return batch
    return max(1, min(batch, max(8, (1 << 21) // (size * size))))


def estimate(spec: StudySpec, say=print, address: Optional[str] = None) -> dict[str, Any]:
    """Print the plan and the cost; return the figures (nothing written; Ray not started: on a
    cluster, `address` or RAY_ADDRESS, only its nodes are read to count the slots)."""
    from catkd.data import dataset_entry
    from catkd.distillers import DISTILLERS

    groups = plan(spec)
    slots, fits = _slots(spec, address)
    threads = max(1, int(spec.resources.cpu))
    device = "cuda" if (spec.resources.gpu and torch.cuda.is_available()) else "cpu"
    say(f"plan of {spec.name}{' (SMOKE)' if spec.smoke_mode else ''}:")
    for stage in ("search", "confirm"):
        gs = [g for g in groups if g.stage == stage]
        if not gs:
            continue
        n = sum(g.trials for g in gs)
        k = _searches(spec)
        each = f" of each of {k} searches" if k > 1 else ""
        how = (f"grid of {n}" if spec.search.algorithm == "grid" else
               f"{k} searches x {spec.search.num_samples} samples ({spec.search.algorithm})" if k > 1 else
               f"{n} samples ({spec.search.algorithm})") if stage == "search" else \
            f"top {spec.confirm.top_k}{each}{' + the preset' if spec.confirm.preset else ''} x seeds {list(spec.confirm.seeds)}"
        mx, ex = sum(g.max_epochs for g in gs), sum(g.expected_epochs for g in gs)
        sched = (f"; expected under ASHA (grace {spec.scheduler.grace_period}, reduction factor "
                 f"{spec.scheduler.reduction_factor:g}): {ex:,.0f}" if stage == "search" and spec.scheduler.type == "asha" else "")
        say(f"  [{stage}] {n} trials ({how}): at most {mx:,.0f} trial-epochs{sched}")
    say(f"cost, measured on this machine ({device}, {threads} thread(s) per trial; {len({_cost_key(g.cfg) for g in groups})} "
        f"distinct model/distiller setups, {3} timed steps each):")
    total_live = total_cached = 0.0
    stage_live: dict[str, float] = {}
    stage_cached: dict[str, float] = {}
    fills: dict[tuple, dict[str, Any]] = {}
    for g in groups:
        cfg = g.cfg
        entry = dataset_entry(cfg)
        stored, test = entry.sizes(cfg)
        train = stored - cfg.DATASET.VAL_SIZE
        if cfg.DATASET.REDUCTION:
            train = int(train * cfg.DATASET.RESERVED_CLASS_NUM / entry.num_classes(cfg) * cfg.DATASET.RESERVED_RATE)
        evals = test + cfg.DATASET.VAL_SIZE
        m = measure(cfg.model_copy(update={"RUN": cfg.RUN.model_copy(update={"DEVICE": device})}), threads)
        per_epoch_live = train / m["train_live"] + evals / m["eval"]
        per_epoch_cached = train / m["train_cached"] + evals / m["eval"]
        live_s = g.expected_epochs * per_epoch_live
        needs_teacher = DISTILLERS.get(cfg.DISTILLER.TYPE).needs_teacher
        cache_on = needs_teacher and cache_usable(cfg)  # a store over the cap, or none: the live teacher
        cached_s = g.expected_epochs * per_epoch_cached if cache_on else live_s
        if cache_on:  # the teacher forwards every distinct (image, view) the seeds draw, once per teacher
            f = fills.setdefault((cfg.DISTILLER.TEACHER, cfg.DATASET.TYPE), {"draws": {}, "cfg": cfg, "m": m,
                                                                             "train": train, "views": entry.views(cfg).count})
            for s in g.seeds:
                f["draws"][s] = max(f["draws"].get(s, 0), cfg.SOLVER.EPOCHS)
        total_live += live_s
        total_cached += cached_s
        stage_live[g.stage] = stage_live.get(g.stage, 0.0) + live_s
        stage_cached[g.stage] = stage_cached.get(g.stage, 0.0) + cached_s
        say(f"  [{g.stage}] {g.trials} x {cfg.DISTILLER.TYPE} {cfg.DISTILLER.TEACHER + ' -> ' if needs_teacher else ''}"
            f"{cfg.DISTILLER.STUDENT}, batch {cfg.SOLVER.BATCH_SIZE}{_timed_at(cfg, torch.device(device))}: {m['train_live']:,.0f} img/s"
            + (f" with the live teacher, {m['train_cached']:,.0f} img/s with the cache warm" if cache_on
               else " with the live teacher (no teacher cache here)" if needs_teacher else "")
            + f"; {g.expected_epochs:,.0f} trial-epochs of {train:,} training + {evals:,} evaluation images")
    fill_s = 0.0
    for (teacher, _), f in fills.items():
        draws = sum(f["draws"].values())
        distinct = f["train"] * f["views"] * (1 - (1 - 1 / f["views"]) ** draws)
        fill_s += distinct / f["m"]["teacher_forward"]
        say(f"  teacher cache: {teacher} forwards ~{distinct:,.0f} distinct (image, view) pairs once "
            f"({len(f['draws'])} seed(s) x up to {max(f['draws'].values())} epochs), "
            f"{f['m']['teacher_forward']:,.0f} img/s")
    total_cached += fill_s
    packing = {stage: stage_packing(stage_lengths(spec, groups, stage), slots) for stage in stage_live}
    for stage, f in packing.items():
        if f > 1.005:
            say(f"  [{stage}] {_stage_end(spec, groups, stage, slots, f)}")
    wall = sum(stage_cached[st] * packing[st] for st in stage_cached) + fill_s
    wall_live = sum(stage_live[st] * packing[st] for st in stage_live)
    sizes = store_sizes(spec, groups)
    if sizes:  # also when every store is over the cap: it says why the live teacher runs
        cap = groups[0].cfg.RUN.TEACHER_CACHE_MAX_GB
        say("  teacher cache stores (allocated in full when created; above RUN.TEACHER_CACHE_MAX_GB "
            f"{cap:g} the live teacher runs): " + "; ".join(
                f"{k}: {_fmt_bytes(v)}" + (" (over the cap: live teacher)" if v > cap * 1e9 else "")
                for k, v in sizes.items()))
    hours = lambda s: s / 3600  # noqa: E731
    out = {"trial_epochs_max": sum(g.max_epochs for g in groups),
           "trial_epochs_expected": sum(g.expected_epochs for g in groups),
           "device_hours_live": hours(total_live), "device_hours": hours(total_cached),
           "concurrency": slots, "wall_hours": hours(wall) / slots, "wall_hours_live": hours(wall_live) / slots,
           "stage_packing": packing}
    cache_note = (f" (with the teacher cache; {out['device_hours_live']:,.2f} device-hours, "
                  f"{_fmt_h(out['wall_hours_live'])} wall with the live teacher)" if fills else "")
    say(f"estimate: {out['device_hours']:,.2f} device-hours; {_fmt_h(out['wall_hours'])} wall at {slots} concurrent "
        f"trial(s) (max_concurrent {spec.max_concurrent}; {fits}){cache_note}")
    say("  model: device time = trial-epochs x (train images / train img/s + eval images / eval img/s), "
        "expected ASHA epochs; wall = each stage's trials started in order on the concurrent slots as they "
        "free (a stage's end, where slots wait for its last trials, counted; trials sharing a GPU assumed not to "
        "slow each other); Ray start-up, checkpoints and the barriers between stages and between searches "
        "not counted")
    return out


def stage_lengths(spec: StudySpec, groups: list[Group], stage: str) -> list[float]:
    """The epoch counts of a stage's trials: under ASHA its whole-trial rung model, else the budgets."""
    gs = [g for g in groups if g.stage == stage]
    if stage == "search" and spec.scheduler.type == "asha":
        k = _searches(spec)  # each search has its own ASHA
        n = sum(g.trials for g in gs) // k
        max_t = max(round(g.max_epochs / g.trials) for g in gs)
        return [float(x) for x in asha_trial_lengths(n, spec.scheduler.grace_period, spec.scheduler.reduction_factor,
                                                     max_t)] * k
    return [g.max_epochs / g.trials for g in gs for _ in range(g.trials)]


def _stage_end(spec: StudySpec, groups: list[Group], stage: str, slots: int, factor: float) -> str:
    """One line on what a stage's end costs, and for the confirm stage how to fill its last wave."""
    n = sum(g.trials for g in groups if g.stage == stage)
    cost = f"its wall is {factor:.2f}x its work spread evenly on {slots} slots"
    if stage != "confirm":
        kept = "the trials ASHA keeps" if spec.scheduler.type == "asha" else "its last trials"
        return f"{n} trials on {slots} slots: at its end, slots wait while {kept} finish: {cost}"
    waves, last = -(-n // slots), n % slots or slots
    top_k, seeds = spec.confirm.top_k, len(spec.confirm.seeds)
    fits = [(abs(k * m - n), abs(k - top_k), k, m) for k in range(1, 2 * top_k + 1) for m in range(1, 2 * seeds + 1)
            if (k * m) % slots == 0]
    hint = ""
    if fits:
        _, _, k, m = min(fits)
        hint = f"; top_k {k} x {m} seeds ({k * m} trials) would fill every wave"
    when = (f"run at once while {slots - n} slot(s) wait" if waves == 1 else
            f"run in {waves} waves, the last with {last} trial(s) while {slots - last} slot(s) wait")
    return f"{n} trials on {slots} slots {when}: {cost}{hint}"


def _fmt_bytes(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def _fmt_h(h: float) -> str:
    if h < 1 / 60:
        return f"{h * 3600:.0f} s"
    if h < 1:
        return f"{h * 60:.1f} min"
    return f"{h:.1f} h" if h < 48 else f"{h / 24:.1f} days"

