"""catkd.data: on-disk CIFAR-100 format, validation split, reduction, batched augmentation, loaders,
the synthetic dataset and ImageNet folders. Everything is written small into tmp_path."""
from __future__ import annotations

import json
import pickle
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from catkd.config import Config, DatasetCfg
from catkd.data import DATASETS, DataError, EvalLoader, TrainLoader, build_data, normalize, random_crop_flip
from catkd.data import synthetic
from catkd.data.cifar100 import MEAN as CIFAR_MEAN
from catkd.data.cifar100 import STD as CIFAR_STD
from catkd.data.loader import crop_flip, draw_crop_flip, epoch_generator
from catkd.data.splits import reduce_training_set, stratified_holdout

TRAIN_PER_CLASS, TEST_PER_CLASS = 6, 2


def make_cfg(**dataset) -> Config:
    solver = {"BATCH_SIZE": dataset.pop("batch_size", 16)}
    return Config.model_validate({"DATASET": dataset, "SOLVER": solver})


def _image_with_id(i: int, rng: np.random.Generator) -> np.ndarray:
    """A 3 x 32 x 32 uint8 image whose first two pixels encode i (so images can be identified)."""
    img = rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)
    img[0, 0, 0], img[0, 0, 1] = i // 256, i % 256
    return img


def write_cifar100(root: Path, key_type: type = bytes) -> dict:
    """A tiny CIFAR-100 in the distributed layout: cifar-100-python/{train,test,meta}, pickled dicts
    with "data" uint8 N x 3072 (planar R, G, B, row-major), "fine_labels", "coarse_labels", "filenames"."""
    rng = np.random.default_rng(123)
    k = (lambda s: s.encode()) if key_type is bytes else (lambda s: s)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    offset = 0
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        labels = np.tile(np.arange(100), per_class)  # interleaved, like the originals' mixed order
        images = np.stack([_image_with_id(offset + i, rng) for i in range(len(labels))])
        offset += len(labels)
        entry = {
            k("filenames"): [f"img_{i}.png".encode() for i in range(len(labels))],
            k("batch_label"): f"{split} batch".encode(),
            k("fine_labels"): labels.tolist(),
            k("coarse_labels"): (labels // 5).tolist(),
            k("data"): images.reshape(len(labels), -1),
        }
        with open(folder / split, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        out[split] = (images, labels)
    with open(folder / "meta", "wb") as f:
        pickle.dump({k("fine_label_names"): [f"class{i}" for i in range(100)],
                     k("coarse_label_names"): [f"super{i}" for i in range(20)]}, f, protocol=2)
    return out


@pytest.fixture
def cifar(tmp_path):
    return tmp_path, write_cifar100(tmp_path)


def ids(images: torch.Tensor) -> set[int]:
    """Image ids encoded by _image_with_id (works on raw uint8 batches)."""
    return set((images[:, 0, 0, 0].long() * 256 + images[:, 0, 0, 1].long()).tolist())


# ------------------------------------------------------------------------------------------------
# CIFAR-100 on disk


@pytest.mark.parametrize("key_type", [bytes, str])
def test_cifar_files_read_back_pixels_labels_with_checksum_warning(tmp_path, key_type):
    written = write_cifar100(tmp_path, key_type)
    with pytest.warns(UserWarning, match="md5"):
        bundle = build_data(make_cfg(ROOT=str(tmp_path), TYPE="cifar100"), torch.device("cpu"))
    train_x, train_y = written["train"]
    test_x, test_y = written["test"]
    # row 0 of `data` reshaped to 3 x 32 x 32 is image 0; labels preserved; test in file order
    assert torch.equal(bundle.train.images[0], torch.from_numpy(train_x[0]))
    assert torch.equal(bundle.train.images, torch.from_numpy(train_x))
    assert bundle.train.labels.tolist() == train_y.tolist()
    assert torch.equal(bundle.test.images, torch.from_numpy(test_x))
    assert bundle.test.labels.tolist() == test_y.tolist()
    assert bundle.num_classes == 100 and bundle.image_size == 32 and bundle.val is None
    assert bundle.mean == CIFAR_MEAN and bundle.std == CIFAR_STD
    info = json.loads(json.dumps(bundle.info))
    assert info["dataset"] == "cifar100" and info["root"] == str(tmp_path.resolve())
    assert info["train_size"] == 600 and info["test_size"] == 200 and info["checksums_ok"] is False
    assert info["classes"][3] == "class3" and info["reduction"] is None


def test_cifar_root_from_env_var(tmp_path, monkeypatch):
    write_cifar100(tmp_path)
    monkeypatch.setenv("CATKD_DATA", str(tmp_path))
    with pytest.warns(UserWarning):
        bundle = build_data(make_cfg(TYPE="cifar100"), torch.device("cpu"))
    assert bundle.train.num_samples == 600


def test_missing_cifar_raises_dataerror_naming_where_and_how(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as e:
        build_data(make_cfg(ROOT=str(missing)), torch.device("cpu"))
    msg = str(e.value)
    assert str(missing / "cifar-100-python") in msg
    assert "CATKD_DATA" in msg and "DATASET.DOWNLOAD True" in msg and "--download" in msg
    assert isinstance(e.value, ValueError)


def test_cifar_download_option_uses_present_files_and_reports_failures(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    calls = []

    def offline(url, root, **kw):
        calls.append(url)
        raise OSError("network unreachable")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match="download into .* failed .*network unreachable"):
        build_data(make_cfg(ROOT=str(tmp_path / "empty"), DOWNLOAD=True), torch.device("cpu"))
    assert calls and calls[0].endswith("cifar-100-python.tar.gz")
    calls.clear()
    write_cifar100(tmp_path)
    with pytest.warns(UserWarning):
        bundle = build_data(make_cfg(ROOT=str(tmp_path), DOWNLOAD=True), torch.device("cpu"))
    assert calls == [] and bundle.train.num_samples == 600


def test_corrupt_cifar_file_raises_dataerror_naming_file(tmp_path):
    write_cifar100(tmp_path)
    bad = tmp_path / "cifar-100-python" / "train"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=str(bad)), pytest.warns(UserWarning):
        build_data(make_cfg(ROOT=str(tmp_path)), torch.device("cpu"))


# ------------------------------------------------------------------------------------------------
# data reduction


def test_reduction_keeps_first_k_classes_and_int_n_times_rate_each(cifar):
    root, written = cifar
    cfg = make_cfg(ROOT=str(root), REDUCTION=True, RESERVED_CLASS_NUM=7, RESERVED_RATE=0.5, SPLIT_SEED=3)
    with pytest.warns(UserWarning):
        b = build_data(cfg, torch.device("cpu"))
    labels = b.train.labels.numpy()
    assert sorted(set(labels.tolist())) == list(range(7))
    assert np.bincount(labels).tolist() == [int(TRAIN_PER_CLASS * 0.5)] * 7
    red = b.info["reduction"]
    assert red["classes"] == 7 and red["rate"] == 0.5 and red["split_seed"] == 3
    assert red["per_class_counts"] == [3] * 7
    # every kept image is an original training image with its own label
    train_x, train_y = written["train"]
    for img, y in zip(b.train.images[:5], labels[:5]):
        i = int(img[0, 0, 0]) * 256 + int(img[0, 0, 1])
        assert torch.equal(img, torch.from_numpy(train_x[i])) and train_y[i] == y
    # the test set is untouched and the model keeps 100 outputs
    assert b.num_classes == 100
    assert b.test.num_samples == 200 and sorted(set(b.test.labels.tolist())) == list(range(100))


def test_reduction_subset_is_seeded_and_matches_reference_count_for_500_per_class():
    labels = np.repeat(np.arange(100), 500)
    a, info = reduce_training_set(labels, 100, 10, 0.3, seed=0)
    b, _ = reduce_training_set(labels, 100, 10, 0.3, seed=0)
    c, _ = reduce_training_set(labels, 100, 10, 0.3, seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert info["per_class_counts"] == [int(500 * 0.3)] * 10 and info["split_seed"] == 0
    # not simply the first images of each class
    assert not np.array_equal(a[: int(500 * 0.3)], np.arange(int(500 * 0.3)))
    # a smaller rate keeps a subset of a larger one (same seed)
    small, _ = reduce_training_set(labels, 100, 10, 0.1, seed=0)
    assert set(small.tolist()) <= set(a.tolist())


def test_reserved_class_num_above_num_classes_is_an_error_naming_the_key(cifar):
    root, _ = cifar
    with pytest.raises(DataError, match="DATASET.RESERVED_CLASS_NUM"), pytest.warns(UserWarning):
        build_data(make_cfg(ROOT=str(root), REDUCTION=True, RESERVED_CLASS_NUM=101), torch.device("cpu"))


def test_reduction_counts_per_class_after_validation_holdout(cifar):
    root, _ = cifar
    cfg = make_cfg(ROOT=str(root), VAL_SIZE=200, REDUCTION=True, RESERVED_CLASS_NUM=100, RESERVED_RATE=0.5)
    with pytest.warns(UserWarning):
        b = build_data(cfg, torch.device("cpu"))
    # 6 per class, 2 held out -> n_c = 4 -> int(4 * 0.5) = 2 per class
    assert b.info["reduction"]["per_class_counts"] == [2] * 100
    assert b.val.num_samples == 200 and b.train.num_samples == 200
    assert not ids(b.val.images) & ids(b.train.images)


# ------------------------------------------------------------------------------------------------
# validation split


def test_val_split_is_disjoint_stratified_sized_and_seeded():
    labels = np.repeat(np.arange(10), 50)
    np.random.default_rng(0).shuffle(labels)
    keep, held, info = stratified_holdout(labels, 55, seed=4)
    assert len(held) == 55 and len(keep) == 445
    assert not set(keep.tolist()) & set(held.tolist())
    assert sorted(keep.tolist() + held.tolist()) == list(range(500))
    per_class = np.bincount(labels[held], minlength=10)
    assert per_class.max() - per_class.min() <= 1 and per_class.sum() == 55
    assert info["per_class_counts"] == per_class.tolist() and info["split_seed"] == 4
    keep2, held2, _ = stratified_holdout(labels, 55, seed=4)
    _, held3, _ = stratified_holdout(labels, 55, seed=5)
    assert np.array_equal(held, held2) and np.array_equal(keep, keep2)
    assert not np.array_equal(held, held3)


def test_val_split_respects_small_classes():
    labels = np.array([0] * 2 + [1] * 30 + [2] * 30)
    _, held, _ = stratified_holdout(labels, 30, seed=0)
    assert np.bincount(labels[held]).tolist() == [2, 14, 14]
    with pytest.raises(DataError, match="DATASET.VAL_SIZE"):
        stratified_holdout(labels, len(labels), seed=0)


def test_val_loader_holds_images_out_of_cifar_training_set(cifar):
    root, written = cifar
    with pytest.warns(UserWarning):
        b = build_data(make_cfg(ROOT=str(root), VAL_SIZE=150, SPLIT_SEED=7), torch.device("cpu"))
    assert b.val.num_samples == 150 and b.train.num_samples == 450 and b.test.num_samples == 200
    assert not ids(b.val.images) & ids(b.train.images)
    assert ids(b.val.images) | ids(b.train.images) == set(range(600))
    counts = np.bincount(b.val.labels.numpy(), minlength=100)
    assert counts.min() == 1 and counts.max() == 2
    assert b.info["val"]["size"] == 150 and b.info["val"]["split_seed"] == 7


# ------------------------------------------------------------------------------------------------
# batched augmentation


def reference_crop_flip(img: torch.Tensor, oy: int, ox: int, flip: bool, padding: int) -> torch.Tensor:
    """One image, the obvious way: pad with zeros, slice, flip."""
    c, h, w = img.shape
    padded = torch.zeros(c, h + 2 * padding, w + 2 * padding, dtype=img.dtype)
    padded[:, padding:padding + h, padding:padding + w] = img
    out = padded[:, oy:oy + h, ox:ox + w]
    return out.flip(-1) if flip else out


def test_crop_flip_matches_per_image_reference():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (200, 3, 32, 28), generator=g, dtype=torch.uint8)
    oy, ox, flip = draw_crop_flip(200, g, padding=4)
    out = crop_flip(images, oy, ox, flip, padding=4)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    for n in range(200):
        ref = reference_crop_flip(images[n], int(oy[n]), int(ox[n]), bool(flip[n]), 4)
        assert torch.equal(out[n], ref), n
    # all offsets and both flip values occur
    assert set(oy.tolist()) == set(range(9)) == set(ox.tolist()) and 0 < int(flip.sum()) < 200


def test_random_crop_flip_is_a_valid_crop_of_the_padded_image():
    g = torch.Generator().manual_seed(1)
    images = torch.randint(1, 256, (16, 3, 32, 32), generator=g, dtype=torch.uint8)
    out = random_crop_flip(images, torch.Generator().manual_seed(2), padding=4)
    for n in range(16):
        candidates = [reference_crop_flip(images[n], y, x, f, 4) for y in range(9) for x in range(9) for f in (0, 1)]
        assert any(torch.equal(out[n], c) for c in candidates)


def test_padding_is_black_and_flip_is_horizontal():
    images = torch.full((2, 3, 8, 8), 200, dtype=torch.uint8)
    images[1, :, :, 0] = 7  # mark the left column
    oy = torch.tensor([0, 4])
    ox = torch.tensor([0, 4])
    out = crop_flip(images, oy, ox, torch.tensor([False, True]), padding=4)
    # image 0 cropped at the top-left corner of the padded image: 4 zero rows and columns
    assert (out[0, :, :4, :] == 0).all() and (out[0, :, :, :4] == 0).all() and (out[0, :, 4:, 4:] == 200).all()
    # image 1: centred crop, flipped -> the marked column is now on the right
    assert torch.equal(out[1], images[1].flip(-1)) and (out[1, :, :, -1] == 7).all()


def test_crops_and_flips_are_independent_per_image():
    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8).expand(64, 3, 32, 32).contiguous()
    out = random_crop_flip(images, torch.Generator().manual_seed(0))
    distinct = {bytes(o.numpy().tobytes()) for o in out}
    assert len(distinct) > 32  # one crop per batch would give 1; 162 possibilities per image


def test_normalize_maps_padding_to_minus_mean_over_std():
    mean, std = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
    x = torch.tensor([0, 255, 128], dtype=torch.uint8).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    y = normalize(x, mean, std)
    assert y.dtype == torch.float32
    for c in range(3):
        assert y[0, c, 0, 0].item() == pytest.approx((0 - mean[c]) / std[c], abs=1e-6)
        assert y[0, c, 0, 1].item() == pytest.approx((1 - mean[c]) / std[c], abs=1e-6)
        assert y[0, c, 0, 2].item() == pytest.approx((128 / 255 - mean[c]) / std[c], abs=1e-6)


# ------------------------------------------------------------------------------------------------
# loaders


def small_loader(n: int = 10, batch: int = 4) -> TrainLoader:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    return TrainLoader(images, torch.arange(n), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), batch)


def test_train_loader_same_seed_and_epoch_gives_identical_batches_after_restart():
    a, b = small_loader(), small_loader()  # b: a "restarted" process
    for epoch in range(3):
        list(a.epoch_batches(epoch, seed=5))
    torch.manual_seed(1234)  # the global RNG plays no part
    first = list(a.epoch_batches(3, seed=5))
    second = list(b.epoch_batches(3, seed=5))
    assert len(first) == len(second) == 3
    for (x1, y1, i1, v1), (x2, y2, i2, v2) in zip(first, second):
        assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(i1, i2) and torch.equal(v1, v2)


def test_train_loader_leaves_global_rng_alone():
    state = torch.get_rng_state()
    list(small_loader().epoch_batches(0, 0))
    assert torch.equal(state, torch.get_rng_state())


def test_train_loader_order_changes_with_epoch_and_seed():
    loader = small_loader(64, 8)
    order = lambda e, s: torch.cat([b.labels for b in loader.epoch_batches(e, s)]).tolist()
    assert order(0, 0) != order(1, 0) and order(0, 0) != order(0, 1)
    assert order(0, 1) != order(1, 0)  # (seed, epoch) is mixed, not added


def test_train_loader_sees_every_sample_once_and_keeps_last_partial_batch():
    loader = small_loader(10, 4)
    assert len(loader) == 3 and loader.num_samples == 10
    batches = list(loader.epoch_batches(0, 0))
    assert [len(b.labels) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat([b.labels for b in batches]).tolist()) == list(range(10))
    x, y, _, _ = batches[0]
    assert x.dtype == torch.float32 and x.shape == (4, 3, 8, 8) and y.dtype == torch.int64


def test_train_loader_batches_are_augmented_normalised_images_of_their_labels():
    loader = small_loader(32, 32)
    x, y, _, _ = next(loader.epoch_batches(0, 0))
    raw = torch.round((x * 0.25 + 0.5) * 255).to(torch.uint8)
    pad_value = (0 - 0.5) / 0.25
    assert (x == pad_value).any()  # some zero padding shows
    for n in range(32):
        candidates = [reference_crop_flip(loader.images[y[n]], a, b, f, 4)
                      for a in range(9) for b in range(9) for f in (0, 1)]
        assert any(torch.equal(raw[n], c) for c in candidates)


def test_train_loader_batches_equal_crop_flip_of_the_epochs_draws():
    # the loader's pre-padded fast path and the pure `crop_flip` agree exactly, image for image
    loader = small_loader(37, 8)
    g = epoch_generator(3, 2)
    perm = torch.randperm(37, generator=g)
    oy, ox, flip = draw_crop_flip(37, g, 4)
    for b, (x, y, _, _) in enumerate(loader.epoch_batches(2, seed=3)):
        sl = slice(8 * b, 8 * b + 8)
        want = crop_flip(loader.images[perm[sl]], oy[sl], ox[sl], flip[sl], 4)
        assert torch.equal(y, perm[sl]) and torch.equal(x, normalize(want, loader.mean, loader.std))


def test_train_batches_carry_each_images_stored_index_and_its_view_id():
    # the view id decodes to the crop and flip the image actually got; the index is the row of the
    # dataset as stored (source_index), not of the (split / reduced) training set
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 3, 8, 8), generator=g, dtype=torch.uint8)
    source = torch.arange(100, 112)
    loader = TrainLoader(images, torch.arange(12), (0.5,) * 3, (0.25,) * 3, 5, source_index=source)
    seen = []
    for x, y, index, view in loader.epoch_batches(4, seed=2):
        raw = torch.round((x * 0.25 + 0.5) * 255).to(torch.uint8)
        assert index.dtype == torch.int64 and view.dtype == torch.int64
        for n in range(len(y)):
            oy, ox, f = int(view[n]) // 2 // 9, int(view[n]) // 2 % 9, int(view[n]) % 2
            assert 0 <= int(view[n]) < 162
            assert torch.equal(raw[n], reference_crop_flip(images[index[n] - 100], oy, ox, bool(f), 4))
            assert int(index[n]) == 100 + int(y[n])
        seen += index.tolist()
    assert sorted(seen) == list(range(100, 112))
    idx, views = loader.epoch_views(4, seed=2)
    assert idx.tolist() == [i for b in loader.epoch_batches(4, 2) for i in b.index.tolist()]
    assert views.tolist() == [v for b in loader.epoch_batches(4, 2) for v in b.view.tolist()]


def test_eval_loader_fixed_order_without_augmentation():
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    loader = EvalLoader(images, torch.arange(10), (0.5,) * 3, (0.25,) * 3, 4)
    batches = list(loader)
    assert len(loader) == 3 and loader.num_samples == 10 and [len(y) for _, y in batches] == [4, 4, 2]
    x = torch.cat([b[0] for b in batches])
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.arange(10))
    assert torch.allclose(x, normalize(images, (0.5,) * 3, (0.25,) * 3))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, list(loader)))


# ------------------------------------------------------------------------------------------------
# synthetic dataset


def synthetic_cfg(**kw) -> Config:
    syn = {"NUM_CLASSES": 10, "TRAIN_PER_CLASS": 20, "TEST_PER_CLASS": 10, "SEED": 0}
    syn.update(kw.pop("SYNTHETIC", {}))
    return make_cfg(TYPE="synthetic", SYNTHETIC=syn, **kw)


def test_synthetic_is_deterministic_balanced_and_train_test_differ():
    a = build_data(synthetic_cfg(), torch.device("cpu"))
    b = build_data(synthetic_cfg(), torch.device("cpu"))
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.images, b.test.images)
    assert a.mean == b.mean and a.info == b.info
    assert a.train.images.shape == (200, 3, 32, 32) and a.train.images.dtype == torch.uint8
    assert a.test.images.shape == (100, 3, 32, 32)
    assert np.bincount(a.train.labels.numpy()).tolist() == [20] * 10
    assert np.bincount(a.test.labels.numpy()).tolist() == [10] * 10
    # train and test are different draws: no test image equals a train image
    assert not {x.numpy().tobytes() for x in a.test.images} & {x.numpy().tobytes() for x in a.train.images}
    other = build_data(synthetic_cfg(SYNTHETIC={"SEED": 1}), torch.device("cpu"))
    assert not torch.equal(other.train.images, a.train.images)
    assert a.num_classes == 10 and a.image_size == 32
    info = json.loads(json.dumps(a.info))
    assert info["synthetic"] is True and info["dataset"] == "synthetic"
    assert info["generator"]["num_classes"] == 10 and len(info["generator"]["classes"]) == 10
    # mean/std are the statistics of the generated training set
    x = a.train.images.double() / 255
    assert np.allclose(a.mean, x.mean(dim=(0, 2, 3)).numpy(), atol=1e-4)
    assert np.allclose(a.std, x.permute(1, 0, 2, 3).reshape(3, -1).std(dim=1, unbiased=False).numpy(), atol=1e-4)


def test_synthetic_cache_returns_fresh_copies_equal_to_a_new_render():
    a_x, a_y = synthetic.generate_cached(3, 4, 32, 7, "train")
    a_x[:] = 0  # a caller scribbling on its copy must not reach the next trial
    b_x, b_y = synthetic.generate_cached(3, 4, 32, 7, "train")
    x, y = synthetic.generate(3, 4, 32, 7, "train")
    assert np.array_equal(b_x, x) and np.array_equal(b_y, y) and b_x.flags.writeable


def test_synthetic_image_size_option():
    b = build_data(synthetic_cfg(SYNTHETIC={"IMAGE_SIZE": 48, "TRAIN_PER_CLASS": 2, "TEST_PER_CLASS": 1}),
                   torch.device("cpu"))
    assert b.train.images.shape == (20, 3, 48, 48) and b.image_size == 48


@pytest.mark.parametrize("num_classes", [2, 10, 27, 100, 1000])
def test_synthetic_classes_are_distinct_combinations_that_share_each_attribute(num_classes):
    attrs = synthetic.class_attributes(num_classes)
    assert len({tuple(a) for a in attrs.tolist()}) == num_classes
    if num_classes >= 9:
        for col in range(3):  # every shape, colour and texture in use serves several classes
            assert np.bincount(attrs[:, col]).min() >= 2


def test_synthetic_mean_colour_alone_does_not_solve_it():
    syn = dict(NUM_CLASSES=10, TRAIN_PER_CLASS=60, TEST_PER_CLASS=30, SEED=0, IMAGE_SIZE=32)
    x, y = synthetic.generate(10, syn["TRAIN_PER_CLASS"], 32, 0, "train")
    xt, yt = synthetic.generate(10, syn["TEST_PER_CLASS"], 32, 0, "test")
    feat = lambda im: im.reshape(len(im), 3, -1).mean(-1) / 255.0
    centroids = np.stack([feat(x)[y == c].mean(0) for c in range(10)])
    pred = ((feat(xt)[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    accuracy = (pred == yt).mean()
    assert accuracy < 0.4  # 3 colours for 10 classes: mean colour can at best narrow it to ~3


def test_synthetic_val_split_and_reduction_apply():
    cfg = synthetic_cfg(VAL_SIZE=30, REDUCTION=True, RESERVED_CLASS_NUM=4, RESERVED_RATE=0.5)
    b = build_data(cfg, torch.device("cpu"))
    assert b.val.num_samples == 30 and np.bincount(b.val.labels.numpy()).tolist() == [3] * 10
    assert np.bincount(b.train.labels.numpy()).tolist() == [int(17 * 0.5)] * 4
    assert b.num_classes == 10 and b.test.num_samples == 100
    assert not {v.numpy().tobytes() for v in b.val.images} & {t.numpy().tobytes() for t in b.train.images}


# ------------------------------------------------------------------------------------------------
# ImageNet folders


@pytest.fixture
def imagenet(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("n01440764", "n01443537"):
            d = tmp_path / "imagenet" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (30 + 7 * i, 40, 3), dtype=np.uint8)
                ext = "png" if i % 2 else "JPEG"
                Image.fromarray(arr).save(d / f"{cls}_{i}.{ext}")
    return tmp_path


def test_imagenet_folders_yield_224_batches(imagenet):
    cfg = make_cfg(TYPE="imagenet", ROOT=str(imagenet), NUM_WORKERS=0, batch_size=4, TEST={"BATCH_SIZE": 3})
    b = build_data(cfg, torch.device("cpu"))
    assert b.num_classes == 2 and b.image_size == 224 and b.val is None
    assert b.train.num_samples == 6 and len(b.train) == 2 and b.test.num_samples == 4 and len(b.test) == 2
    batches = [t[:2] for t in b.train.epoch_batches(0, 0)]
    epoch = list(b.train.epoch_batches(0, 0))
    assert all(t.view is None for t in epoch)  # no finite view set: no teacher cache
    # each image's index in the folder as stored (CRD's memory rows), every training image once an epoch
    assert sorted(torch.cat([t.index for t in epoch]).tolist()) == sorted(b.train.source_index.tolist())
    assert b.train.labels.tolist() == [b.train.dataset.samples[int(k)][1] for k in b.train.source_index]
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 224, 224), (2, 3, 224, 224)]
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == [0, 0, 0, 1, 1, 1]
    assert batches[0][0].dtype == torch.float32 and batches[0][1].dtype == torch.int64
    again = [t[:2] for t in b.train.epoch_batches(0, 0)]
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(batches, again))
    test = list(b.test)
    assert [tuple(x.shape) for x, _ in test] == [(3, 3, 224, 224), (1, 3, 224, 224)]
    assert torch.cat([y for _, y in test]).tolist() == [0, 0, 1, 1]
    assert json.loads(json.dumps(b.info))["train_size"] == 6


def test_missing_imagenet_raises_dataerror_naming_the_folder(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "imagenet" / "train")):
        build_data(make_cfg(TYPE="imagenet", ROOT=str(tmp_path)), torch.device("cpu"))


# ------------------------------------------------------------------------------------------------


def test_every_dataset_type_of_the_config_has_a_builder():
    types = typing.get_args(DatasetCfg.model_fields["TYPE"].annotation)
    assert set(types) == set(DATASETS)


def test_imagenet_augmentation_does_not_depend_on_worker_count(imagenet):
    def batches(workers):
        cfg = make_cfg(TYPE="imagenet", ROOT=str(imagenet), NUM_WORKERS=workers, batch_size=4)
        return [t[:2] for t in build_data(cfg, torch.device("cpu")).train.epoch_batches(2, 9)]

    state = torch.get_rng_state()
    a, b = batches(0), batches(2)
    assert torch.equal(state, torch.get_rng_state())
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    c = [t[:2] for t in build_data(make_cfg(TYPE="imagenet", ROOT=str(imagenet), NUM_WORKERS=0, batch_size=4),
                                   torch.device("cpu")).train.epoch_batches(3, 9)]
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, c))
