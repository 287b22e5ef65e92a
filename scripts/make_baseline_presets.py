"""Write the presets of MDistiller's eleven feature distillers for the paper's CIFAR-100 pairs:
catkd/configs/cifar100/<METHOD>/<pair>.yaml.

Each preset is the pair's KD preset (its EXPERIMENT, DISTILLER and SOLVER: batch 64, 240 epochs, decay
at 150/180/210, weight decay 5e-4, LR 0.01 for ShuffleNet and MobileNet students and 0.05 otherwise,
as RepDistiller) with the method's own section at MDistiller's defaults plus the pair's keys
(ReviewKD's channel and shape lists and weight). A pair the method cannot run (KDSVD on unequal stage
widths, OFD on a ShuffleNetV2 teacher, ...) gets no preset: the script says which and why.
`tests/test_baseline_presets.py` fails when the files differ from what this script writes.

    python scripts/make_baseline_presets.py [--check]
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "catkd" / "configs" / "cifar100"
METHODS = ["FITNET", "AT", "NST", "PKT", "KDSVD", "OFD", "RKD", "VID", "SP", "CRD", "REVIEWKD"]


def _section(method: str, teacher: str, student: str) -> dict:
    from catkd.config import SECTIONS

    values = SECTIONS[method]().model_dump(exclude_none=True)
    if method == "REVIEWKD":
        from catkd.distillers.reviewkd import REVIEWKD_PAIRS

        values.update(REVIEWKD_PAIRS[(teacher, student)])
    return values


def presets() -> tuple[dict[Path, str], list[str]]:
    """{path: yaml text} of every preset, and the (method, pair, reason) lines of the pairs left out."""
    import torch

    from catkd.distillers import build_distiller
    from catkd.engine.validate import config_from_dict
    from catkd.models import build_model

    out, skipped = {}, []
    built: dict[str, torch.nn.Module] = {}

    def model(name: str) -> torch.nn.Module:  # one untrained model per architecture serves every method
        if name not in built:
            torch.manual_seed(0)
            built[name] = build_model(name)
        return built[name]

    for kd in sorted((PRESETS / "KD").glob("*.yaml")):
        base = yaml.safe_load(kd.read_text())
        teacher, student = base["DISTILLER"]["TEACHER"], base["DISTILLER"]["STUDENT"]
        for method in METHODS:
            data = {
                "EXPERIMENT": {**base["EXPERIMENT"], "TAG": f"{method},{kd.stem}"},
                "DISTILLER": {**base["DISTILLER"], "TYPE": method},
                "SOLVER": base["SOLVER"],
                method: _section(method, teacher, student),
                "LOG": base.get("LOG", {}),
            }
            try:  # can the method run this pair? (construction checks shapes and channels)
                cfg = config_from_dict(data)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    build_distiller(cfg, model(student), model(teacher), 100)
            except (ValueError, NotImplementedError) as e:  # ConfigError is a ValueError
                skipped.append(f"{method} {kd.stem}: {str(e).splitlines()[0]}")
                continue
            head = (f"# {method} {teacher} -> {student}: MDistiller's {method} defaults, the pair's KD preset's "
                    f"solver\n# (written by scripts/make_baseline_presets.py)\n")
            out[PRESETS / method / kd.name] = head + yaml.safe_dump(data, sort_keys=False)
    return out, skipped


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when a file differs, write nothing")
    args = ap.parse_args(argv)
    files, skipped = presets()
    stale = [p for p, text in files.items() if not p.is_file() or p.read_text() != text]
    extra = [p for m in METHODS for p in (PRESETS / m).glob("*.yaml") if p not in files]
    if args.check:
        for p in stale + extra:
            print(f"stale: {p.relative_to(ROOT)}")
        return 1 if stale or extra else 0
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(files[p])
    for p in extra:
        p.unlink()
    print(f"{len(files)} presets ({len(stale)} written, {len(extra)} removed); no preset for:")
    for line in skipped:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
