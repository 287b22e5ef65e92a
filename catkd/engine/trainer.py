"""One training run: data, models, distiller, the epoch loop, evaluation, checkpoints.

`Trainer.from_config(cfg).fit(report=...)` knows nothing of Ray. `report(metrics, checkpoint_dir)` is called
after every epoch, once that epoch's checkpoint is on disk; the Ray adapter turns it into
`tune.report`. Recipe (docs/method.md, "Training recipe"): SGD over the student's parameters, step decay at the
LR_DECAY_STAGES (lr for epoch e is LR * rate^#{s : e > s}), teacher always in eval mode. The
teacher's output reaches the distiller as targets from a provider (live, or the teacher cache).
"""
from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn

from catkd.config import Config, dump_yaml
from catkd.engine import checkpoint as ckpt
from catkd.engine.device import channels_last, resolve_device
from catkd.fsutil import atomic_write_json, atomic_write_text

Report = Callable[[dict[str, Any], Path], None]


class DivergedError(RuntimeError):
    """The loss became non-finite; the run stopped instead of training on NaN."""


@dataclass
class RunResult:
    status: str  # finished | diverged
    epochs_done: int
    best_test_acc: float
    best_val_acc: Optional[float]
    last_test_acc: float
    out_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def topk_correct(logits: Tensor, targets: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[Tensor]:
    """Number of samples whose target is among the top-k logits, for each k (as 0-d tensors)."""
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred == targets[:, None]
    return [hit[:, : min(k, maxk)].any(dim=1).sum() for k in ks]


def train_step(distiller: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, targets: Tensor,
               ctx: dict[str, Any], autocast: contextlib.AbstractContextManager
               ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """One optimisation step, the hot loop's body (also what `catkd.bench step` times).

    forward_train under `autocast`, sum of the named losses, backward, optimizer step; nothing here
    synchronises with the host. Returns (student logits, {name: weighted loss}, total loss).
    """
    with autocast:
        logits, losses = distiller.forward_train(images, targets, ctx)
    loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return logits, losses, loss


def check_teacher_file(cfg: Config) -> Path:
    """The teacher checkpoint must exist; say where we looked and how to get one."""
    from catkd.models import TeacherWeightsError
    from catkd.models.weights import teacher_hint, teacher_path

    path = teacher_path(cfg)
    if not path.is_file():
        raise TeacherWeightsError(
            f"teacher checkpoint for {cfg.DISTILLER.TEACHER} not found: looked at {path}. {teacher_hint(cfg)}"
        )
    return path


def progress_bar(mode: str, total: int, label: str):
    """A tqdm bar over an epoch's steps on a terminal (RUN.PROGRESS auto) or when asked (bar); off for
    logs and CI, where the one line per epoch is the progress."""
    from tqdm import tqdm

    on = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
    return tqdm(total=total, desc=label, unit="step", leave=False, disable=not on, file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5)


class Trainer:
    """One run from built parts. `Trainer.from_config(cfg)` builds them from a config (what
    `catkd.train`, the study trials and the smoke teacher use); tests and benchmarks may pass their own.

    targets: the teacher targets provider (catkd.teacher_cache: live teacher or cache), None for a
    distiller without a teacher."""

    def __init__(self, cfg: Config, distiller: nn.Module, data: Any, optimizer: torch.optim.Optimizer,
                 scheduler: Any, device: torch.device, targets: Any = None, out_dir: Optional[Path] = None,
                 log: Callable[[str], None] = print):
        self.cfg, self.distiller, self.data = cfg, distiller, data
        self.optimizer, self.scheduler, self.device, self.targets = optimizer, scheduler, device, targets
        self.out_dir = Path(out_dir) if out_dir is not None else cfg.output_dir
        self.log = log
        self.bf16 = cfg.RUN.PRECISION == "bf16"
        self.channels_last = channels_last(cfg.RUN.CHANNELS_LAST, device)

    @classmethod
    def from_config(cls, cfg: Config, out_dir: Optional[Path] = None, log: Callable[[str], None] = print,
                    notice: Optional[Callable[[str], None]] = None, optimizer: bool = True) -> "Trainer":
        """Validate (catkd.engine.validate, the path the study pre-flight shares), then build the data,
        models, distiller, optimiser, schedule and teacher targets provider. `notice`: where one-line
        notices go (the teacher cache's), default `log`. optimizer=False: no optimiser or schedule
        (the teacher prefetch only needs the data and the targets; torch's optimisers import
        torch._dynamo, ~1.2 s here)."""
        from catkd.data import build_data, dataset_entry
        from catkd.distillers import DISTILLERS, build_distiller
        from catkd.engine.validate import validate_run
        from catkd.models import build_model, load_teacher_weights
        from catkd.models.weights import teacher_path
        from catkd.teacher_cache import build_targets

        if cfg.RUN.THREADS:
            torch.set_num_threads(cfg.RUN.THREADS)
        device = resolve_device(cfg.RUN.DEVICE)
        kind = DISTILLERS.get(cfg.DISTILLER.TYPE)
        validate_run(cfg)
        if kind.needs_teacher:  # fail before the (possibly slow) data loading
            check_teacher_file(cfg)
        seed_everything(cfg.EXPERIMENT.SEED)
        data = build_data(cfg, device)
        family = dataset_entry(cfg).family
        k = data.num_classes
        student = build_model(cfg.DISTILLER.STUDENT, num_classes=k, head_bias=kind.student_head_bias, family=family)
        teacher = None
        if kind.needs_teacher:
            teacher = build_model(cfg.DISTILLER.TEACHER, num_classes=k, head_bias=True, family=family)
            load_teacher_weights(teacher, teacher_path(cfg))
        distiller = build_distiller(cfg, student, teacher, k).to(device)
        distiller.bind_data(data)
        extra = distiller.extra_parameter_count()
        if extra:  # MDistiller prints the same count ("Extra parameters of ...")
            log(f"extra parameters of {cfg.DISTILLER.TYPE}: {extra:,} (trained with the student, not exported)")
        if channels_last(cfg.RUN.CHANNELS_LAST, device):
            distiller.to(memory_format=torch.channels_last)
        s = cfg.SOLVER
        opt = sched = None
        if optimizer:
            opt = torch.optim.SGD(distiller.learnable_parameters(), lr=s.LR, momentum=s.MOMENTUM,
                                  weight_decay=s.WEIGHT_DECAY, nesterov=s.NESTEROV)
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=s.LR_DECAY_STAGES, gamma=s.LR_DECAY_RATE)
        self = cls(cfg, distiller, data, opt, sched, device, out_dir=out_dir, log=log)
        self.targets = build_targets(cfg, distiller, data, device, self._autocast, log=notice or log,
                                     channels_last=self.channels_last)
        return self

    # ---- the loop -----------------------------------------------------------------------
    def _autocast(self):
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _images(self, images: Tensor) -> Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def fill_teacher_targets(self, batch) -> int:
        """Compute the teacher cache entries of a TrainBatch that nobody has filled or claimed, as
        `step` would (the prefetch), without waiting for another process's claims; returns the images
        the teacher forwarded (0 without a teacher cache)."""
        if not getattr(self.targets, "cached", False):
            return 0
        images = self._images(batch.images)
        with torch.no_grad(), self._autocast():
            return self.targets.fill(batch, images)

    def step(self, batch, epoch: int, step: int) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """One optimisation step on a TrainBatch: the teacher targets first (provider), then train_step."""
        images = self._images(batch.images)
        ctx: dict[str, Any] = {"epoch": epoch, "step": step, "index": batch.index}
        if self.targets is not None:
            with torch.no_grad(), self._autocast():
                ctx["teacher_targets"] = self.targets(batch, images)
        return train_step(self.distiller, self.optimizer, images, batch.labels, ctx, self._autocast())

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg, dist = self.cfg, self.distiller
        dist.train()
        loader = self.data.train
        progress = progress_bar(cfg.RUN.PROGRESS, len(loader), f"epoch {epoch}/{cfg.SOLVER.EPOCHS}")
        sums: dict[str, Tensor] = {}
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        total_loss = torch.zeros((), device=self.device)
        seen = 0
        t0 = time.perf_counter()
        for step, batch in enumerate(loader.epoch_batches(epoch, cfg.EXPERIMENT.SEED), 1):
            logits, losses, loss = self.step(batch, epoch, step)
            targets = batch.labels
            n = targets.shape[0]
            seen += n
            with torch.no_grad():  # accumulate on device: no host sync per step
                for name, value in losses.items():
                    sums[name] = sums.get(name, 0) + value.detach().float() * n
                total_loss += loss.detach().float() * n
                correct += (logits.argmax(1) == targets).sum()
            if step % cfg.RUN.CHECK_FINITE_EVERY == 0 and not torch.isfinite(total_loss).item():
                raise DivergedError(f"non-finite loss at epoch {epoch}, step {step}")
            progress.update(1)
        progress.close()
        if self.device.type == "cuda":  # the epoch's time, not its kernel launches
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        if not torch.isfinite(total_loss).item():
            raise DivergedError(f"non-finite loss in epoch {epoch}")
        out = {"train_loss": total_loss.item() / seen, "train_acc": 100.0 * correct.item() / seen}
        out.update({name: v.item() / seen for name, v in sums.items()})
        out["epoch_seconds"] = seconds
        out["images_per_second"] = seen / seconds if seconds > 0 else float("nan")
        if self.targets is not None:  # what the teacher cache saved this epoch
            out.update(self.targets.take_stats())
        return out

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, Any]:
        """Top-1 / top-5 accuracy (%) of the student, and top-1 hits and counts per class."""
        self.distiller.eval()
        k = self.data.num_classes
        c1 = torch.zeros((), dtype=torch.long, device=self.device)
        c5 = torch.zeros((), dtype=torch.long, device=self.device)
        hits = torch.zeros(k, dtype=torch.long, device=self.device)
        counts = torch.zeros(k, dtype=torch.long, device=self.device)
        for images, targets in loader:
            with self._autocast():
                logits = self.distiller.forward_test(self._images(images))
            a, b = topk_correct(logits.float(), targets)
            c1 += a
            c5 += b
            hits += torch.bincount(targets[logits.argmax(1) == targets], minlength=k)
            counts += torch.bincount(targets, minlength=k)
        n = int(counts.sum().item())
        return {"top1": 100.0 * c1.item() / n, "top5": 100.0 * c5.item() / n,
                "hits": hits.cpu(), "counts": counts.cpu()}

    @torch.no_grad()
    def teacher_accuracy(self) -> Optional[float]:
        """The teacher's own test top-1 (%), measured on this run's test set: what its strength was (a
        weak teacher's is the x axis of its study), never trusted from its file. None without a teacher."""
        teacher = getattr(self.distiller, "teacher", None)
        if teacher is None:
            return None
        was_training = teacher.training
        teacher.eval()
        hits = torch.zeros((), dtype=torch.long, device=self.device)
        n = 0
        for images, targets in self.data.test:
            with self._autocast():
                logits = teacher(self._images(images))[0]
            hits += (logits.argmax(1) == targets).sum()
            n += targets.shape[0]
        teacher.train(was_training)
        return 100.0 * hits.item() / max(1, n)

    def unseen_classes(self) -> list[int]:
        """Classes removed from the training set by data reduction (the model still predicts them)."""
        d = self.cfg.DATASET
        if not d.REDUCTION or d.RESERVED_CLASS_NUM >= self.data.num_classes:
            return []
        return list(range(d.RESERVED_CLASS_NUM, self.data.num_classes))

    # ---- state --------------------------------------------------------------------------
    def _full_state(self, epoch: int) -> dict[str, Any]:
        return {
            "model": self.distiller.student.state_dict(),
            "extra": self.distiller.extra_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            "best_test_acc": self.best_test,
            "best_val_acc": self.best_val,
            "history": self.history,
            "config": self.cfg.to_dict(),
            "rng": ckpt.rng_state(),
        }

    def _restore(self, state: dict[str, Any]) -> int:
        if state.get("config", {}).get("DISTILLER") != self.cfg.to_dict()["DISTILLER"]:
            raise ckpt.CheckpointError(
                "checkpoint was written by a run with other DISTILLER settings; refusing to resume"
            )
        self.distiller.student.load_state_dict(state["model"])
        self.distiller.load_extra_state_dict(state.get("extra", {}))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.best_test = state["best_test_acc"]
        self.best_val = state["best_val_acc"]
        self.history = list(state["history"])
        ckpt.set_rng_state(state["rng"])
        return int(state["epoch"])

    def _save(self, epoch: int, metrics: dict[str, Any], improved: bool) -> None:
        student = self.distiller.student.state_dict()
        ckpt.save_full(self.out_dir, self._full_state(epoch))
        if improved:
            ckpt.save_student(self.out_dir / "student_best.pth", student, epoch=epoch, best_acc=self.best_selected)
        freq = self.cfg.LOG.SAVE_CHECKPOINT_FREQ
        if epoch == self.cfg.SOLVER.EPOCHS or (freq and epoch % freq == 0):
            ckpt.save_student(self.out_dir / f"ckpt_epoch_{epoch}.pth", student, epoch=epoch, acc=metrics["test_acc"])
        lines = "".join(_json_line(m) for m in self.history)
        atomic_write_text(self.out_dir / "metrics.jsonl", lines)

    def _status(self, status: str, epoch: int, **extra: Any) -> None:
        atomic_write_json(self.out_dir / "status.json", {"status": status, "epoch": epoch, **extra})

    # ---- public -------------------------------------------------------------------------
    def fit(self, report: Optional[Report] = None, resume_from: Optional[Path] = None) -> RunResult:
        """Train to SOLVER.EPOCHS (continuing from `resume_from`, or from the output directory's
        checkpoint when RUN.RESUME is set). Returns the run's summary; a run whose loss becomes
        non-finite stops with status "diverged" (its last good checkpoint is kept)."""
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.best_test, self.best_val = 0.0, None
        self.history: list[dict[str, Any]] = []
        start = 0
        src = resume_from or (self.out_dir / ckpt.FULL if cfg.RUN.RESUME else None)
        if src is not None and Path(src).is_dir():
            src = Path(src) / ckpt.FULL
        if src is not None and (resume_from is not None or Path(src).is_file()):
            start = self._restore(ckpt.load_full(Path(src)))
            self.log(f"resumed from {src} at epoch {start}")
        atomic_write_text(self.out_dir / "config.yaml", dump_yaml(cfg))
        atomic_write_json(self.out_dir / "data.json", self.data.info)
        teacher_acc = self.teacher_accuracy()
        if teacher_acc is not None:
            self.log(f"teacher {cfg.DISTILLER.TEACHER}: test top-1 {teacher_acc:.2f}")
        total = cfg.SOLVER.EPOCHS
        epoch = start
        for epoch in range(start + 1, total + 1):
            lr = self.optimizer.param_groups[0]["lr"]
            try:
                metrics: dict[str, Any] = {"epoch": epoch, "lr": lr, **self.train_epoch(epoch)}
            except DivergedError as e:
                self.log(f"DIVERGED: {e}; stopped (last good checkpoint: epoch {epoch - 1})")
                self._status("diverged", epoch - 1, reason=str(e))
                return self._result("diverged", epoch - 1)
            self.scheduler.step()
            t_eval = time.perf_counter()
            if self.data.val is not None:
                ev = self.evaluate(self.data.val)
                metrics["val_acc"], metrics["val_acc_top5"] = ev["top1"], ev["top5"]
                self.best_val = max(self.best_val or 0.0, metrics["val_acc"])
            ev = self.evaluate(self.data.test)
            metrics["test_acc"], metrics["test_acc_top5"] = ev["top1"], ev["top5"]
            if teacher_acc is not None:
                metrics["teacher_test_acc"] = teacher_acc
            unseen = self.unseen_classes()
            if unseen:  # accuracy on test images of classes never seen in training
                metrics["test_acc_unseen"] = 100.0 * ev["hits"][unseen].sum().item() / max(1, ev["counts"][unseen].sum().item())
            metrics["eval_seconds"] = time.perf_counter() - t_eval
            selected = metrics["val_acc"] if self.data.val is not None else metrics["test_acc"]
            improved = not self.history or selected > self.best_selected
            self.best_test = max(self.best_test, metrics["test_acc"])
            metrics["best_test_acc"] = self.best_test
            if self.best_val is not None:
                metrics["best_val_acc"] = self.best_val
            self.history.append(metrics)
            self._save(epoch, metrics, improved)
            self._status("running" if epoch < total else "finished", epoch)
            self.log(_epoch_line(metrics, total))
            if report is not None:
                report(metrics, self.out_dir)
        return self._result("finished", epoch)

    @property
    def best_selected(self) -> float:
        key = "val_acc" if self.data.val is not None else "test_acc"
        return max((m[key] for m in self.history), default=-math.inf)

    def _result(self, status: str, epochs_done: int) -> RunResult:
        last = self.history[-1]["test_acc"] if self.history else float("nan")
        return RunResult(status, epochs_done, self.best_test, self.best_val, last, self.out_dir, self.history)


def _json_line(m: dict[str, Any]) -> str:
    import json

    return json.dumps(m) + "\n"


def _epoch_line(m: dict[str, Any], total: int) -> str:
    terms = " ".join(f"{k[5:]} {v:.4g}" for k, v in m.items() if k.startswith("loss_"))
    val = f" val {m['val_acc']:.2f}" if "val_acc" in m else ""
    return (
        f"epoch {m['epoch']}/{total} lr {m['lr']:.4g} loss {m['train_loss']:.4f} ({terms}) "
        f"train {m['train_acc']:.2f}{val} test {m['test_acc']:.2f}/{m['test_acc_top5']:.2f} "
        f"best {m['best_test_acc']:.2f} | {m['epoch_seconds']:.1f}s {m['images_per_second']:.0f} img/s"
    )
