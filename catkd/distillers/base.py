"""The one distiller contract (MDistiller's): `forward_train -> (student logits, {name: weighted loss})`.

The engine sums the dict and logs every term; the teacher is frozen and stays in eval mode whatever
`train()` is called with. Nothing here knows the device: tensors arrive where the engine put them.

Teacher targets (docs/contracts.md, C8): a distiller with a teacher declares what it uses of the
teacher's output, `teacher_targets(logits, feats) -> {name: (N, ...) tensor}`, and computes its
losses from those targets only. They come from the live teacher or, identical up to the storage
dtype, from the teacher cache (`ctx["teacher_targets"]`); `target_spec()` names the parameters the
targets depend on (part of the cache's key).
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor, nn

from catkd.config import Config, ConfigError


class Distiller(nn.Module):
    """Extra modules: every submodule, parameter or buffer of a distiller other than `student` and
    `teacher` (FitNet's regressor, CRD's embeddings and memory, ...). They train with the student
    (`learnable_parameters`), are saved in and restored from checkpoint.pth (`extra_state_dict`),
    and are never part of the exported student (student_best.pth, ckpt_epoch_*.pth), as in MDistiller."""

    needs_teacher: bool = False  # does the run need a trained teacher checkpoint
    # how tables show the method, and the paper's group for it: "feature", "logit" or "attention/CAM"
    label: str = ""
    family: str = "feature"
    student_head_bias: bool = True  # CAT/CAT-KD students have a bias-free CAM head
    # False where the teacher's output is not a function of the image alone (OFD's teacher normalises
    # with batch statistics): the run then always uses the live teacher.
    cacheable: bool = True

    def __init__(self, student: nn.Module, teacher: Optional[nn.Module] = None):
        super().__init__()
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()

    @classmethod
    def from_config(cls, cfg: Config, student: nn.Module, teacher: Optional[nn.Module], num_classes: int):
        raise NotImplementedError

    @classmethod
    def for_timing(cls, cfg: Config, student: nn.Module, teacher: Optional[nn.Module], num_classes: int):
        """The method on untrained models, for a speed measurement (--dry-run): from_config, unless that
        reads a file only the run has (the probe's trained student)."""
        return cls.from_config(cfg, student, teacher, num_classes)

    @classmethod
    def check_config(cls, cfg: Config, num_classes: int, cam_shapes: Callable[[], dict[str, tuple[int, int]]]) -> None:
        """Raise ConfigError (naming the key) for settings that cannot work with this dataset's class
        count or these models' CAMs (`cam_shapes()` -> {"teacher": (H, W), "student": (H, W)}).

        By default the distiller is built on untrained models: whether a pair's stage shapes and
        channels suit the method (KDSVD's widths, OFD's BatchNorms, ...) shows there, so a study's
        pre-flight refuses such a pair before any trial starts."""
        from catkd.data import dataset_entry

        family = dataset_entry(cfg).family
        student = _bare_model(cfg.DISTILLER.STUDENT, num_classes, cls.student_head_bias, family)
        teacher = _bare_model(cfg.DISTILLER.TEACHER, num_classes, True, family) if cls.needs_teacher else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the run itself says them
            try:
                cls.from_config(cfg, student, teacher, num_classes)
            except ConfigError:
                raise
            except (ValueError, NotImplementedError) as e:
                raise construction_error(cfg, e) from None

    def target_spec(self) -> dict[str, Any]:
        """What the teacher targets depend on besides the teacher and the input (the cache key)."""
        return {}

    def teacher_targets(self, logits: Tensor, feats: dict[str, Any]) -> dict[str, Tensor]:
        """The teacher's output as this distiller uses it: {name: (N, ...) float tensor}, computed
        from target_spec() alone (catkd.distillers.targets)."""
        from catkd.distillers.targets import compute_targets

        return compute_targets(self.target_spec(), logits, feats)

    def live_targets(self, images: Tensor) -> dict[str, Tensor]:
        logits, feats = self.teacher_outputs(images)
        return self.teacher_targets(logits, feats)

    def targets(self, images: Tensor, ctx: dict[str, Any]) -> dict[str, Tensor]:
        """The batch's teacher targets: the engine's (cache or live provider), else the live teacher."""
        t = ctx.get("teacher_targets")
        return t if t is not None else self.live_targets(images)

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # BN statistics of the teacher never move
        return self

    def learnable_parameters(self) -> Iterator[nn.Parameter]:
        """The student's parameters and the extra modules' (one SGD group, as MDistiller)."""
        return (p for name, p in self.named_parameters() if not name.startswith("teacher."))

    def extra_state_dict(self) -> dict[str, Tensor]:
        """The extra modules' parameters and buffers (checkpoint.pth's "extra"), by distiller path."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(("student.", "teacher."))}

    def load_extra_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore `extra_state_dict()` exactly; a missing or unknown key is an error."""
        own = self.extra_state_dict()
        if set(state) != set(own):
            raise KeyError(f"extra modules differ: missing {sorted(set(own) - set(state))}, "
                           f"unexpected {sorted(set(state) - set(own))}")
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v)

    def extra_parameter_count(self) -> int:
        """What the run prints as extra parameters at start (MDistiller's `get_extra_parameters`)."""
        return sum(p.numel() for name, p in self.named_parameters()
                   if not name.startswith(("student.", "teacher.")))

    def bind_data(self, data: Any) -> None:
        """Called once with the run's data before training (CRD reads the training labels)."""

    def teacher_outputs(self, images: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """The frozen teacher's (logits, feats), no autograd graph.

        Call it before the student's forward: the teacher's transient activations then reuse memory
        that is free, instead of being allocated beside the student's saved activations. On CPU that
        order alone measured 1.15-1.19x vs 1.00-1.02x of the compute floor (`python -m catkd.bench step`).
        """
        assert self.teacher is not None
        with torch.no_grad():
            return self.teacher(images)

    def forward_train(self, images: Tensor, labels: Tensor, ctx: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def forward_test(self, images: Tensor) -> Tensor:
        return self.student(images)[0]

    def forward(self, images: Tensor) -> Tensor:  # eval path (used by nn.Module conventions)
        return self.forward_test(images)


def construction_error(cfg: Config, e: Exception) -> ConfigError:
    """A pair the configured method cannot run, as the ConfigError the user sees (exit 2)."""
    d = cfg.DISTILLER
    return ConfigError(f"{d.TYPE} cannot distil {d.TEACHER} -> {d.STUDENT}: {e}")


@functools.lru_cache(maxsize=32)  # a study's models, checked under many methods and settings (the zoo has ~30)
def _bare_model(name: str, num_classes: int, head_bias: bool, family: str) -> nn.Module:
    """An untrained model for `check_config` (cached: a study checks many settings of one pair)."""
    from catkd.models import build_model

    return build_model(name, num_classes=num_classes, head_bias=head_bias, family=family)
