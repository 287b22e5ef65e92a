"""`cache`: what the teacher cache saves, each figure measured side by side.

- cached_step_over_student_step: a CAT-KD training step resnet56 -> resnet20, batch 64, its targets
  from a warm store (the Trainer's own path: CachedTargets then train_step), over a CE-only step of
  the student alone; beside it the same step with the live teacher (live_step_over_student_step).
- store dtype: the per-step loss difference of float16 / bfloat16 targets vs float32 targets, on
  the same batches and weights (loss_rel_diff_fp16 / _bf16: median and max over steps).
- same_seed_sharing: teacher images forwarded by 4 concurrent same-seed trials sharing one store,
  over what one trial alone forwards (1 is perfect, 4 is no sharing).
- teacher_forward_fraction, study_wall_ratio: beta_sweep --smoke with the cache (a cold store; the
  default, which prefetches from idle CPU) over the same study with RUN.TEACHER_CACHE off: teacher
  images forwarded (the trials' plus the prefetcher's), and wall time; medians of 2 interleaved
  rounds. Beside them the cache without the prefetch (`_no_prefetch`), and each wall ratio per
  trial-epoch (ASHA's arrival order changes how many trial-epochs a run trains).
- teacher_forward_fraction_real: beta_sweep at real scale (CIFAR-100 sizes, its validation split,
  its ASHA rungs, its confirm stage), from the loader's own draws without training: distinct
  (image, view) pairs the study's seeds draw over the teacher forwards it runs without the cache.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from catkd.bench.common import SMOKE_STUDY, interleaved, run_smoke_study, student_ce_step

GOALS = {"cached_step_over_student_step": ("<=", 1.10), "same_seed_sharing": ("<=", 1.2),
         "teacher_forward_fraction": ("<=", 0.6), "study_wall_ratio": ("<=", 0.8),
         "teacher_forward_fraction_real": ("<=", 0.1)}


def smoke_cfg(teacher_ckpt: str, tmp: str, **over):
    """The smoke study's run config (its synthetic data, teacher resnet20 -> student resnet8) with
    `over` ({dotted key: value}) applied."""
    from catkd.engine.validate import config_from_dict
    from catkd.study.checks import run_config
    from catkd.study.load import load_study

    d = run_config(load_study(SMOKE_STUDY, smoke=True), {}).to_dict()
    for k, v in {"DISTILLER.TEACHER_CKPT": teacher_ckpt, "RUN.PROGRESS": "none", "LOG.PREFIX": tmp,
                 "RUN.THREADS": 1, **over}.items():
        *path, last = k.split(".")
        node = d
        for part in path:
            node = node[part]
        node[last] = v
    return config_from_dict(d)


def bench_cached_step(batch: int = 64, repeats: int = 30, teacher: str = "resnet56", student: str = "resnet20",
                      resolution: int = 2, device: str = "cpu") -> dict:
    from catkd.data.loader import TrainBatch
    from catkd.distillers.cat_kd import CATKD
    from catkd.engine.trainer import train_step
    from catkd.models import build_model
    from catkd.teacher_cache.provider import CachedTargets
    from catkd.teacher_cache.store import Layout, TeacherStore

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    t = build_model(teacher, 100).eval().to(dev)
    s = build_model(student, 100, head_bias=False).to(dev)
    dist = CATKD(s, t, beta=0.7, resolution=resolution, normalize=False)  # res56_res20: R = 2
    dist.train()
    opt = torch.optim.SGD(s.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 100, (batch,), device=dev)
    b = TrainBatch(x, y, torch.arange(batch), torch.zeros(batch, dtype=torch.int64))
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="catkd-bench-cache-") as tmp:
        probe = dist.live_targets(x[:1])
        fields = tuple((k, tuple(v.shape[1:])) for k, v in probe.items())
        store = TeacherStore(Path(tmp), "step", {"bench": 1}, Layout(batch, 1, fields, "float16"), log=lambda m: None)
        cached = CachedTargets(dist, store, fields)
        cached(b, x)  # fills the store: from here on every lookup is a hit (a warm cache)

        def cached_step():  # what Trainer.step runs with the cache
            with torch.no_grad():
                tt = cached(b, x)
            train_step(dist, opt, x, y, {"teacher_targets": tt}, contextlib.nullcontext())
            sync()

        def live_step():
            train_step(dist, opt, x, y, {}, contextlib.nullcontext())
            sync()

        def student_step():
            student_ce_step(s, opt, x, y)
            sync()

        med = interleaved({"cached": cached_step, "live": live_step, "student": student_step}, repeats)
    out.update({"cached_step_ms": med["cached"] * 1000, "live_step_ms": med["live"] * 1000,
                "student_step_ms": med["student"] * 1000,
                "cached_step_over_student_step": med["cached"] / med["student"],
                "live_step_over_student_step": med["live"] / med["student"]})
    print(f"cache: CAT-KD step {teacher} -> {student} on {device}, batch {batch}: warm cache {med['cached'] * 1000:.1f} ms, "
          f"live teacher {med['live'] * 1000:.1f} ms, student alone (CE) {med['student'] * 1000:.1f} ms: "
          f"{out['cached_step_over_student_step']:.3f}x / {out['live_step_over_student_step']:.3f}x the student's step")
    return out


def bench_store_dtype(teacher_ckpt: str, steps: int = 20) -> dict:
    """Loss with targets rounded to float16 / bfloat16 vs float32 targets, same batches and weights:
    CAT-KD (R = 2 and 4, normalised as the presets; binarised) and KD, on the smoke study's data with
    its trained teacher."""
    from catkd.engine import Trainer

    out: dict = {}
    variants = {
        "CAT-KD R2": {"CAT_KD.LOSS.CAM_RESOLUTION": 2},
        "CAT-KD R4": {"CAT_KD.LOSS.CAM_RESOLUTION": 4},
        "CAT-KD R2 binarised": {"CAT_KD.LOSS.CAM_RESOLUTION": 2, "CAT_KD.IF_BINARIZE": True},
    }
    rel: dict[str, list[float]] = {"float16": [], "bfloat16": []}
    for label, over in [*variants.items(), ("KD", {"DISTILLER.TYPE": "KD"})]:
        with tempfile.TemporaryDirectory(prefix="catkd-bench-dtype-") as tmp:
            cfg = smoke_cfg(teacher_ckpt, tmp, **{"RUN.TEACHER_CACHE": "off", "RUN.THREADS": 0,
                                                  "DISTILLER.TYPE": "CAT_KD", **over})
            tr = Trainer.from_config(cfg, log=lambda m: None)
            d = tr.distiller
            d.train()
            worst = {k: 0.0 for k in rel}
            for i, batch in enumerate(tr.data.train.epoch_batches(1, 0), 1):
                if i > steps:
                    break
                with torch.no_grad():
                    t32 = d.live_targets(batch.images)
                    ctx = {"epoch": 1, "step": i}
                    base = {k: float(v) for k, v in d.forward_train(batch.images, batch.labels,
                                                                   {**ctx, "teacher_targets": t32})[1].items()}
                    for dt in rel:
                        tq = {k: v.to(getattr(torch, dt)).float() for k, v in t32.items()}
                        got = d.forward_train(batch.images, batch.labels, {**ctx, "teacher_targets": tq})[1]
                        for k, v in got.items():
                            if k == "loss_ce":  # does not depend on the teacher
                                continue
                            r = abs(float(v) - base[k]) / max(abs(base[k]), 1e-12)
                            rel[dt].append(r)
                            worst[dt] = max(worst[dt], r)
                tr.step(batch, 1, i)  # train on: the weights move as in a run
            print(f"cache: store dtype, {label}: max per-step relative loss difference vs float32 targets: "
                  f"float16 {worst['float16']:.2e}, bfloat16 {worst['bfloat16']:.2e} ({steps} steps)")
    for dt, short in (("float16", "fp16"), ("bfloat16", "bf16")):
        out[f"loss_rel_diff_{short}_median"] = statistics.median(rel[dt])
        out[f"loss_rel_diff_{short}_max"] = max(rel[dt])
    return out


def _sharing_trial(cfg_dict: dict, ready, go, q) -> None:
    torch.set_num_threads(1)
    from catkd.engine import Trainer
    from catkd.engine.validate import config_from_dict

    tr = Trainer.from_config(config_from_dict(cfg_dict), log=lambda m: None)
    ready.set()
    go.wait()
    stats = tr.train_epoch(1)
    q.put(stats["teacher_images"])


def _run_trials(cfg_dict: dict, n: int) -> list[int]:
    ctx = mp.get_context("spawn")
    go, q = ctx.Event(), ctx.Queue()
    ready = [ctx.Event() for _ in range(n)]
    procs = [ctx.Process(target=_sharing_trial, args=(cfg_dict, ready[i], go, q)) for i in range(n)]
    for p in procs:
        p.start()
    for r in ready:
        r.wait(300)
    go.set()  # all start their first epoch together, as ASHA's first max_concurrent trials do
    counts = [q.get(timeout=600) for _ in range(n)]
    for p in procs:
        p.join(60)
    return counts


def bench_sharing(teacher_ckpt: str, trials: int = 4) -> dict:
    """`trials` same-seed CAT-KD trials (different β) start together on one empty store vs one alone."""
    with tempfile.TemporaryDirectory(prefix="catkd-bench-share-") as tmp:
        def cfg(cache: str, beta: float) -> dict:
            return smoke_cfg(teacher_ckpt, tmp, **{"RUN.TEACHER_CACHE": cache,
                                                   "CAT_KD.LOSS.CAT_loss_weight": beta}).to_dict()

        alone = _run_trials(cfg(os.path.join(tmp, "alone"), 1.0), 1)[0]
        together = _run_trials(cfg(os.path.join(tmp, "shared"), 1.0), trials)
    ratio = sum(together) / alone
    print(f"cache: {trials} concurrent same-seed trials forwarded {sum(together)} teacher images ({together}), "
          f"one trial alone {alone}: same_seed_sharing {ratio:.3f} (1 = perfect, {trials} = no sharing)")
    return {"same_seed_sharing": ratio, "same_seed_teacher_images": sum(together), "one_trial_teacher_images": alone}


def bench_smoke_study(study: str = SMOKE_STUDY, rounds: int = 2, no_prefetch_side: bool = True) -> dict:
    """The smoke study with the cache (cold store; with and, unless `no_prefetch_side` is False, without
    the prefetch) and without it, after the smoke teacher is trained; `rounds` interleaved rounds,
    medians per side."""
    from catkd.study.preflight import ensure_smoke_teacher
    from catkd.study.load import load_study
    from catkd.teacher_cache.prefetch import totals as prefetch_totals

    out: dict = {}
    tmp = tempfile.mkdtemp(prefix="catkd-bench-cache-study-")
    try:
        spec = load_study(study, smoke=True)
        teacher = ensure_smoke_teacher(spec, Path(tmp) / ".cache" / "teachers")  # not timed
        sides = {"cache": [], "cache-no-prefetch": ["--no-prefetch"],
                 "off": ["--set", "fixed.RUN.TEACHER_CACHE=off"]}
        if not no_prefetch_side:
            sides.pop("cache-no-prefetch")
        runs: dict[str, list[tuple[float, int, int]]] = {k: [] for k in sides}
        for i in range(rounds):  # interleaved: the machine's drift hits every side alike
            for label, sets in sides.items():
                shutil.rmtree(Path(tmp) / ".cache" / "teacher", ignore_errors=True)  # a cold store
                name = f"cache-{label}-{i}"
                wall, rows = run_smoke_study(study, tmp, name, extra=sets)
                ahead = (prefetch_totals(Path(tmp) / name) or {}).get("teacher_images", 0)
                trial = sum(int(r.get("teacher_images") or 0) for r in rows)
                runs[label].append((wall, trial + ahead, len(rows)))  # the prefetcher's forwards count too
                stores = sorted(p.name for p in (Path(tmp) / ".cache" / "teacher").glob("[!.]*")) if label != "off" else []
                print(f"cache: {study} --smoke, round {i + 1}, teacher cache {label}: {wall:.0f} s wall, "
                      f"{trial + ahead:,} teacher images forwarded ({trial:,} by trials, {ahead:,} prefetched) in "
                      f"{len(rows)} trial-epochs ({wall / len(rows):.2f} s wall per trial-epoch)"
                      + (f"; stores: {', '.join(stores)}" if stores else ""))
        med = lambda label, f: statistics.median(f(r) for r in runs[label])  # noqa: E731
        wall = {k: med(k, lambda r: r[0]) for k in sides}
        per_epoch = {k: med(k, lambda r: r[0] / r[2]) for k in sides}
        forwards = {k: med(k, lambda r: r[1]) for k in sides}
        for label, suffix in (("cache", ""), ("cache-no-prefetch", "_no_prefetch")):
            if label not in sides:
                continue
            out["teacher_forward_fraction" + suffix] = forwards[label] / forwards["off"]
            out["study_wall_ratio" + suffix] = wall[label] / wall["off"]
            # ASHA's arrival order changes how many trial-epochs a run trains: the same per trial-epoch
            out["study_wall_ratio_per_trial_epoch" + suffix] = per_epoch[label] / per_epoch["off"]
        out["study_wall_cache_s"], out["study_wall_off_s"] = wall["cache"], wall["off"]
        out["study_runs"] = {k: [[round(w, 1), f, n] for w, f, n in v] for k, v in runs.items()}
        # each round's own ratio: the spread says how far one median can be trusted
        out["study_wall_ratio_rounds"] = [round(c[0] / o[0], 3) for c, o in zip(runs["cache"], runs["off"])]
        beside = ""
        if no_prefetch_side:
            out["study_wall_cache_no_prefetch_s"] = wall["cache-no-prefetch"]
            beside = (f"; without the prefetch {out['teacher_forward_fraction_no_prefetch']:.3f}, "
                      f"{out['study_wall_ratio_no_prefetch']:.3f} ({out['study_wall_ratio_per_trial_epoch_no_prefetch']:.3f})")
        print(f"cache: teacher_forward_fraction {out['teacher_forward_fraction']:.3f}, study_wall_ratio "
              f"{out['study_wall_ratio']:.3f} (per trial-epoch {out['study_wall_ratio_per_trial_epoch']:.3f})"
              f"{beside}; medians of {rounds} interleaved rounds (per round: "
              f"{', '.join(f'{r:.3f}' for r in out['study_wall_ratio_rounds'])})")
        out["_teacher_ckpt"] = str(teacher)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    out["_tmp"] = tmp
    return out


def bench_real_fraction(study: str = SMOKE_STUDY) -> dict:
    """Distinct (image, view) pairs beta_sweep's seeds draw at real scale / teacher forwards without
    the cache, from the real loader's draws (CIFAR-100 sizes and split; no images, no training)."""
    from catkd.data.loader import TrainLoader
    from catkd.data.splits import stratified_holdout
    from catkd.study.checks import run_config
    from catkd.study.estimate import asha_trial_epochs
    from catkd.study.load import load_study

    spec = load_study(study)
    cfg = run_config(spec, {})
    epochs = cfg.SOLVER.EPOCHS
    labels = np.repeat(np.arange(100), 500)  # CIFAR-100: 50,000 training images, 500 per class
    train_idx, _, _ = stratified_holdout(labels, cfg.DATASET.VAL_SIZE, cfg.DATASET.SPLIT_SEED)
    n = len(train_idx)
    loader = TrainLoader(torch.zeros(n, 3, 1, 1, dtype=torch.uint8), torch.zeros(n, dtype=torch.int64),
                         (0.5,) * 3, (0.25,) * 3, cfg.SOLVER.BATCH_SIZE, source_index=torch.from_numpy(train_idx))
    views = 162
    seen = np.zeros(50_000 * views, dtype=bool)
    sc = spec.scheduler
    alive = (asha_trial_epochs(spec.search.num_samples, sc.grace_period, sc.reduction_factor, epochs)
             if sc.type == "asha" else [float(spec.search.num_samples)] * epochs)
    search_trial_epochs = sum(alive) * len(spec.seeds)
    confirm = spec.confirm
    confirm_trial_epochs = (confirm.top_k * len(confirm.seeds) * epochs) if confirm else 0
    seed_epochs = {s: epochs for s in spec.seeds}  # the longest trial of each seed draws epochs 1..max_t
    for s in (confirm.seeds if confirm else []):
        seed_epochs[s] = epochs
    t0 = time.perf_counter()
    for seed, last in seed_epochs.items():
        for e in range(1, last + 1):
            idx, v = loader.epoch_views(e, seed)
            seen[idx.numpy() * views + v.numpy()] = True
    distinct = int(seen.sum())
    forwards = (search_trial_epochs + confirm_trial_epochs) * n
    frac = distinct / forwards
    print(f"cache: {study} at real scale ({n:,} training images, {epochs} epochs, ASHA grace "
          f"{sc.grace_period} rf {sc.reduction_factor:g} over {spec.search.num_samples} trials: "
          f"{search_trial_epochs:,.0f} expected search trial-epochs + {confirm_trial_epochs:,} confirm): "
          f"{distinct:,} distinct (image, view) pairs over {forwards:,.0f} teacher forwards without the cache: "
          f"teacher_forward_fraction_real {frac:.4f} ({time.perf_counter() - t0:.0f} s of draws)")
    return {"teacher_forward_fraction_real": frac, "real_distinct_pairs": distinct, "real_forwards_without_cache": forwards}


def bench_cache(no_prefetch_side: bool = True, rounds: int = 2) -> dict:
    """Every figure above; `no_prefetch_side=False` (in `bench all`, to stay within its time budget on a
    slow 2-core machine) leaves out the smoke study's side without the prefetch; `rounds`: interleaved
    rounds of the smoke study."""
    out: dict = {}
    out.update(bench_cached_step())
    out.update(bench_real_fraction())
    study = bench_smoke_study(rounds=rounds, no_prefetch_side=no_prefetch_side)
    tmp, teacher = study.pop("_tmp"), study.pop("_teacher_ckpt")
    try:
        out.update(study)
        out.update(bench_sharing(teacher))
        out.update(bench_store_dtype(teacher))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
