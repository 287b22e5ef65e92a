"""Targets providers: what the Trainer asks for a batch's teacher targets (it knows nothing else).

- LiveTargets: the frozen teacher on the batch (the distiller's `live_targets`).
- CachedTargets: the same values from the store, computing only the (image, view) entries nobody
  has computed yet, and always returning the values as stored.

`build_targets` chooses: RUN.TEACHER_CACHE `off` -> live; `auto` (default) or a directory -> the
cache, unless the data has no finite view set (ImageNet), the store would exceed
RUN.TEACHER_CACHE_MAX_GB, or it cannot be created; each of those says so in one line and uses the
live teacher.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor

from catkd.distillers.targets import TARGET_KINDS, compute_targets
from catkd.fsutil import user_cache_dir
from catkd.teacher_cache.store import FORMAT_VERSION, Layout, StoreError, TeacherStore

# float16: per-step loss difference vs float32 targets measured in `python -m catkd.bench cache`
# (README, "Teacher cache"); half the size of float32, exact for binarised maps pooled to R x R
STORE_DTYPE = "float16"
# images per teacher forward on a miss: a fixed shape makes every entry's bits independent of
# which trial filled it (see CachedTargets._compute); 16 is as fast per image as 64 on CPU
FORWARD_CHUNK = 16
ENV_DIR = "CATKD_TEACHER_CACHE"  # set by the study driver: <storage>/.cache/teacher


class LiveTargets:
    """The live teacher. Counts the images it forwards (the epoch metric `teacher_images`)."""

    cached = False

    def __init__(self, distiller):
        self.distiller = distiller
        self.forwarded = self.lookups = 0

    def compute(self, images: Tensor) -> dict[str, Tensor]:
        return self.distiller.live_targets(images)

    def __call__(self, batch, images: Tensor) -> dict[str, Tensor]:
        n = images.shape[0]
        self.forwarded += n
        self.lookups += n
        return self.compute(images)

    def take_stats(self) -> dict[str, float]:
        """Since the last call: images the teacher forwarded, and the share served from the cache."""
        out = {"teacher_images": self.forwarded,
               "teacher_cache_hit_rate": 1.0 - self.forwarded / self.lookups if self.lookups else 0.0}
        self.forwarded = self.lookups = 0
        return out


class CachedTargets(LiveTargets):
    """The live teacher behind a TeacherStore: (batch.index, batch.view) -> stored targets.

    A miss runs the teacher once and fills, from the same forward, the entries of this store and of
    its siblings: the other stores of the same teacher, data and precision under the same root (other
    target specs, e.g. another R, or KD's logits beside CAT-KD's CAMs)."""

    cached = True
    # look for sibling stores whenever the root directory changed (a store is created by a rename
    # into it) and at least every RESCAN_S while batches miss: a trial of another R that starts
    # beside this one must share the first pass from its first batch, not 20 s later
    RESCAN_S = 5.0

    def __init__(self, distiller, store: TeacherStore, fields: tuple[tuple[str, tuple[int, ...]], ...],
                 key: Optional[dict[str, Any]] = None, log: Callable[[str], None] = print):
        super().__init__(distiller)
        self.store, self.fields, self.key, self.log = store, fields, key, log
        self._siblings: dict[str, tuple[TeacherStore, dict[str, Any]]] = {}
        self._others: set[str] = set()  # directories that are not siblings (checked once)
        self._scanned, self._root_mtime = -math.inf, None

    def siblings(self) -> list[tuple[TeacherStore, dict[str, Any]]]:
        if self.key is None:
            return []
        try:
            mtime = self.store.root.stat().st_mtime_ns
        except OSError:
            mtime = None
        if mtime == self._root_mtime and time.monotonic() - self._scanned < self.RESCAN_S:
            return list(self._siblings.values())
        self._scanned, self._root_mtime = time.monotonic(), mtime
        base = {k: v for k, v in self.key.items() if k != "targets"}
        for d in sorted(self.store.root.iterdir()):
            if d == self.store.dir or d.name.startswith(".") or d.name in self._siblings or d.name in self._others:
                continue
            try:
                header = json.loads((d / "header.json").read_text())
                key, layout = header["key"], Layout.from_describe(header["layout"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not (yet) a store: look again next time
            if ({k: v for k, v in key.items() if k != "targets"} != base
                    or key["targets"].get("targets") not in TARGET_KINDS
                    or (layout.num_images, layout.views) != (self.store.layout.num_images, self.store.layout.views)):
                self._others.add(d.name)
                continue
            try:
                self._siblings[d.name] = (TeacherStore(self.store.root, d.name, key, layout, log=self.log),
                                          key["targets"])
            except StoreError:
                continue
        return list(self._siblings.values())

    def _compute(self, images: Tensor, sibs):
        """compute(positions, sibling positions) for TeacherStore.fetch: teacher forwards on the
        images at `positions`, packed for this store and for each sibling.

        The teacher always sees FORWARD_CHUNK images at a time (the last chunk padded with repeats):
        float32 kernels round differently at other batch sizes (on CPU, 1-3 images vs 4 or more),
        so an entry's value would otherwise depend on how many images happened to miss beside it,
        i.e. on which trial filled it, and two runs of one study would train on different bits."""
        def compute(pos: np.ndarray, sib_pos: list[np.ndarray]):
            own, theirs = [], [[] for _ in sibs]
            for s in range(0, len(pos), FORWARD_CHUNK):
                p = pos[s:s + FORWARD_CHUNK]
                padded = np.resize(p, FORWARD_CHUNK)  # repeats p to the fixed size
                sub = images.index_select(0, torch.from_numpy(padded).to(images.device))
                logits, feats = self.distiller.teacher_outputs(sub)
                own.append(_pack(self.distiller.teacher_targets(logits, feats), self.fields)[:len(p)])
                for j, (sib, spec) in enumerate(sibs):
                    theirs[j].append(_pack(compute_targets(spec, logits, feats), sib.layout.fields)[:len(p)])
            local = {int(p): i for i, p in enumerate(pos)}
            return (np.concatenate(own),
                    [np.concatenate(t)[[local[int(q)] for q in p]] for t, p in zip(theirs, sib_pos)])
        return compute

    def __call__(self, batch, images: Tensor) -> dict[str, Tensor]:
        rows = self.store.rows(batch.index.numpy(), batch.view.numpy())
        sibs = self.siblings() if not self.store.flags[rows].all() else []  # only a miss fills siblings
        values, computed = self.store.fetch(rows, self._compute(images, sibs), [s for s, _ in sibs])
        self.forwarded += computed
        self.lookups += len(rows)
        v = torch.from_numpy(values).to(images.device, non_blocking=True).float()
        out, off = {}, 0
        for name, shape in self.fields:
            w = math.prod(shape)
            out[name] = v[:, off:off + w].reshape(-1, *shape)
            off += w
        return out

    def needs(self, batch) -> bool:
        """Whether any of the batch's entries is still empty in this store."""
        return not self.store.flags[self.store.rows(batch.index.numpy(), batch.view.numpy())].all()

    def fill(self, batch, images: Tensor) -> int:
        """Compute the batch's entries nobody has filled or claimed (the prefetcher); never waits for
        a trial's claim. Returns the images the teacher forwarded."""
        if not self.needs(batch):
            return 0
        rows = self.store.rows(batch.index.numpy(), batch.view.numpy())
        sibs = self.siblings()
        _, computed = self.store.fetch(rows, self._compute(images, sibs), [s for s, _ in sibs], wait=False)
        self.forwarded += computed
        return computed


def _pack(targets: dict[str, Tensor], fields) -> np.ndarray:
    """{name: (N, ...)} -> N x width float32, in the store's field order."""
    n = next(iter(targets.values())).shape[0]
    return torch.cat([targets[name].float().reshape(n, -1) for name, _ in fields], 1).cpu().numpy()


# ---- the key ------------------------------------------------------------------------------------
_SHA: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    st = path.stat()
    k = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if k not in _SHA:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA[k] = h.hexdigest()
    return _SHA[k]


def cache_key(cfg, data, distiller, channels_last: bool) -> dict[str, Any]:
    """Everything the targets depend on, and nothing else: β, the student, the seed, the reduction
    and the validation split are not in it, so studies varying them share one store."""
    from catkd.models.weights import teacher_path

    return {
        "format": FORMAT_VERSION,
        "teacher": cfg.DISTILLER.TEACHER,
        "teacher_sha256": file_sha256(teacher_path(cfg)),
        "data": data.identity,
        "mean": list(data.mean),
        "std": list(data.std),
        "views": data.views.describe(),
        "precision": cfg.RUN.PRECISION,
        "channels_last": channels_last,  # the run's memory format (RUN.CHANNELS_LAST resolved for its device)
        "targets": distiller.target_spec(),
        "dtype": STORE_DTYPE,
    }


def store_name(key: dict[str, Any]) -> str:
    spec = key["targets"]
    what = spec.get("targets", "t")
    if "resolution" in spec:
        what += f"-R{spec['resolution']}" + ("-bin" if spec.get("binarize") else "")
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return f"{key['teacher']}-{what}-{digest}"


def store_size(num_images: int, views: int, per_image_values: int, dtype: str = STORE_DTYPE) -> int:
    """Bytes a store takes on disk (values + flags + claims)."""
    fields = (("v", (per_image_values,)),)
    return Layout(num_images, views, fields, dtype).total_bytes


def cache_root(cfg) -> Optional[Path]:
    """Where stores live: RUN.TEACHER_CACHE if a directory; `auto`: the study's (CATKD_TEACHER_CACHE),
    else the user cache ($CATKD_CACHE/teacher, $XDG_CACHE_HOME/catkd/teacher, ~/.cache/catkd/teacher)."""
    mode = cfg.RUN.TEACHER_CACHE
    if mode == "off":
        return None
    if mode != "auto":
        return Path(mode).expanduser()
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    return user_cache_dir() / "teacher"


def build_targets(cfg, distiller, data, device: torch.device, autocast: Callable[[], Any],
                  log: Callable[[str], None] = print, channels_last: bool = False) -> Optional[LiveTargets]:
    """The provider for this run (None without a teacher)."""
    if distiller.teacher is None:
        return None
    live = LiveTargets(distiller)
    root = cache_root(cfg)
    if root is None:
        return live
    if not distiller.cacheable:
        log(f"teacher cache: {type(distiller).__name__}'s teacher output depends on the batch, not on the "
            "image alone: using the live teacher")
        return live
    if data.views is None:
        log(f"teacher cache: {cfg.DATASET.TYPE} has no finite set of training views (random resized crops): "
            "using the live teacher")
        return live
    size = data.image_size
    with torch.no_grad(), autocast():
        probe = live.compute(torch.zeros(1, 3, size, size, device=device))
    fields = tuple((name, tuple(int(d) for d in t.shape[1:])) for name, t in probe.items())
    layout = Layout(data.source_size, data.views.count, fields, STORE_DTYPE)
    cap = cfg.RUN.TEACHER_CACHE_MAX_GB
    if layout.total_bytes > cap * 1e9:
        log(f"teacher cache: the store would take {layout.total_bytes / 1e9:.1f} GB "
            f"(> RUN.TEACHER_CACHE_MAX_GB {cap:g}): using the live teacher")
        return live
    key = cache_key(cfg, data, distiller, channels_last)
    try:
        store = TeacherStore(root, store_name(key), key, layout, log=log)
    except StoreError as e:
        log(f"teacher cache: {e}: using the live teacher")
        return live
    return CachedTargets(distiller, store, fields, key=key, log=log)
