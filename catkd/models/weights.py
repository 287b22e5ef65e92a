"""Loading pretrained teacher weights safely, with errors that say what does not fit."""
from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

_MAX_LISTED = 5


class TeacherWeightsError(ValueError):
    """A teacher checkpoint is missing, unsafe/unreadable, or does not fit the model."""


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f" (and {more} more)" if more > 0 else "")


def _head_prefix(model: nn.Module) -> str | None:
    """Qualified name of the model's Linear head ("fc", "classifier.0", ...), if it has one."""
    name = getattr(model, "head_name", None)
    if isinstance(name, str):
        return name
    head = getattr(model, "head", None)
    for qualname, module in model.named_modules():
        if head is not None and module is head:
            return qualname
    return None


def _read(path: Path, what: str = "teacher checkpoint") -> object:
    if not path.is_file():
        where = path.resolve()
        state = "is a directory, not a file" if path.is_dir() else "not found"
        hint = (" The public CIFAR-100 teachers are in MDistiller's cifar_teachers.tar, which holds "
                "<arch>_vanilla/ckpt_epoch_240.pth (e.g. resnet32x4_vanilla/ckpt_epoch_240.pth); "
                "extract it and point to that file." if what == "teacher checkpoint" else "")
        raise TeacherWeightsError(f"{what} {state}: {path} (looked at {where}).{hint}")
    try:
        # weights_only=True: the unpickler only rebuilds tensors and plain containers, so a
        # malicious file cannot run code while being loaded.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise TeacherWeightsError(
                f"could not load {what} {path}: it is unreadable or not a torch "
                f"checkpoint ({_first_line(e)})"
            ) from e
        # torch's long message names the offending global ("Unsupported global: GLOBAL ...");
        # other refusals ("Unsupported operand 103") come from bytes that are not a checkpoint.
        culprit = next((ln.strip() for ln in str(e).splitlines() if "Unsupported" in ln), "")
        if "global" not in culprit.lower():
            raise TeacherWeightsError(
                f"{what} {path} was refused by torch.load(weights_only=True) as "
                f"unsafe or unreadable: it does not look like a torch checkpoint ({culprit})"
            ) from e
        raise TeacherWeightsError(
            f"{what} {path} was refused as unsafe by torch.load(weights_only=True): "
            "unpickling it needs objects other than tensors and plain containers, i.e. it could "
            "run code on load. Not loaded; only load such a file with weights_only=False if you "
            "trust its source." + (f" ({culprit})" if culprit else "")
        ) from e
    except Exception as e:  # truncated zip, random bytes, ...: torch raises various types
        raise TeacherWeightsError(
            f"could not load {what} {path}: it is unreadable or not a torch "
            f"checkpoint ({_first_line(e)})"
        ) from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _extract_state_dict(obj: object, path: Path, what: str = "teacher checkpoint") -> dict[str, Tensor]:
    """MDistiller {"model": sd, ...}, {"state_dict": sd, ...} or a bare sd -> sd without "module."."""
    if not isinstance(obj, Mapping):
        raise TeacherWeightsError(
            f"{what} {path} holds a {type(obj).__name__}, not a state_dict or a dict "
            "with a 'model' / 'state_dict' entry"
        )
    sd: object = obj
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            sd = obj[key]
            break
    assert isinstance(sd, Mapping)
    not_tensors = [str(k) for k, v in sd.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise TeacherWeightsError(
            f"{what} {path} is not a state_dict: entries {_listing(not_tensors)} are "
            "not tensors (expected a bare state_dict or a dict with a 'model' or 'state_dict' "
            f"entry; top-level keys: {_listing([str(k) for k in obj])})"
        )
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        # DataParallel / DistributedDataParallel checkpoints prefix every key with "module.".
        while k.startswith("module."):
            k = k[len("module."):]
        out[k] = v
    return out


def _check_fit(model: nn.Module, sd: dict[str, Tensor], path: Path) -> None:
    expected = model.state_dict()
    # BatchNorm's num_batches_tracked is bookkeeping (unused in eval); checkpoints of old PyTorch
    # lack it and BatchNorm fills it in on load, so its absence is not an error.
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected if k in sd and sd[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    problems = []
    if mismatched:
        problems.append(f"shape mismatch {_listing(mismatched)}")
    if missing:
        problems.append(f"missing keys {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listing(unexpected)}")
    hints = []
    head = _head_prefix(model)
    if head is not None:
        if any(m.startswith(f"{head}.") for m in mismatched):
            hints.append("the head's shape differs: wrong num_classes?")
        if unexpected == [f"{head}.bias"] and not missing:
            hints.append("the checkpoint has a head bias: build the teacher with head_bias=True")
        if missing == [f"{head}.bias"] and not unexpected:
            hints.append("the checkpoint has no head bias: build the model with head_bias=False")
    if len(missing) + len(unexpected) > 2:
        hints.append("wrong architecture for this checkpoint?")
    raise TeacherWeightsError(
        f"teacher checkpoint {path} does not fit {type(model).__name__}: "
        + "; ".join(problems) + (" — " + "; ".join(hints) if hints else "")
    )


def load_teacher_weights(model: nn.Module, path: str | Path) -> None:
    """Load a teacher checkpoint into `model` in place (strict; CPU; weights_only=True).

    Accepts MDistiller's {"model": state_dict, "epoch": ..., ...}, a {"state_dict": ...} dict,
    or a bare state_dict; "module." key prefixes are stripped. Raises TeacherWeightsError for a
    missing, unsafe or unreadable file, and for missing / unexpected keys or shape mismatches.
    """
    path = Path(path)
    sd = _extract_state_dict(_read(path), path)
    _check_fit(model, sd, path)
    model.load_state_dict(sd, strict=True)


def load_backbone_weights(model: nn.Module, path: str | Path) -> dict[str, object]:
    """Load a trained model's checkpoint into `model` except its head (a linear probe's new classifier):
    every key outside the head must fit, strictly. The head of the file (a Linear with or without bias, a
    CAT student's bias-free CAM head, any class count) is left out, whatever the model family calls it.
    Returns the file's other top-level entries (epoch, acc, ...) when it is a dict."""
    path = Path(path)
    obj = _read(path, "student checkpoint")
    sd = _extract_state_dict(obj, path, "student checkpoint")
    head = _head_prefix(model)
    if head is None:
        raise TeacherWeightsError(f"{type(model).__name__} has no head to replace")
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(f"{head}.")}
    sd = {k: v for k, v in sd.items() if not k.startswith(f"{head}.")}
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        problems = [f"{what} {_listing(keys)}" for what, keys in
                    (("shape mismatch", mismatched), ("missing keys", missing), ("unexpected keys", unexpected)) if keys]
        raise TeacherWeightsError(f"student checkpoint {path} does not fit {type(model).__name__} (head left out): "
                                  + "; ".join(problems) + " — wrong architecture for this checkpoint?")
    model.load_state_dict(sd, strict=False)
    return {k: v for k, v in obj.items() if k not in ("model", "state_dict")} if isinstance(obj, Mapping) else {}


# torchvision's IMAGENET1K_V1 weights: the files `torchvision.models.resnet34(weights="IMAGENET1K_V1")`
# downloads into torch.hub's checkpoints folder. The published ImageNet teacher accuracies (73.31,
# 76.13) are these weights'; catkd's ImageNet ResNets keep torchvision's parameter names.
TORCHVISION_FILES = {"ResNet18": "resnet18-f37072fd.pth", "ResNet34": "resnet34-b627a593.pth",
                     "ResNet50": "resnet50-0676ba61.pth"}
_TV_BUILDERS = {"ResNet18": "resnet18", "ResNet34": "resnet34", "ResNet50": "resnet50"}


def teacher_path(cfg) -> Path:
    """DISTILLER.TEACHER_CKPT; else, on ImageNet, torchvision's weights in torch.hub's checkpoints folder
    ($TORCH_HOME/hub/checkpoints); else $CATKD_TEACHERS/<arch>_vanilla/ckpt_epoch_240.pth (the layout
    of MDistiller's CIFAR-100 teacher archive). DISTILLER.TEACHER_EPOCH picks, beside that file, the
    teacher's checkpoint of an earlier epoch of its own training, ckpt_epoch_<E>.pth (a weaker teacher)."""
    import os

    epoch = cfg.DISTILLER.TEACHER_EPOCH
    if cfg.DISTILLER.TEACHER_CKPT:
        path = Path(cfg.DISTILLER.TEACHER_CKPT).expanduser().resolve()
        return path.with_name(f"ckpt_epoch_{epoch}.pth") if epoch is not None else path
    if cfg.DATASET.TYPE == "imagenet" and cfg.DISTILLER.TEACHER in TORCHVISION_FILES:
        return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILES[cfg.DISTILLER.TEACHER]
    base = os.environ.get("CATKD_TEACHERS") or "./download_ckpts/cifar_teachers"
    return (Path(base) / f"{cfg.DISTILLER.TEACHER}_vanilla" / f"ckpt_epoch_{epoch or 240}.pth").expanduser().resolve()


def teacher_hint(cfg) -> str:
    """How to get the teacher checkpoint teacher_path() names."""
    arch = cfg.DISTILLER.TEACHER
    if cfg.DATASET.TYPE == "imagenet" and arch in TORCHVISION_FILES and not cfg.DISTILLER.TEACHER_CKPT:
        return (f"it is torchvision's ImageNet weights for {arch}: on a machine with internet run "
                f"`python -c \"import torchvision; torchvision.models.{_TV_BUILDERS[arch]}(weights='IMAGENET1K_V1')\"` "
                f"(it saves {TORCHVISION_FILES[arch]} in torch.hub's checkpoints folder; copy it there, or set "
                "TORCH_HOME), or set DISTILLER.TEACHER_CKPT to your own checkpoint of it")
    if cfg.DATASET.TYPE == "imagenet":
        return f"set DISTILLER.TEACHER_CKPT to a checkpoint of {arch} trained on ImageNet"
    if cfg.DISTILLER.TEACHER_EPOCH is not None:
        return (f"DISTILLER.TEACHER_EPOCH {cfg.DISTILLER.TEACHER_EPOCH} asks for the teacher's checkpoint of that "
                f"epoch of its own training: train it with python -m catkd.train --cfg cifar100/vanilla/{arch} "
                "(it keeps ckpt_epoch_<E>.pth every LOG.SAVE_CHECKPOINT_FREQ epochs, 40 by default; "
                "studies/teachers.yaml trains them all) and copy its run directory there")
    return ("untar MDistiller's cifar_teachers.tar into $CATKD_TEACHERS (default ./download_ckpts/cifar_teachers), "
            "set DISTILLER.TEACHER_CKPT, or train one: python -m catkd.train --cfg "
            f"cifar100/vanilla/{arch} (its ckpt_epoch_240.pth loads as a teacher; studies/teachers.yaml trains them all)")
