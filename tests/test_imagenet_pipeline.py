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


# ---- the training crops ----------------------------------------------------------------------------
def _reference_box(height, width, seed):
    """torchvision's own sampler, on the global RNG seeded with `seed` (restored afterwards)."""
    from torchvision import transforms

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        box = transforms.RandomResizedCrop.get_params(torch.empty(1, height, width), [0.08, 1.0], [3 / 4, 4 / 3])
        flip = bool(torch.rand(1) < 0.5)
    return box, flip


def test_crop_boxes_are_torchvisions_get_params_for_the_same_generator_state():
    from catkd.data.imagenet import crop_box

    for seed, (h, w) in enumerate([(375, 500), (500, 333), (256, 256), (30, 40), (1000, 120), (64, 2000)] * 30):
        g = torch.Generator().manual_seed(seed)
        box = crop_box(h, w, g)
        flip = bool(torch.rand(1, generator=g) < 0.5)  # the draw after the box, as RandomHorizontalFlip's
        assert (box, flip) == _reference_box(h, w, seed)


def test_crop_areas_and_aspect_ratios_lie_in_the_reference_ranges():
    from catkd.data.imagenet import crop_box

    g = torch.Generator().manual_seed(0)
    boxes = np.array([crop_box(375, 500, g) for _ in range(4000)])
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 375).all() and (left + w <= 500).all()
    area, ratio = h * w / (375 * 500), w / h
    # rounding w and h to whole pixels moves area and ratio by well under 1% at these sizes
    assert area.min() > 0.08 * 0.99 and area.max() <= 1.0
    assert ratio.min() > 3 / 4 * 0.99 and ratio.max() < 4 / 3 * 1.01
    # and they fill the ranges (a large box of an extreme ratio does not fit and is drawn again)
    assert np.quantile(area, 0.02) < 0.1 and np.quantile(area, 0.98) > 0.85
    assert np.quantile(ratio, 0.02) < 0.77 and np.quantile(ratio, 0.98) > 1.3


def test_a_training_crop_is_torchvisions_crop_and_flip_of_the_same_box(jpegs):
    """Same box and flip as RandomResizedCrop + RandomHorizontalFlip seeded alike; pixels from libjpeg-turbo and
    torch's antialiased resize instead of PIL's: within 1 level on average."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    from catkd.data.imagenet import train_image

    diffs = []
    for seed, path in enumerate(sorted((jpegs / "train").rglob("*.JPEG"))):
        (top, left, h, w), flip = _reference_box(*Image.open(path).size[::-1], seed)
        ref = TF.resized_crop(Image.open(path).convert("RGB"), top, left, h, w, [224, 224])
        ref = TF.pil_to_tensor(TF.hflip(ref) if flip else ref).permute(1, 2, 0)
        ours = train_image(str(path), torch.Generator().manual_seed(seed))
        assert ours.shape == (224, 224, 3) and ours.dtype == torch.uint8 and ours.is_contiguous()
        diffs.append((ours.float() - ref.float()).abs().mean().item())
    assert max(diffs) < 1.0, diffs


@pytest.fixture(scope="module")
def large_jpeg(tmp_path_factory):
    """A 1200 x 960 JPEG: crops of it can be decoded at 1/2 and 1/4 in the DCT domain."""
    from PIL import Image

    from catkd.data.jpeg_folder import render_image

    arr = render_image(4, 10, np.random.default_rng(0))
    path = tmp_path_factory.mktemp("large") / "large.JPEG"
    Image.fromarray(arr).resize((1200, 960), Image.BICUBIC).save(path, quality=90)
    return path


def test_large_crops_decoded_at_a_reduction_are_close_to_the_full_decode(large_jpeg):
    """The box drawn on the full image, snapped to the reduced image's pixels (each edge by at most factor/2
    full-size pixels: under half an output pixel); the reduced decode of that box against the full decode
    of the same box, resized alike."""
    from torchvision.io import decode_jpeg, read_file

    from catkd.data.imagenet import crop_box, reduction, resized_crop, scale_box, train_image

    full = decode_jpeg(read_file(str(large_jpeg)))
    seen = {}
    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        box = crop_box(960, 1200, g)
        flip = bool(torch.rand(1, generator=g) < 0.5)
        factor = reduction(box[2], box[3], 224)
        if factor == 1 or factor in seen:
            continue
        snapped = [v * factor for v in scale_box(box, (960, 1200), (960 // factor, 1200 // factor))]
        assert max(abs(a - b) for a, b in zip(snapped, box)) <= factor  # top/left by factor/2, h/w by factor
        ref = resized_crop(full, *snapped, (224, 224))
        ref = ref.flip(1) if flip else ref
        ours = train_image(str(large_jpeg), torch.Generator().manual_seed(seed))
        seen[factor] = (ours.float() - ref.float()).abs().mean().item()
    assert set(seen) == {2, 4}
    # measured over 242 such crops of this high-contrast striped image: 0.9 (1/2) and 1.4 (1/4) levels of 255
    # on average, at most 2.2 (the snapping itself, against the drawn box: 2.5 and 3.6 on average)
    assert all(d < 2.5 for d in seen.values()), seen


def test_the_reduction_keeps_the_crop_at_least_the_output_size():
    from catkd.data.imagenet import reduction

    assert reduction(447, 2000, 224) == 1 and reduction(448, 448, 224) == 2
    assert reduction(900, 1000, 224) == 4 and reduction(1792, 1800, 224) == 8 and reduction(5000, 5000, 224) == 8


# ---- evaluation crops, the dataset and the loader --------------------------------------------------
@pytest.mark.parametrize("large", [False, True])
def test_an_eval_crop_is_close_to_torchvisions_resize_and_center_crop(jpegs, large_jpeg, large):
    from PIL import Image
    from torchvision import transforms

    from catkd.data.imagenet import eval_image

    ref_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.PILToTensor()])
    paths = [large_jpeg] if large else sorted((jpegs / "val").rglob("*.JPEG"))
    for path in paths:
        ours, ref = eval_image(str(path)), ref_tf(Image.open(path).convert("RGB")).permute(1, 2, 0)
        assert ours.shape == ref.shape == (224, 224, 3) and ours.dtype == torch.uint8 and ours.is_contiguous()
        assert (ours.float() - ref.float()).abs().mean().item() < 1.0


def test_samples_are_a_function_of_seed_epoch_and_index(jpegs):
    from torchvision.datasets import ImageFolder

    from catkd.data.imagenet import SeededFolder

    def sample(seed, epoch, i):
        ds = SeededFolder(ImageFolder(str(jpegs / "train")), True)
        ds.seed, ds.epoch = seed, epoch
        return ds[i][0]

    assert torch.equal(sample(1, 2, 3), sample(1, 2, 3))
    assert not torch.equal(sample(1, 2, 3), sample(1, 3, 3)) and not torch.equal(sample(1, 2, 3), sample(2, 2, 3))


def test_batches_do_not_depend_on_worker_count_and_leave_the_global_rng_alone(jpegs):
    from torchvision.datasets import ImageFolder

    from catkd.data.imagenet import FolderTrainLoader, SeededFolder

    def batches(workers):
        loader = FolderTrainLoader(SeededFolder(ImageFolder(str(jpegs / "train")), True), 5, workers,
                                   torch.device("cpu"))
        return [(x, y) for x, y, *_ in loader.epoch_batches(1, 7)]

    state = torch.get_rng_state()
    a, b = batches(0), batches(2)
    assert torch.equal(state, torch.get_rng_state())
    assert [tuple(x.shape) for x, _ in a] == [(5, 3, 224, 224), (5, 3, 224, 224), (2, 3, 224, 224)]
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def test_the_imagenet_bench_measures_both_paths_at_each_worker_count(jpegs):
    from catkd.bench import pipeline

    f = pipeline.bench_imagenet(root=str(jpegs), batch=4, rounds=1)
    for w in pipeline._worker_counts():
        assert f[f"imagenet_ratio_w{w}"] == pytest.approx(f[f"imagenet_catkd_ips_w{w}"] / f[f"imagenet_ref_ips_w{w}"])
    assert f["imagenet_images"] == 12 and f["imagenet_ms_decode_tv"] > 0 and 0 <= f["imagenet_draft_fraction"] <= 1


@pytest.mark.parametrize("argv", [["step", "--dataset", "imagenet"], ["pipeline", "--root", "x"],
                                  ["pipeline", "--dataset", "mnist"]])
def test_dataset_and_root_are_options_of_the_pipeline_bench_only(argv, capsys):
    from catkd.bench import cli

    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and "error" in capsys.readouterr().err


def test_the_crop_size_sets_the_training_and_evaluation_input_and_is_imagenets_alone(jpegs):
    """DATASET.CROP_SIZE: RandomResizedCrop(s) to train, Resize(s x 256/224) + CenterCrop(s) to evaluate
    (224 unset, the recipe); the model's input, the estimate and the probes read it from the data entry."""
    from catkd.config import ConfigError, build_config
    from catkd.data import build_data, dataset_entry

    def cfg(**over):
        return build_config({}, quiet=True, overrides={
            "DATASET.TYPE": "imagenet", "DATASET.ROOT": str(jpegs.parent), "DATASET.NUM_WORKERS": 0,
            "DATASET.VAL_SIZE": 3, "SOLVER.BATCH_SIZE": 4, "DATASET.TEST.BATCH_SIZE": 4, **over})

    assert dataset_entry(cfg()).image_size(cfg()) == 224
    c = cfg(**{"DATASET.CROP_SIZE": 112})
    data = build_data(c)
    assert dataset_entry(c).image_size(c) == data.image_size == data.info["crop_size"] == 112
    x, *_ = next(iter(data.train.epoch_batches(0, 0)))
    assert tuple(x.shape[1:]) == (3, 112, 112)
    for loader in (data.val, data.test):
        x, *_ = next(iter(loader))
        assert tuple(x.shape[1:]) == (3, 112, 112)
    with pytest.raises(ConfigError, match="DATASET.CROP_SIZE: the input crop is set for ImageNet only"):  # CIFAR's 32 x 32 is its own
        build_config({}, quiet=True, overrides={"DATASET.TYPE": "cifar100", "DATASET.CROP_SIZE": 112})
