"""Write the ImageNet presets of the methods the DKD and CAT-KD papers compare on ImageNet, for the
CAT-KD reference's two pairs: catkd/configs/imagenet/<METHOD>/<pair>.yaml and the students alone,
catkd/configs/imagenet/vanilla/<student>.yaml.

The pairs keep the CAT-KD reference's names (imagenet/CAT-KD/r34_r18, r50_mv2; "mv2" there is the
MobileNetV1-style student, which the reference calls MobileNetV2), so `method` and `pair` of a study
pick each method's preset of the same pair. Settings are MDistiller's configs/imagenet/<pair>/<method>
files: 100 epochs, decay x0.1 at 30/60/90, weight decay 1e-4, momentum 0.9; batch 512 and LR 0.2
(KD, DKD, AT, and the students alone), batch 256 and LR 0.1 (CRD, ReviewKD), batch 128 and LR 0.05
(OFD, ResNet50 -> MobileNetV1 only: MDistiller ships no ResNet34 -> ResNet18 OFD preset). Each
distiller is built on the pair's models before its file is written. `tests/test_imagenet_study.py`
fails when the files differ from what this script writes.

    python scripts/make_imagenet_presets.py [--check]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "catkd" / "configs" / "imagenet"
PAIRS = {"r34_r18": ("ResNet34", "ResNet18"), "r50_mv2": ("ResNet50", "MobileNetV1")}
SOLVER = {"EPOCHS": 100, "LR_DECAY_STAGES": [30, 60, 90], "LR_DECAY_RATE": 0.1, "WEIGHT_DECAY": 0.0001,
          "MOMENTUM": 0.9, "TYPE": "SGD"}
BIG, MID, SMALL = {"BATCH_SIZE": 512, "LR": 0.2}, {"BATCH_SIZE": 256, "LR": 0.1}, {"BATCH_SIZE": 128, "LR": 0.05}
REVIEWKD = {"SHAPES": [1, 7, 14, 28, 56], "OUT_SHAPES": [1, 7, 14, 28, 56], "WARMUP_EPOCHS": 1, "STU_PREACT": True,
            "CE_WEIGHT": 1.0}
# (method, pair) -> (what the file says, the solver's batch/LR, the method's section)
METHODS = {
    ("KD", "r34_r18"): ("KD (Hinton)", BIG, {"TEMPERATURE": 1.0, "LOSS": {"CE_WEIGHT": 0.5, "KD_WEIGHT": 0.5}}),
    ("KD", "r50_mv2"): ("KD (Hinton)", BIG, {"TEMPERATURE": 1.0, "LOSS": {"CE_WEIGHT": 0.5, "KD_WEIGHT": 0.5}}),
    ("DKD", "r34_r18"): ("DKD", BIG, {"CE_WEIGHT": 1.0, "ALPHA": 1.0, "BETA": 0.5, "T": 1.0, "WARMUP": 1}),
    ("DKD", "r50_mv2"): ("DKD", BIG, {"CE_WEIGHT": 1.0, "ALPHA": 0.5, "BETA": 2.0, "T": 1.0, "WARMUP": 1}),
    ("AT", "r34_r18"): ("AT", BIG, {}),
    ("AT", "r50_mv2"): ("AT", BIG, {}),
    ("OFD", "r50_mv2"): ("OFD", SMALL, {"LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 0.0001}}),
    ("CRD", "r34_r18"): ("CRD", MID, {"FEAT": {"STUDENT_DIM": 512, "TEACHER_DIM": 512}}),
    ("CRD", "r50_mv2"): ("CRD", MID, {"FEAT": {"STUDENT_DIM": 1024, "TEACHER_DIM": 2048}}),
    ("REVIEWKD", "r34_r18"): ("ReviewKD", MID, {**REVIEWKD, "REVIEWKD_WEIGHT": 1.0,
                                                "IN_CHANNELS": [64, 128, 256, 512, 512],
                                                "OUT_CHANNELS": [64, 128, 256, 512, 512]}),
    ("REVIEWKD", "r50_mv2"): ("ReviewKD", MID, {**REVIEWKD, "REVIEWKD_WEIGHT": 8.0, "MAX_MID_CHANNEL": 256,
                                                "IN_CHANNELS": [128, 256, 512, 1024, 1024],
                                                "OUT_CHANNELS": [256, 512, 1024, 2048, 2048]}),
}
COMMON = {"DATASET": {"TYPE": "imagenet", "NUM_WORKERS": 32, "TEST": {"BATCH_SIZE": 128}}, "LOG": {"WANDB": False}}


def _text(header: str, data: dict) -> str:
    return f"# {header}\n" + yaml.safe_dump(data, sort_keys=False)


def presets() -> dict[Path, str]:
    """{path: yaml text}; each distiller built on its pair's models first (an error here is a bad preset)."""
    import torch

    from catkd.engine.validate import config_from_dict
    from catkd.distillers import build_distiller
    from catkd.models import build_model

    out: dict[Path, str] = {}
    built: dict[str, torch.nn.Module] = {}

    def model(name: str) -> torch.nn.Module:
        if name not in built:
            torch.manual_seed(0)
            built[name] = build_model(name, num_classes=1000, family="imagenet")
        return built[name]

    for (method, pair), (label, solver, section) in METHODS.items():
        teacher, student = PAIRS[pair]
        data = {"EXPERIMENT": {"NAME": "", "TAG": f"{method},imagenet,{pair}", "PROJECT": "imagenet"},
                "DATASET": COMMON["DATASET"], "DISTILLER": {"TYPE": method, "TEACHER": teacher, "STUDENT": student},
                "SOLVER": {"BATCH_SIZE": solver["BATCH_SIZE"], **SOLVER, "LR": solver["LR"]},
                **({method: section} if section else {}), "LOG": COMMON["LOG"]}
        cfg = config_from_dict(data)
        build_distiller(cfg, model(student), model(teacher), 1000)
        out[PRESETS / method / f"{pair}.yaml"] = _text(
            f"{label} ImageNet {teacher} -> {student}, MDistiller's configs/imagenet settings; teacher: "
            "torchvision's weights (or DISTILLER.TEACHER_CKPT)", data)
    for student in sorted({s for _, s in PAIRS.values()}):
        data = {"EXPERIMENT": {"NAME": "", "TAG": f"vanilla,imagenet,{student}", "PROJECT": "imagenet"},
                "DATASET": COMMON["DATASET"], "DISTILLER": {"TYPE": "NONE", "STUDENT": student},
                "SOLVER": {"BATCH_SIZE": BIG["BATCH_SIZE"], **SOLVER, "LR": BIG["LR"]}, "LOG": COMMON["LOG"]}
        config_from_dict(data)
        out[PRESETS / "vanilla" / f"{student}.yaml"] = _text(
            f"{student} trained alone on ImageNet with the distillers' recipe (100 epochs, batch 512, LR 0.2)", data)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a file differs from what would be written")
    args = ap.parse_args(argv)
    stale = []
    for path, text in presets().items():
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("stale (run python scripts/make_imagenet_presets.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
