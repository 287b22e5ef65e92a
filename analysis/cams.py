"""CAM pictures of one trial: teacher and student class activation maps on test images spread over the test set.

    python analysis/report.py EXPERIMENT_DIR --cams [--trial TRIAL_ID] [--images 6] [--out DIR]

Picks the best finished trial (confirm stage first, then search, by best_val_acc, or best_test_acc
without a validation split; a trial without
a Tune checkpoint is skipped) or --trial; loads its latest Tune checkpoint (the config always from
checkpoint.pth, the student weights from run/student_best.pth when it exists), rebuilds the test set
on the CPU and draws, per image: the image, then teacher and student CAMs for the true class and for
the teacher's top-2 classes (student-only studies: the student's CAMs and top classes). Each CAM is
bilinearly up-sampled to the image size, min-max scaled per map and overlaid ('jet', alpha 0.5).
Writes cams_<trial_id>.png. Raises CamError (report.py: exit 2) when nothing can be drawn.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from analysis.load import Study


class CamError(Exception):
    """No trial with a checkpoint, a missing teacher, an unreadable checkpoint: nothing drawn."""


@dataclass
class Picked:
    trial_id: str
    stage: str
    trial_dir: Path
    checkpoint: Path  # checkpoint_XXXXXX/checkpoint.pth
    best_test_acc: Optional[float]


def _trial_dir(study: Study, row: pd.Series) -> Path:
    """The trial's directory as recorded, else the same name under the (moved) experiment dir."""
    recorded = Path(str(row.get("trial_dir") or ""))
    if str(row.get("trial_dir") or "") and recorded.is_dir():
        return recorded
    name = recorded.name
    for cand in (study.path / name, study.path / "confirm" / name):
        if name and cand.is_dir():
            return cand
    return recorded


def latest_checkpoint(trial_dir: Path) -> Optional[Path]:
    """trial_dir/checkpoint_<n>/checkpoint.pth with the largest n, or None."""
    best: tuple[int, Optional[Path]] = (-1, None)
    for d in trial_dir.glob("checkpoint_*"):
        f = d / "checkpoint.pth"
        try:
            n = int(d.name.rsplit("_", 1)[-1])
        except ValueError:
            continue
        if f.is_file() and n > best[0]:
            best = (n, f)
    return best[1]


def pick_trial(study: Study, trial_id: Optional[str] = None) -> Picked:
    t = study.trials
    if t.empty or "trial_id" not in t:
        raise CamError(f"{study.path}: no trials recorded (trials.parquet empty or missing)")
    if trial_id is not None:
        rows = t[t["trial_id"].astype(str) == str(trial_id)]
        if rows.empty:
            known = ", ".join(map(str, t["trial_id"]))
            raise CamError(f"{study.path}: no trial {trial_id!r}; known: {known}")
        candidates = [rows.iloc[0]]
    else:
        t = t.copy()
        t["_stage"] = t.get("stage", pd.Series("search", index=t.index)) != "confirm"
        t["_finished"] = t.get("status", pd.Series("finished", index=t.index)) != "finished"
        # chosen on validation when there is a split (nothing is chosen on the test set), else the
        # best test epoch (the paper's convention, for studies without one)
        val = pd.to_numeric(t.get("best_val_acc"), errors="coerce") if "best_val_acc" in t else None
        by = val if val is not None and val.notna().any() else pd.to_numeric(t.get("best_test_acc"), errors="coerce")
        t["_acc"] = by.fillna(float("-inf"))
        # finished first, confirm before search, then the best by that metric
        t = t.sort_values(["_finished", "_stage", "_acc"], ascending=[True, True, False], kind="stable")
        candidates = [r for _, r in t.iterrows()]
    looked = []
    for row in candidates:
        tdir = _trial_dir(study, row)
        ck = latest_checkpoint(tdir) if tdir.is_dir() else None
        if ck is not None:
            acc = pd.to_numeric(pd.Series([row.get("best_test_acc")]), errors="coerce").iloc[0]
            return Picked(str(row["trial_id"]), str(row.get("stage", "search")), tdir, ck,
                          None if pd.isna(acc) else float(acc))
        looked.append(str(tdir / "checkpoint_*/checkpoint.pth"))
    shown = "; ".join(looked[:3]) + (f" (and {len(looked) - 3} more)" if len(looked) > 3 else "")
    raise CamError(f"{study.path}: no trial has a Tune checkpoint (looked for {shown})")


def _torch_load(path: Path) -> Any:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, not torch, refused as unsafe
        raise CamError(f"{path}: cannot load checkpoint safely ({type(e).__name__}: {str(e)[:200]})") \
            from None


def load_trial(picked: Picked):
    """(cfg on CPU, student state_dict, description of where the weights came from)."""
    from catkd.engine.validate import config_from_dict

    state = _torch_load(picked.checkpoint)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CamError(f"{picked.checkpoint}: not a catkd checkpoint (needs 'model' and 'config')")
    raw = copy.deepcopy(state["config"])
    raw.setdefault("RUN", {})["DEVICE"] = "cpu"
    try:
        cfg = config_from_dict(raw)
    except Exception as e:  # noqa: BLE001
        raise CamError(f"{picked.checkpoint}: its config does not validate: {str(e)[:300]}") from None
    weights, source = state["model"], f"{picked.checkpoint.parent.name} (epoch {state.get('epoch', '?')})"
    best = picked.trial_dir / "run" / "student_best.pth"
    if best.is_file():
        b = _torch_load(best)
        if isinstance(b, dict) and "model" in b:
            weights, source = b["model"], f"run/student_best.pth (epoch {b.get('epoch', '?')})"
    return cfg, weights, source


def _class_names(bundle) -> Optional[list[str]]:
    info = getattr(bundle, "info", None) or {}
    names = info.get("classes") or (info.get("generator") or {}).get("classes")
    return list(names) if names and len(names) == bundle.num_classes else None


def compute(cfg, student_sd: dict, n_images: int):
    """Forward n test images (evenly spread over the test set) through teacher (if any) and student; CPU, eval, no_grad."""
    import torch

    from catkd.models.weights import teacher_path
    from catkd.data import DataError, build_data
    from catkd.distillers import DISTILLERS
    from catkd.models import TeacherWeightsError, build_model, load_teacher_weights

    dist = DISTILLERS.get(cfg.DISTILLER.TYPE)
    family = "imagenet" if cfg.DATASET.TYPE == "imagenet" else "cifar"
    tpath = teacher_path(cfg) if dist.needs_teacher else None
    if tpath is not None and not tpath.is_file():
        raise CamError(f"teacher checkpoint not found: looked at {tpath} "
                       "(DISTILLER.TEACHER_CKPT, else $CATKD_TEACHERS/<arch>_vanilla/ckpt_epoch_240.pth)")
    try:
        bundle = build_data(cfg, torch.device("cpu"))
    except DataError as e:
        raise CamError(f"cannot build the test set: {e}") from None
    # the test set may be ordered by class: take images evenly spread over it (deterministic)
    total = bundle.test.num_samples
    if total == 0:
        raise CamError("the test set is empty")
    wanted = sorted({int(i * total / n_images) for i in range(n_images)})
    xs, ys, seen = [], [], 0
    for xb, yb in bundle.test:
        idx = [i - seen for i in wanted if seen <= i < seen + len(yb)]
        if idx:
            xs.append(xb[idx])
            ys.append(yb[idx])
        seen += len(yb)
        if seen > wanted[-1]:
            break
    x, y = torch.cat(xs).float(), torch.cat(ys).long()

    student = build_model(cfg.DISTILLER.STUDENT, bundle.num_classes, dist.student_head_bias, family)
    try:
        student.load_state_dict(student_sd, strict=True)
    except RuntimeError as e:
        raise CamError(f"student weights do not fit {cfg.DISTILLER.STUDENT}: {str(e)[:300]}") from None
    out = {"student": _forward(student, x)}
    if tpath is not None:
        teacher = build_model(cfg.DISTILLER.TEACHER, bundle.num_classes, True, family)
        try:
            load_teacher_weights(teacher, tpath)
        except TeacherWeightsError as e:
            raise CamError(str(e)) from None
        out["teacher"] = _forward(teacher, x)
    return bundle, x, y, out


def _forward(model, x):
    import torch

    model.eval()
    with torch.no_grad():
        logits, feats = model(x)
    return logits.float(), feats["cams"].float()


def draw(bundle, x, y, out: dict, title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    import torch.nn.functional as F

    names = _class_names(bundle)
    size = int(bundle.image_size)
    mean = torch.tensor(bundle.mean).view(1, -1, 1, 1)
    std = torch.tensor(bundle.std).view(1, -1, 1, 1)
    imgs = (x * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    roles = [r for r in ("teacher", "student") if r in out]
    ranker = roles[0]  # the teacher's top classes (student-only studies: the student's)
    probs = {r: out[r][0].softmax(1) for r in roles}
    top = out[ranker][0].topk(min(2, out[ranker][0].shape[1]), dim=1).indices

    def label(k: int) -> str:
        return f"{k} {names[k][:16]}" if names else f"class {k}"

    n = x.shape[0]
    slots = [("true", None)] + [(f"top{i + 1}", i) for i in range(top.shape[1])]
    ncol = 1 + len(slots) * len(roles)
    height = 2.5 * n + 1.4  # 1.4 inch for the three-line title and the first row's titles
    fig, axes = plt.subplots(n, ncol, figsize=(max(1.9 * ncol, 8.5), height), squeeze=False)
    for i in range(n):
        ax = axes[i, 0]
        ax.imshow(imgs[i])
        ax.set_title(f"#{i} true: {label(int(y[i]))}", fontsize=7)
        c = 1
        for slot, j in slots:
            k = int(y[i]) if j is None else int(top[i, j])
            for r in roles:
                cam = out[r][1][i:i + 1, k:k + 1]
                cam = F.interpolate(cam, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
                lo, hi = float(cam.min()), float(cam.max())
                cam = (cam - lo) / (hi - lo) if hi > lo else torch.zeros_like(cam)
                ax = axes[i, c]
                ax.imshow(imgs[i])
                ax.imshow(cam.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
                ax.set_title(f"{r[0].upper()} {slot}: {label(k)}\np={float(probs[r][i, k]):.2f}", fontsize=7)
                c += 1
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9, y=1 - 0.12 / height, va="top")
    # fixed margins in inches (tight_layout squeezes square image axes into each other)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.1 / height, top=1 - 1.4 / height,
                        wspace=0.08, hspace=0.45)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cams_report(study: Study, out_dir: Path, trial_id: Optional[str] = None, n_images: int = 6) -> Path:
    """Draw cams_<trial_id>.png into out_dir; CamError when nothing can be drawn."""
    if n_images < 1:
        raise CamError(f"--images must be at least 1, got {n_images}")
    picked = pick_trial(study, trial_id)
    cfg, student_sd, source = load_trial(picked)
    bundle, x, y, out = compute(cfg, student_sd, n_images)
    pair = (f"{cfg.DISTILLER.TEACHER} -> {cfg.DISTILLER.STUDENT}" if "teacher" in out
            else f"{cfg.DISTILLER.STUDENT} (no teacher)")
    acc = f", best test top-1 {picked.best_test_acc:.2f}" if picked.best_test_acc is not None else ""
    legend = "T = teacher, S = student, top-k by the teacher" if "teacher" in out else "S = student"
    synth = "SYNTHETIC data - " if cfg.DATASET.TYPE == "synthetic" else ""
    title = (f"{synth}{study.name}: trial {picked.trial_id} ({picked.stage}{acc})\n{cfg.DISTILLER.TYPE} "
             f"{pair}, student weights {source}\n"
             f"{legend}; CAMs min-max scaled per map; p = softmax score")
    return draw(bundle, x, y, out, title, out_dir / f"cams_{picked.trial_id}.png")
