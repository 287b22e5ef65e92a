"""ImageNet input: the JPEG folder writer, and the train/eval path's decoding and augmentation.

No timing here: the bench (`python -m catkd.bench pipeline --dataset imagenet`) measures speed.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from catkd.data.jpeg_folder import MANIFEST, write_jpeg_folder


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.JPEG"))}


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    return write_jpeg_folder(tmp_path_factory.mktemp("jpegs") / "imagenet", classes=3, train_per_class=4,
                             val_per_class=2, seed=5)


# ---- the JPEG folder -------------------------------------------------------------------------------
def test_imagefolder_reads_both_trees_with_the_right_classes_and_counts(jpegs):
    from torchvision.datasets import ImageFolder

    train, val = ImageFolder(str(jpegs / "train")), ImageFolder(str(jpegs / "val"))
    assert train.classes == val.classes == ["n00000000", "n00000001", "n00000002"]
    assert np.bincount(train.targets).tolist() == [4, 4, 4] and np.bincount(val.targets).tolist() == [2, 2, 2]
    assert (jpegs / "train" / "n00000001" / "n00000001_3.JPEG").is_file()
    assert sorted(p.name for p in (jpegs / "val").rglob("*.JPEG")) == [f"ILSVRC2012_val_{k:08d}.JPEG"
                                                                       for k in range(1, 7)]


def test_files_are_jpegs_of_imagenet_like_sizes_with_class_dependent_content(jpegs):
    from PIL import Image

    sizes, means = set(), {}
    for p in sorted((jpegs / "train").rglob("*.JPEG")):
        assert p.read_bytes()[:2] == b"\xff\xd8"  # the JPEG start-of-image marker
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            w, h = im.size
            assert 300 <= w <= 500 and 250 <= h <= 400
            sizes.add(im.size)
            means.setdefault(p.parent.name, []).append(np.asarray(im).reshape(-1, 3).mean(0))
    assert len(sizes) > 6  # sizes vary
    # a class's images share a colour: mean colours are closer within a class than between classes
    centre = {c: np.mean(v, 0) for c, v in means.items()}
    within = max(np.abs(v - centre[c]).max() for c, vs in means.items() for v in vs)
    between = min(np.abs(centre[a] - centre[b]).max() for a in centre for b in centre if a < b)
    assert within < between


def test_same_arguments_write_the_same_bytes_and_other_seeds_differ(jpegs, tmp_path):
    again = write_jpeg_folder(tmp_path / "a", classes=3, train_per_class=4, val_per_class=2, seed=5)
    other = write_jpeg_folder(tmp_path / "b", classes=3, train_per_class=4, val_per_class=2, seed=6)
    assert _digest(again) == _digest(jpegs)
    assert _digest(other).keys() == _digest(jpegs).keys() and _digest(other) != _digest(jpegs)


def test_a_second_call_finds_the_folder_complete_and_other_arguments_are_refused(jpegs):
    before = {p: p.stat().st_mtime_ns for p in jpegs.rglob("*")}
    assert write_jpeg_folder(jpegs, classes=3, train_per_class=4, val_per_class=2, seed=5) == jpegs
    assert {p: p.stat().st_mtime_ns for p in jpegs.rglob("*")} == before  # nothing rewritten
    with pytest.raises(FileExistsError, match="written with"):
        write_jpeg_folder(jpegs, classes=3, train_per_class=5, val_per_class=2, seed=5)
    assert not list(jpegs.parent.glob(".imagenet.tmp-*"))


def test_a_folder_not_written_by_it_is_refused(tmp_path):
    (tmp_path / "x" / "train").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not a folder written by"):
        write_jpeg_folder(tmp_path / "x", classes=2, train_per_class=1, val_per_class=1)


def test_two_processes_writing_at_once_get_one_complete_folder(tmp_path):
    code = ("import sys; from catkd.data.jpeg_folder import write_jpeg_folder; "
            "print(write_jpeg_folder(sys.argv[1], classes=2, train_per_class=6, val_per_class=2))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "f")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len(_digest(tmp_path / "f")) == 16 and (tmp_path / "f" / MANIFEST).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".f.lock", "f"]  # no temporary sibling left
