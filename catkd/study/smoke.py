"""--smoke: the same study shrunk for a 2-core CPU (synthetic data, small models, few epochs)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from catkd.study.keys import subgrids
from catkd.study.spec import ConfirmSpec, StudySpec


def apply_smoke(spec: StudySpec) -> StudySpec:
    """The same study, shrunk for a 2-core CPU: synthetic data, small models, few epochs/samples."""
    sm = spec.smoke
    d = spec.model_dump()
    fixed = dict(d["fixed"])
    fixed.update({
        "SOLVER.EPOCHS": sm.epochs,
        "SOLVER.LR_DECAY_STAGES": [max(1, int(sm.epochs * 0.75))],
        "DATASET.VAL_SIZE": sm.val_size,
        "DISTILLER.TEACHER": sm.teacher,
        "DISTILLER.STUDENT": sm.student,
        "SOLVER.BATCH_SIZE": 64,
    })
    if sm.data == "synthetic":
        fixed["DATASET.TYPE"] = "synthetic"
        for k, v in sm.dataset.items():
            fixed[f"DATASET.SYNTHETIC.{k}"] = v
    # "all classes" of the real data means all classes of the synthetic set
    k = sm.dataset.get("NUM_CLASSES", 10)
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise ValueError(f"smoke.dataset.NUM_CLASSES: expected an integer >= 2, got {k!r}")
    per_class = sm.dataset.get("TRAIN_PER_CLASS", 300)
    if isinstance(per_class, int) and not isinstance(per_class, bool) and sm.val_size >= k * per_class:
        raise ValueError(f"smoke.val_size: {sm.val_size} leaves no training images "
                         f"({k} classes x {per_class} per class)")
    fixed.setdefault("DATASET.RESERVED_CLASS_NUM", k)
    fixed.setdefault("CAT_KD.CAMs_Nums", k)
    # keys of the real data that do not apply to the synthetic set
    for k in ("DATASET.ROOT", "DISTILLER.TEACHER_CKPT"):
        fixed.pop(k, None)
    fixed.update(sm.fixed)
    d["fixed"] = fixed
    for g in subgrids(d["space"]):
        for k, v in sm.space.items():
            if k in g:
                g[k] = v.model_dump(exclude_none=True)
        for k in list(g):
            if k in ("DISTILLER.TEACHER", "DISTILLER.STUDENT") and k not in sm.space:
                g.pop(k)  # the smoke models replace the real ones
    d["search"]["num_samples"] = min(spec.search.num_samples, sm.num_samples)
    d["scheduler"]["grace_period"] = min(sm.grace_period, sm.epochs)
    d["seeds"] = sm.seeds or spec.seeds[:2]
    d["max_concurrent"] = sm.max_concurrent
    d["resources"] = sm.resources.model_dump()
    if spec.confirm is not None:
        # new seeds, disjoint from the smoke search seeds
        default = ConfirmSpec(top_k=1, seeds=[s for s in range(max(d["seeds"]) + 1, max(d["seeds"]) + 3)],
                              preset=spec.confirm.preset)
        d["confirm"] = (sm.confirm or default).model_dump()
    if sm.base:
        d["base"] = sm.base
    d["smoke_mode"] = True
    return StudySpec.model_validate(d)


def smoke_data(spec: StudySpec, cache: Path) -> Path:
    """`smoke.data: jpeg | files`: the data root (DATASET.ROOT) of small files in the real formats, written
    once into `cache` (keyed by their counts), on whichever machine asks: the driver, and each trial's node
    (the writers are deterministic, atomic and file-locked). jpeg: imagenet/{train,val} in ImageNet's
    layout; files: STL-10's binaries (stl10_binary/) and TinyImageNet's folder (tiny-imagenet-200/)."""
    d = spec.smoke.dataset
    counts = (int(d.get("NUM_CLASSES", 10)), int(d.get("TRAIN_PER_CLASS", 250)), int(d.get("TEST_PER_CLASS", 60)))
    key = hashlib.sha1(json.dumps([spec.smoke.data, *counts]).encode()).hexdigest()[:12]
    root = Path(cache) / f"{'jpegs' if spec.smoke.data == 'jpeg' else 'transfer'}-{key}"
    if spec.smoke.data == "jpeg":
        from catkd.data.jpeg_folder import write_jpeg_folder

        write_jpeg_folder(root / "imagenet", *counts, seed=0)
    else:  # the class counts are the datasets' own (10, 200); the per-class counts are the smoke's
        from catkd.data.transfer_files import write_stl10, write_tiny_imagenet

        write_stl10(root, counts[1], counts[2], seed=0)
        write_tiny_imagenet(root, counts[1], counts[2], seed=0)
    return root


def has_smoke_data(spec: StudySpec, root: str | Path) -> bool:
    """Is the smoke data written under `root` on this machine?"""
    names = ["imagenet"] if spec.smoke.data == "jpeg" else ["stl10_binary", "tiny-imagenet-200"]
    return all(Path(root, n).is_dir() for n in names)
