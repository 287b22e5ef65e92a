"""ImageNet as ImageFolder trees `<root>/imagenet/{train,val}` through a torch DataLoader.

Train: RandomResizedCrop(224) (scale 0.08-1, ratio 3/4-4/3) + RandomHorizontalFlip; eval: Resize(256) +
CenterCrop(224); DATASET.CROP_SIZE sets another size (eval resize: size x 256/224). Workers return uint8
tensors; conversion to float and normalisation with the ImageNet mean/std happen on the device (a
quarter of the host-to-device traffic). Randomness is a function of (seed, epoch): the sampler's
generator is seeded from it and every sample's crop and flip from (seed, epoch, index), with a generator
of its own, so the order and the crops do not depend on worker count, on the process's global RNG, or on
a restart, and the global RNG is left untouched.

Decoding the JPEG is most of a sample's cost (about 0.6 of 1.1 ms for a 400 x 330 file on one core),
so the path is built around it. The crop box is drawn first, on the full-size image (torchvision's
RandomResizedCrop.get_params, the same draws from the sample's generator, so the same box; the header
gives the size). The file is then decoded by torchvision's decode_jpeg (libjpeg-turbo, about 20% less
time than PIL's open + convert on the same files), or, where the box is at least twice the output size
both ways, by PIL at the largest DCT-domain reduction (1/2, 1/4, 1/8) that keeps it >= 224 px
(`Image.draft`; 20-25% less time on large photos: entropy decoding, which no reduction skips, is most of
the rest), the box snapped to the reduced image's pixels (under half an output pixel). The box is cut
from the decoded HWC array and resized with torch's antialiased bilinear resize on uint8 channels-last
data (PIL's resize semantics, a fifth of its time); samples stay H x W x 3 up to the device, which
transposes them in the pass that converts them to float. Files that are not RGB/grey JPEGs (PNG, CMYK)
or that libjpeg-turbo refuses go through PIL's convert("RGB"), as ImageFolder's loader does.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision.datasets import ImageFolder
from torchvision.io import ImageReadMode, decode_jpeg

from catkd.data.common import DataBundle, DataError, mix_seed
from catkd.data.loader import Batch, TrainBatch, affine, epoch_generator
from catkd.data.splits import stratified_holdout

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 224
SCALE = (0.08, 1.0)  # RandomResizedCrop's defaults
RATIO = (3.0 / 4.0, 4.0 / 3.0)
REDUCTIONS = (8, 4, 2)  # the DCT-domain scalings PIL's draft offers


def crop_box(height: int, width: int, g: torch.Generator, scale=SCALE, ratio=RATIO) -> tuple[int, int, int, int]:
    """(top, left, h, w): torchvision's RandomResizedCrop.get_params drawing from `g` (the same draws in
    the same order, so the same box as get_params after torch.manual_seed of g's seed)."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=g).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=g)).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,), generator=g).item()
            j = torch.randint(0, width - w + 1, size=(1,), generator=g).item()
            return i, j, h, w
    in_ratio = float(width) / float(height)  # ten misses: the central crop, as get_params
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def reduction(h: int, w: int, size: int) -> int:
    """The largest DCT-domain reduction that keeps an h x w region at least `size` px both ways (1: none)."""
    return next((r for r in REDUCTIONS if min(h, w) >= r * size), 1)


def scale_box(box: tuple[int, int, int, int], full: tuple[int, int], reduced: Sequence[int]) -> tuple[int, int, int, int]:
    """A (top, left, h, w) box drawn on the full-size (H, W) image in the pixels of its reduced decode: each
    edge rounded to the nearest reduced pixel, so it moves by at most factor/2 full-size pixels, under half
    an output pixel (the box is at least factor x the output size)."""
    top, left, h, w = box
    ry, rx = reduced[0] / full[0], reduced[1] / full[1]
    t, b = round(top * ry), min(reduced[0], round((top + h) * ry))
    lft, r = round(left * rx), min(reduced[1], round((left + w) * rx))
    return t, lft, b - t, r - lft


def _open(path: str) -> tuple[bytes, Image.Image]:
    data = Path(path).read_bytes()
    return data, Image.open(io.BytesIO(data))  # reads the header only: size, format, mode


def decode(data: bytes, im: Image.Image, factor: int = 1) -> torch.Tensor:
    """uint8 3 x H x W (a view of HWC memory) of the file, decoded at 1/factor of its size where the JPEG
    decoder can (PIL's draft: the result may be a pixel larger than size/factor, never smaller)."""
    if factor == 1 and im.format == "JPEG" and im.mode in ("RGB", "L"):
        try:
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError:  # a file libjpeg-turbo's strict reader refuses and PIL reads (as ImageFolder)
            pass
    if factor > 1:
        im.draft("RGB", (im.width // factor, im.height // factor))
    return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)


def resized_crop(x: torch.Tensor, top: int, left: int, h: int, w: int, size: tuple[int, int]) -> torch.Tensor:
    """uint8 3 x h x w region of x resized to `size` (bilinear, antialiased: PIL's resize), as an H x W x 3
    contiguous tensor (the uint8 kernel works on channels-last data; CHW would cost a transpose here)."""
    region = x[:, top:top + h, left:left + w].unsqueeze(0).contiguous(memory_format=torch.channels_last)
    return F.interpolate(region, size=size, mode="bilinear", align_corners=False, antialias=True)[0].permute(1, 2, 0)


def crop_size(cfg) -> int:
    """The run's input size: DATASET.CROP_SIZE, else the recipe's 224."""
    return cfg.DATASET.CROP_SIZE or IMAGE_SIZE


def train_image(path: str, g: torch.Generator, size: int = IMAGE_SIZE) -> torch.Tensor:
    """RandomResizedCrop(size) + RandomHorizontalFlip(0.5) of the file: uint8 size x size x 3."""
    data, im = _open(path)
    width, height = im.size
    top, left, h, w = crop_box(height, width, g)
    flip = bool(torch.rand(1, generator=g) < 0.5)
    factor = reduction(h, w, size) if im.format == "JPEG" else 1
    x = decode(data, im, factor)
    if factor > 1:
        top, left, h, w = scale_box((top, left, h, w), (height, width), x.shape[1:])
    out = resized_crop(x, top, left, h, w, (size, size))
    return out.flip(1) if flip else out


def eval_image(path: str, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Resize(round(size * 256 / 224)) (the shorter side) + CenterCrop(size): uint8 size x size x 3."""
    data, im = _open(path)
    resize = int(round(size * 256 / 224))
    width, height = im.size
    short, long = min(width, height), max(width, height)
    new_short, new_long = resize, int(resize * long / short)  # torchvision's Resize arithmetic
    new_h, new_w = (new_long, new_short) if width <= height else (new_short, new_long)
    factor = reduction(height, width, resize) if im.format == "JPEG" else 1
    x = decode(data, im, factor)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))  # CenterCrop's
    out = resized_crop(x, 0, 0, x.shape[1], x.shape[2], (new_h, new_w))
    return out[top:top + size, left:left + size].contiguous()


class SeededFolder(Dataset):
    """Samples of an ImageFolder (optionally a subset): training crops seeded per (seed, epoch, index), or
    the evaluation crop; images H x W x 3 uint8 (batches N x H x W x 3: the loader transposes them on the
    device, with the conversion to float)."""

    def __init__(self, folder: ImageFolder, train: bool, indices: Optional[Sequence[int]] = None,
                 size: int = IMAGE_SIZE):
        self.samples = folder.samples
        self.train = bool(train)
        self.size = int(size)
        self.indices = np.arange(len(folder.samples)) if indices is None else np.asarray(indices)
        self.seed = 0
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        path, target = self.samples[int(self.indices[i])]
        if not self.train:
            return eval_image(path, self.size), target
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, int(i)))
        return train_image(path, g, self.size), target, int(self.indices[i])  # the image's index as stored


class _FolderLoader:
    def __init__(self, dataset: SeededFolder, batch_size: int, num_workers: int, device: torch.device,
                 mean=MEAN, std=STD):
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.device = torch.device(device)
        self.num_samples = len(dataset)
        self._scale, self._shift = affine(mean, std, 3, self.device)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def host_batches(self, sampler, generator: torch.Generator) -> Iterator[Batch]:
        """The DataLoader's batches on the host: uint8 N x H x W x 3 images, int64 targets."""
        return iter(DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=False,
            generator=generator,  # worker base seeds; keeps the global RNG untouched
        ))

    def _to_device(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        """float32 N x 3 x H x W images normalised on the device (transposed there, in the same pass)."""
        for x, y, *_ in batches:
            yield self._on_device(x, y)

    def _on_device(self, x: torch.Tensor, y: torch.Tensor) -> Batch:
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        y = y.to(self.device, non_blocking=True)
        x = x.to(torch.float32, memory_format=torch.contiguous_format)
        return torch.addcmul(self._shift, x, self._scale, out=x), y


class FolderTrainLoader(_FolderLoader):
    """Same interface as loader.TrainLoader: epoch_batches(epoch, seed), len, num_samples."""

    def __init__(self, dataset: SeededFolder, *args, **kwargs):
        super().__init__(dataset, *args, **kwargs)
        # what CRD's contrastive memory needs: row i of this set is image source_index[i] of the folder
        # as stored, of class labels[i] (the in-memory loaders' attributes)
        self.source_index = torch.as_tensor(dataset.indices, dtype=torch.int64)
        self.labels = torch.as_tensor([dataset.samples[int(k)][1] for k in dataset.indices], dtype=torch.int64)

    def epoch_batches(self, epoch: int, seed: int) -> Iterator[TrainBatch]:
        """Batches carry each image's index in the folder (CRD's memory rows); RandomResizedCrop has no
        finite view set, so no view (the teacher cache does not apply)."""
        for x, y, index in self.host_epoch(epoch, seed):
            yield TrainBatch(*self._on_device(x, y), index=index)

    def host_epoch(self, epoch: int, seed: int) -> Iterator[Batch]:
        """The epoch's batches before the device step: what the host's CPUs do when the device is a GPU."""
        self.dataset.seed, self.dataset.epoch = int(seed), int(epoch)
        g = epoch_generator(seed, epoch)
        return self.host_batches(RandomSampler(self.dataset, generator=g), g)


class FolderEvalLoader(_FolderLoader):
    """Fixed order, no augmentation; iterate for (images, targets) on the device."""

    def __iter__(self) -> Iterator[Batch]:
        return self._to_device(self.host_batches(None, torch.Generator().manual_seed(0)))


def _folder(path: Path, root: Path) -> ImageFolder:
    hint = (
        f"looked for {root}/{{train,val}} (DATASET.ROOT, else $CATKD_DATA, else ./data, then imagenet/). "
        "To get it: download ILSVRC-2012 from https://image-net.org (it cannot be downloaded "
        "automatically) and lay out train/ and val/ with one folder per class (val/ sorted into class "
        "folders, e.g. with the usual valprep.sh)"
    )
    if not path.is_dir():
        raise DataError(f"ImageNet not found: {path} is not a folder; " + hint)
    try:
        return ImageFolder(str(path))
    except (FileNotFoundError, OSError, RuntimeError) as e:
        raise DataError(f"ImageNet at {path} is not readable as an ImageFolder ({e}); " + hint) from None


def build_imagenet(cfg, device: torch.device) -> DataBundle:
    from catkd.config import data_root

    ds = cfg.DATASET
    if ds.REDUCTION:
        raise DataError("DATASET.REDUCTION: data reduction is defined for CIFAR-100 and synthetic only")
    root = data_root(cfg) / "imagenet"
    train_folder = _folder(root / "train", root)
    test_folder = _folder(root / "val", root)
    if test_folder.classes != train_folder.classes:
        raise DataError(
            f"ImageNet: {root / 'val'} has {len(test_folder.classes)} class folders, "
            f"{root / 'train'} has {len(train_folder.classes)}; they must name the same classes"
        )
    labels = np.asarray(train_folder.targets, dtype=np.int64)
    train_idx, val_idx, val_info = stratified_holdout(labels, ds.VAL_SIZE, ds.SPLIT_SEED)
    workers, size = ds.NUM_WORKERS, crop_size(cfg)
    train = FolderTrainLoader(SeededFolder(train_folder, True, train_idx, size), cfg.SOLVER.BATCH_SIZE,
                              workers, device)
    test = FolderEvalLoader(SeededFolder(test_folder, False, size=size), ds.TEST.BATCH_SIZE, workers, device)
    val = None
    if len(val_idx):
        val = FolderEvalLoader(SeededFolder(train_folder, False, val_idx, size), ds.TEST.BATCH_SIZE,
                               workers, device)
    num_classes = len(train_folder.classes)
    info = {
        "dataset": "imagenet",
        "root": str(root),
        "synthetic": False,
        "num_classes": num_classes,
        "train_size": train.num_samples,
        "val_size": val.num_samples if val is not None else 0,
        "test_size": test.num_samples,
        "reduction": None,
        "val": val_info if val is not None else None,
        "crop_size": size,
        "mean": list(MEAN),
        "std": list(STD),
    }
    return DataBundle(train=train, val=val, test=test, num_classes=num_classes, mean=MEAN, std=STD,
                      image_size=size, info=info)
