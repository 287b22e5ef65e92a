"""The transfer targets, STL-10 and TinyImageNet: read from their official on-disk formats (written small
into tmp_path here), resized to 32 x 32 as torchvision's Resize((32, 32)) does a PIL image, with their
labels, normalisation and errors; and the writers of small folders in those formats."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.datasets import ImageFolder

from catkd.config import Config
from catkd.data import DATASETS, DataError, ViewSet, build_data, normalize
from catkd.data import stl10, tiny_imagenet
from catkd.data.transfer_files import MANIFEST, write_stl10, write_tiny_imagenet

RESIZE = transforms.Resize((32, 32))  # the reference's transform, on a PIL image


def make_cfg(**dataset) -> Config:
    return Config.model_validate({"DATASET": dataset, "SOLVER": {"BATCH_SIZE": 16}})


def reference(image: Image.Image | Path | str) -> np.ndarray:
    """What the reference feeds its model (before normalisation), as 3 x 32 x 32 uint8."""
    if not isinstance(image, Image.Image):
        with Image.open(image) as im:
            return reference(im)
    return np.asarray(RESIZE(image.convert("RGB"))).transpose(2, 0, 1)


def _digest(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- STL-10 ----------------------------------------------------------------------------------------
def write_stl_split(folder: Path, split: str, images_hwc: np.ndarray, labels: list[int]) -> None:
    """The official layout: per image 3 planes of 96 x 96, each stored column-major; labels uint8 1..10."""
    folder.mkdir(parents=True, exist_ok=True)
    np.ascontiguousarray(images_hwc.transpose(0, 3, 2, 1)).tofile(folder / f"{split}_X.bin")
    np.asarray(labels, dtype=np.uint8).tofile(folder / f"{split}_y.bin")


def lopsided_images(n: int, seed: int = 0) -> np.ndarray:
    """96 x 96 x 3 images that no transpose or flip leaves unchanged: noise, a bright block at the top
    left, a dark bar along the bottom."""
    rng = np.random.default_rng(seed)
    x = rng.integers(60, 200, (n, 96, 96, 3), dtype=np.uint8)
    x[:, 5:30, 8:20] = 255
    x[:, 85:, :] = 0
    return x


@pytest.fixture
def stl_raw(tmp_path):
    train, test = lopsided_images(3, 0), lopsided_images(2, 1)
    write_stl_split(tmp_path / "stl10_binary", "train", train, [1, 10, 5])
    write_stl_split(tmp_path / "stl10_binary", "test", test, [2, 3])
    return tmp_path, train, test


def test_stl10_images_read_back_upright_resized_as_the_reference_and_labels_shifted_to_0(stl_raw):
    root, train, test = stl_raw
    data = stl10.load_stl10(root)  # no unlabeled_X.bin, no class_names.txt: neither is needed
    for split, originals, labels in (("train", train, [0, 9, 4]), ("test", test, [1, 2])):
        images, y = data[split]
        assert images.dtype == np.uint8 and images.shape == (len(originals), 3, 32, 32)
        assert y.dtype == np.int64 and y.tolist() == labels
        for img, hwc in zip(images, originals):
            assert np.array_equal(img, reference(Image.fromarray(hwc)))
            assert not np.array_equal(img, reference(Image.fromarray(hwc.transpose(1, 0, 2).copy())))
    assert data["classes"] == [str(i) for i in range(10)]


def test_stl10_builds_end_to_end_with_mean_and_std_one_half(tmp_path):
    root = write_stl10(tmp_path, train_per_class=2, test_per_class=1)
    cfg = make_cfg(TYPE="stl10", ROOT=str(root))
    bundle = build_data(cfg, "cpu")
    assert (bundle.num_classes, bundle.image_size, bundle.train.num_samples, bundle.test.num_samples) == (10, 32, 20, 10)
    assert bundle.mean == (0.5,) * 3 and bundle.std == (0.5,) * 3
    x, y = next(iter(bundle.test))
    assert torch.allclose(x, (bundle.test.images[: len(x)].float() / 255 - 0.5) / 0.5, atol=1e-6)
    assert y.tolist() == list(range(10))  # classes interleaved, labels 1..10 on disk
    batch = next(iter(bundle.train.epoch_batches(0, 0)))
    assert batch.images.shape == (16, 3, 32, 32) and batch.images.dtype == torch.float32
    assert bundle.info["dataset"] == "stl10" and bundle.info["classes"][0] == "airplane"
    entry = DATASETS["stl10"]
    assert (entry.num_classes(cfg), entry.image_size(cfg), entry.views(cfg), entry.sizes(cfg), entry.family) == (
        10, 32, ViewSet(32, 4, True), (5_000, 8_000), "cifar")
    assert bundle.views == entry.views(cfg)


def test_missing_stl10_names_where_it_looked_and_where_to_get_it(tmp_path):
    with pytest.raises(DataError) as e:
        build_data(make_cfg(TYPE="stl10", ROOT=str(tmp_path / "nowhere")), "cpu")
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "stl10_binary") in msg and "CATKD_DATA" in msg
    assert stl10.URL in msg and "train_X.bin" in msg


@pytest.mark.parametrize("break_it, names, says", [
    (lambda d: (d / "train_X.bin").write_bytes((d / "train_X.bin").read_bytes()[:-5]), "train_X.bin", "27648"),
    (lambda d: np.array([1, 2], np.uint8).tofile(d / "train_y.bin"), "train_y.bin", "2 labels for the 3 images"),
    (lambda d: np.array([1, 11, 2], np.uint8).tofile(d / "train_y.bin"), "train_y.bin", "outside 1..10"),
    (lambda d: np.array([0, 1, 2], np.uint8).tofile(d / "train_y.bin"), "train_y.bin", "outside 1..10"),
])
def test_malformed_stl10_files_are_dataerrors_naming_the_file(stl_raw, break_it, names, says):
    root = stl_raw[0]
    break_it(root / "stl10_binary")
    with pytest.raises(DataError, match=says) as e:
        stl10.load_stl10(root)
    assert str(root / "stl10_binary" / names) in str(e.value)


def test_stl10_writer_is_deterministic_written_once_and_class_structured(tmp_path):
    a = write_stl10(tmp_path / "a", 3, 2, seed=1)
    folder = a / "stl10_binary"
    before = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert write_stl10(tmp_path / "a", 3, 2, seed=1) == a  # found complete: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert _digest(folder) == _digest(write_stl10(tmp_path / "b", 3, 2, seed=1) / "stl10_binary")
    assert (folder / MANIFEST).is_file() and not (folder / "unlabeled_X.bin").exists()
    with pytest.raises(FileExistsError, match="written with"):
        write_stl10(tmp_path / "a", 4, 2, seed=1)
    # a nearest-mean-colour classifier already beats chance by far: a probe has something to learn
    data = stl10.load_stl10(a)
    (tx, ty), (vx, vy) = data["train"], data["test"]
    centres = np.stack([tx[ty == c].mean((0, 2, 3)) for c in range(10)])
    pred = np.argmin(((vx.mean((2, 3))[:, None] - centres[None]) ** 2).sum(-1), 1)
    assert (pred == vy).mean() >= 0.5


# ---- TinyImageNet ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return write_tiny_imagenet(tmp_path_factory.mktemp("tiny"), train_per_class=2, val_per_class=1)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CATKD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def annotated_val(folder: Path) -> list[tuple[Path, str]]:
    lines = (folder / "val" / "val_annotations.txt").read_text().splitlines()
    return [(folder / "val" / "images" / line.split("\t")[0], line.split("\t")[1]) for line in lines]


def test_tiny_imagenet_labels_are_sorted_wnid_indices_and_images_the_references(tiny_root, cache_dir):
    folder = tiny_root / "tiny-imagenet-200"
    listed = (folder / "wnids.txt").read_text().split()
    assert len(listed) == 200 and listed != sorted(listed)  # the official file is not sorted either
    wnids = sorted(listed)
    data = tiny_imagenet.load_tiny_imagenet(tiny_root)
    (tx, ty), (vx, vy) = data["train"], data["val"]
    assert tx.shape == (400, 3, 32, 32) and vx.shape == (200, 3, 32, 32) and tx.dtype == vx.dtype == np.uint8
    assert ty.dtype == vy.dtype == np.int64
    # train: ImageFolder's order and labels on train/, pixels of its loader resized as the reference does
    folder_set = ImageFolder(str(folder / "train"))
    assert folder_set.classes == wnids and ty.tolist() == folder_set.targets
    assert all(np.array_equal(x, reference(folder_set.loader(p))) for x, (p, _) in zip(tx, folder_set.samples))
    # val: the annotations file's order, its wnids' sorted indices
    val = annotated_val(folder)
    assert vy.tolist() == [wnids.index(w) for _, w in val]
    assert all(np.array_equal(x, reference(p)) for x, (p, _) in zip(vx, val))
    assert data["classes"][:2] == ["class 0", "class 1"]  # words.txt's first synonym


def test_tiny_imagenet_grayscale_files_read_as_rgb(tiny_root, cache_dir):
    path = tiny_root / "tiny-imagenet-200" / "train" / "n00000007" / "images" / "n00000007_0.JPEG"
    assert Image.open(path).mode == "L"
    img = tiny_imagenet.read_image(path)
    assert img.shape == (3, 32, 32) and np.array_equal(img[0], img[1]) and np.array_equal(img[1], img[2])


def test_a_val_folder_sorted_into_wnid_folders_reads_the_same_images_and_labels(tiny_root, tmp_path, cache_dir):
    shutil.copytree(tiny_root / "tiny-imagenet-200", tmp_path / "tiny-imagenet-200")
    val = tmp_path / "tiny-imagenet-200" / "val"
    for path, w in annotated_val(tmp_path / "tiny-imagenet-200"):
        (val / w / "images").mkdir(parents=True, exist_ok=True)
        path.rename(val / w / "images" / path.name)
    (val / "images").rmdir()
    (val / "val_annotations.txt").unlink()
    moved = tiny_imagenet.load_tiny_imagenet(tmp_path)
    orig = tiny_imagenet.load_tiny_imagenet(tiny_root)
    assert moved["val"][1].tolist() == ImageFolder(str(val)).targets
    pairs = lambda d: sorted((int(y), x.tobytes()) for x, y in zip(*d["val"]))  # noqa: E731
    assert pairs(moved) == pairs(orig)


def test_tiny_imagenet_builds_end_to_end_without_normalisation(tiny_root, cache_dir):
    cfg = make_cfg(TYPE="tiny_imagenet", ROOT=str(tiny_root), VAL_SIZE=200)
    bundle = build_data(cfg, "cpu")
    assert (bundle.num_classes, bundle.image_size) == (200, 32)
    assert (bundle.train.num_samples, bundle.val.num_samples, bundle.test.num_samples) == (200, 200, 200)
    assert bundle.mean == (0.0,) * 3 and bundle.std == (1.0,) * 3
    x, _ = next(iter(bundle.test))
    assert torch.allclose(x, bundle.test.images[: len(x)].float() / 255)
    assert torch.allclose(x, normalize(bundle.test.images[: len(x)], (0.0,) * 3, (1.0,) * 3))
    assert bundle.info["dataset"] == "tiny_imagenet" and len(bundle.info["classes"]) == 200
    entry = DATASETS["tiny_imagenet"]
    assert (entry.num_classes(cfg), entry.image_size(cfg), entry.views(cfg), entry.sizes(cfg), entry.family) == (
        200, 32, ViewSet(32, 4, True), (100_000, 10_000), "cifar")


def test_decoded_tiny_imagenet_is_cached_and_decoded_again_when_the_folder_changes(tiny_root, tmp_path, cache_dir):
    shutil.copytree(tiny_root / "tiny-imagenet-200", tmp_path / "tiny-imagenet-200")
    first = tiny_imagenet.load_tiny_imagenet(tmp_path)
    cached = Path(first["cache"])
    assert cached.is_file() and cached.parent == cache_dir / "datasets"
    again = tiny_imagenet.load_tiny_imagenet(tmp_path)
    assert again["cache"] == first["cache"]
    assert all(np.array_equal(a, b) for s in ("train", "val") for a, b in zip(first[s], again[s]))
    ann = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    lines = [line.split("\t") for line in ann.read_text().splitlines(keepends=True)]
    lines[0][1], lines[1][1] = lines[1][1], lines[0][1]  # the first two images' labels swapped
    ann.write_text("".join("\t".join(parts) for parts in lines))
    changed = tiny_imagenet.load_tiny_imagenet(tmp_path)
    assert changed["cache"] != first["cache"] and not cached.exists()  # the out-of-date cache is gone
    assert changed["val"][1][:2].tolist() == first["val"][1][:2][::-1].tolist()
    assert np.array_equal(changed["val"][0], first["val"][0])


def test_missing_tiny_imagenet_names_where_it_looked_and_where_to_get_it(tmp_path, cache_dir):
    with pytest.raises(DataError) as e:
        build_data(make_cfg(TYPE="tiny_imagenet", ROOT=str(tmp_path / "nowhere")), "cpu")
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "tiny-imagenet-200") in msg and "CATKD_DATA" in msg
    assert tiny_imagenet.URL in msg and "wnids.txt" in msg


def _first_line_wnid(folder: Path, wnid: str) -> None:
    ann = folder / "val" / "val_annotations.txt"
    lines = ann.read_text().splitlines(keepends=True)
    ann.write_text("\t".join([lines[0].split("\t")[0], wnid, *lines[0].split("\t")[2:]]) + "".join(lines[1:]))


@pytest.mark.parametrize("break_it, names, says", [
    (lambda f: _first_line_wnid(f, "n12345678"), "val_annotations.txt", "wnid 'n12345678' is not in"),
    (lambda f: (f / "val" / "images" / "val_0.JPEG").unlink(), "val_annotations.txt", "val_0.JPEG not found"),
    (lambda f: (f / "wnids.txt").write_text("\n".join((f / "wnids.txt").read_text().split()[1:])), "wnids.txt",
     "expected 200 distinct wnids"),
    (lambda f: (f / "train" / "n00000003" / "images" / "n00000003_1.JPEG").write_bytes(b"not a jpeg"),
     "n00000003_1.JPEG", "cannot read this image"),
    (lambda f: (f / "train" / "n99999999").mkdir(), "train", "n99999999 are not wnids"),
])
def test_malformed_tiny_imagenet_files_are_dataerrors_naming_the_file(tiny_root, tmp_path, cache_dir, break_it,
                                                                      names, says):
    folder = tmp_path / "tiny-imagenet-200"
    shutil.copytree(tiny_root / "tiny-imagenet-200", folder)
    break_it(folder)
    with pytest.raises(DataError, match=says) as e:
        tiny_imagenet.load_tiny_imagenet(tmp_path)
    assert names in str(e.value) and str(folder) in str(e.value)


def test_tiny_imagenet_writer_is_deterministic_and_written_once(tiny_root, tmp_path):
    folder = tiny_root / "tiny-imagenet-200"
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    assert write_tiny_imagenet(tiny_root, train_per_class=2, val_per_class=1) == tiny_root
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before
    assert json.loads((folder / MANIFEST).read_text())["train_per_class"] == 2
    assert len(os.listdir(folder / "train")) == 200
    assert (folder / "train" / "n00000005" / "n00000005_boxes.txt").read_text().startswith("n00000005_0.JPEG\t")
    with pytest.raises(FileExistsError, match="written with"):
        write_tiny_imagenet(tiny_root, train_per_class=3, val_per_class=1)
    assert not list(tiny_root.glob(".tiny-imagenet-200.tmp-*"))


def test_the_study_preflight_names_missing_transfer_folders(tmp_path):
    from catkd.study.preflight import preflight
    from catkd.study.spec import StudyError, StudySpec

    spec = StudySpec.model_validate({
        "name": "t", "base": "cifar100/vanilla/resnet56", "search": {"algorithm": "grid"},
        "scheduler": {"type": "fifo"}, "metric": "test_acc", "mode": "max", "seeds": [0],
        "fixed": {"DATASET.ROOT": str(tmp_path)}, "space": {"DATASET.TYPE": {"grid": ["stl10", "tiny_imagenet"]}}})
    with pytest.raises(StudyError) as e:
        preflight(spec, "t.yaml")
    msg = str(e.value)
    assert "t.yaml: STL-10 not found" in msg and str(tmp_path / "stl10_binary") in msg and stl10.URL in msg
    assert "t.yaml: TinyImageNet not found" in msg and str(tmp_path / "tiny-imagenet-200") in msg
    write_stl10(tmp_path, 1, 1)
    write_tiny_imagenet(tmp_path, 1, 1)
    preflight(spec, "t.yaml")  # both there now
