"""`pipeline`: catkd's input pipelines against the reference's, side by side.

CIFAR-100 (`--dataset cifar100`, the default): ours is `TrainLoader`, a per-image random crop (padding
4) and flip of resident uint8 data as one gather per batch. The reference's: torchvision's RandomCrop + RandomHorizontalFlip + ToTensor + Normalize per
PIL image through a DataLoader with 2 workers (what torchvision's CIFAR100 dataset does). Same
CIFAR-shaped random images; each side's epochs timed interleaved, median of the repeats.

ImageNet (`--dataset imagenet`): catkd's train path (SeededFolder + FolderTrainLoader's DataLoader:
uint8 batches, what the host's CPUs do when the device is a GPU, which converts and normalises them)
against torchvision's ImageFolder + DataLoader with the reference's transforms (RandomResizedCrop(224),
RandomHorizontalFlip, ToTensor, Normalize in the workers: float batches), on the same folder of JPEGs
(--root, else one written by write_jpeg_folder into a temporary directory), at 1, 2 and all workers;
rounds interleave the two sides so machine noise hits both; median images/s of the rounds. Then what
bounds it: per-image times of each stage alone, one thread, on the same files, and what the device step
costs per image where the device is the CPU itself.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from catkd.bench.common import median_time

GOALS = {"speedup_vs_pil": (">=", 20)}
QUICK = {"n": 2000, "repeats": 1}


def bench_pipeline(n: int = 10000, batch: int = 64, repeats: int = 3) -> dict:
    import numpy as np
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    from catkd.data.loader import TrainLoader

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 100, size=n)
    mean, std = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)

    class PILSet(Dataset):  # what torchvision's CIFAR100 does per sample
        tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                 transforms.ToTensor(), transforms.Normalize(mean, std)])

        def __len__(self):
            return n

        def __getitem__(self, i):
            return self.tf(Image.fromarray(images[i])), int(labels[i])

    ref = DataLoader(PILSet(), batch_size=batch, shuffle=True, num_workers=2, persistent_workers=True)
    ours = TrainLoader(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels),
                       mean, std, batch, torch.device("cpu"))

    def run_ref():
        for xb, yb in ref:
            pass

    epoch = [0]

    def run_ours():
        epoch[0] += 1
        for _ in ours.epoch_batches(epoch[0], 0):
            pass

    run_ref()
    run_ours()
    a, b = [], []
    for _ in range(repeats):
        a.append(median_time(run_ours, 1))
        b.append(median_time(run_ref, 1))
    ours_ips, ref_ips = n / statistics.median(a), n / statistics.median(b)
    print(f"pipeline: {n} CIFAR-shaped images, batch {batch}: ours {ours_ips:,.0f} img/s, "
          f"torchvision PIL + DataLoader(2 workers) {ref_ips:,.0f} img/s")
    return {"ours_images_per_s": ours_ips, "pil_images_per_s": ref_ips, "speedup_vs_pil": ours_ips / ref_ips}


def run(quick: bool = False, dataset: str = "cifar100", root: Optional[str] = None) -> dict:
    """CIFAR-100 `quick`: 2,000 images, one timed epoch per side instead of 10,000 and three. ImageNet:
    bench_imagenet."""
    if dataset == "imagenet":
        return bench_imagenet(root=root, **(IMAGENET_QUICK if quick else {}))
    if root is not None:
        raise ValueError("pipeline: --root is for --dataset imagenet")
    return bench_pipeline(**(QUICK if quick else {}))


# ---- ImageNet ----------------------------------------------------------------------------------------
IMAGENET_QUICK = {"classes": 10, "per_class": 30, "rounds": 1}
# catkd's path against ImageFolder + DataLoader at the same worker count (names for the usual counts)
GOALS.update({f"imagenet_ratio_w{w}": (">=", 3) for w in (1, 2, 4, 8, 16, 32, 64)})


def _worker_counts() -> list[int]:
    return sorted({1, 2, os.cpu_count() or 1})


def bench_imagenet(root: Optional[str] = None, classes: int = 20, per_class: int = 100, batch: int = 64,
                   rounds: int = 3) -> dict:
    """`root`: an ImageNet folder holding train/<class>/*; None: write classes x per_class JPEGs
    (write_jpeg_folder) into a temporary directory, removed afterwards."""
    if root is not None:
        return _bench_imagenet_at(Path(root), f"{root}/train", batch, rounds)
    from catkd.data.jpeg_folder import HEIGHTS, WIDTHS, write_jpeg_folder

    with tempfile.TemporaryDirectory(prefix="catkd-bench-imagenet-") as tmp:
        t0 = time.perf_counter()
        folder = write_jpeg_folder(Path(tmp) / "imagenet", classes, per_class, 0)
        print(f"wrote {classes * per_class} JPEGs ({classes} classes, {WIDTHS[0]}-{WIDTHS[1]} x "
              f"{HEIGHTS[0]}-{HEIGHTS[1]} px, quality 90) in {time.perf_counter() - t0:.0f} s")
        data = (f"write_jpeg_folder: {classes} classes x {per_class}, {WIDTHS[0]}-{WIDTHS[1]} x "
                f"{HEIGHTS[0]}-{HEIGHTS[1]} px, quality 90")
        return _bench_imagenet_at(folder, data, batch, rounds)


def _bench_imagenet_at(root: Path, data: str, batch: int, rounds: int) -> dict:
    from torch.utils.data import DataLoader
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    from catkd.data.imagenet import MEAN, STD, FolderTrainLoader, SeededFolder

    ref_tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                 transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    ref_set = ImageFolder(str(root / "train"), transform=ref_tf)
    ours_set = SeededFolder(ImageFolder(str(root / "train")), True)
    n = len(ref_set)
    sizes = [os.path.getsize(p) for p, _ in ref_set.samples]
    print(f"pipeline imagenet: {n} JPEGs in {root / 'train'} (mean {statistics.mean(sizes) / 1024:.0f} KiB), "
          f"batch {batch}, {rounds} interleaved round(s) per worker count")
    epoch = [0]

    def run_ours(workers: int) -> None:
        epoch[0] += 1
        for _ in FolderTrainLoader(ours_set, batch, workers, torch.device("cpu")).host_epoch(epoch[0], 0):
            pass

    def run_ref(workers: int) -> None:
        for _ in DataLoader(ref_set, batch_size=batch, shuffle=True, num_workers=workers):
            pass

    out: dict = {"imagenet_data": data, "imagenet_images": n, "imagenet_batch": batch}
    run_ours(max(_worker_counts()))  # untimed: files into the page cache, first-call costs
    run_ref(max(_worker_counts()))
    for w in _worker_counts():
        times = interleaved_rounds({"catkd": lambda: run_ours(w), "ref": lambda: run_ref(w)}, rounds)
        ours_ips, ref_ips = n / times["catkd"], n / times["ref"]
        out.update({f"imagenet_catkd_ips_w{w}": ours_ips, f"imagenet_ref_ips_w{w}": ref_ips,
                    f"imagenet_ratio_w{w}": ours_ips / ref_ips})
        print(f"  {w} worker(s): catkd {ours_ips:,.0f} img/s, ImageFolder + DataLoader {ref_ips:,.0f} img/s: "
              f"{ours_ips / ref_ips:.2f}x")
    out.update(_imagenet_stages([p for p, _ in ref_set.samples], ref_tf))
    loader = FolderTrainLoader(ours_set, batch, 0, torch.device("cpu"))
    host = [next(loader.host_epoch(0, 0))] * 5
    t0 = time.perf_counter()
    for _ in loader._to_device(iter(host)):
        pass
    out["imagenet_ms_device_step_on_cpu"] = (time.perf_counter() - t0) / (5 * len(host[0][1])) * 1e3
    print(f"  the device step (uint8 NHWC -> normalised float NCHW) where the device is the CPU: "
          f"{out['imagenet_ms_device_step_on_cpu']:.3f} ms per image, {torch.get_num_threads()} threads")
    return out


def interleaved_rounds(fns: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Median seconds of each fn over `rounds`, each round timing every fn in turn (no warm-up)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _per_image_ms(fn: Callable, items: list) -> float:
    for x in items[:3]:
        fn(x)
    t0 = time.perf_counter()
    for x in items:
        fn(x)
    return (time.perf_counter() - t0) / len(items) * 1e3


def _imagenet_stages(paths: list[str], ref_tf, count: int = 200) -> dict:
    """Per-image milliseconds of each stage alone, one thread, on `count` of the files (spread over the
    classes): what bounds the two paths."""
    import io

    import numpy as np
    from PIL import Image
    from torchvision import transforms
    from torchvision.io import decode_jpeg

    from catkd.data.imagenet import crop_box, reduction, resized_crop, train_image

    files = paths[:: max(1, len(paths) // count)][:count]
    datas = [Path(p).read_bytes() for p in files]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        pil = [Image.open(io.BytesIO(d)).convert("RGB") for d in datas]
        tv = [decode_jpeg(torch.frombuffer(bytearray(d), dtype=torch.uint8)) for d in datas]
        boxes = [crop_box(t.shape[1], t.shape[2], torch.Generator().manual_seed(k)) for k, t in enumerate(tv)]
        rrc, post = transforms.RandomResizedCrop(224), transforms.Compose(ref_tf.transforms[2:])
        crops = [rrc(im) for im in pil]
        g = torch.Generator().manual_seed(0)
        ms = {
            "imagenet_ms_read_file": _per_image_ms(lambda p: Path(p).read_bytes(), files),
            "imagenet_ms_header": _per_image_ms(lambda d: Image.open(io.BytesIO(d)).size, datas),
            "imagenet_ms_decode_pil": _per_image_ms(lambda d: Image.open(io.BytesIO(d)).convert("RGB"), datas),
            "imagenet_ms_decode_tv": _per_image_ms(
                lambda d: decode_jpeg(torch.frombuffer(bytearray(d), dtype=torch.uint8)), datas),
            "imagenet_ms_decode_pil_draft_half": _per_image_ms(lambda d: _draft(Image.open(io.BytesIO(d)), 2), datas),
            "imagenet_ms_crop_resize_pil": _per_image_ms(rrc, pil),
            "imagenet_ms_crop_resize_torch": _per_image_ms(lambda k: resized_crop(tv[k], *boxes[k], (224, 224)),
                                                           list(range(len(tv)))),
            "imagenet_ms_to_tensor_normalize": _per_image_ms(post, crops),
            "imagenet_ms_sample_ref": _per_image_ms(lambda p: ref_tf(Image.open(p).convert("RGB")), files),
            "imagenet_ms_sample_catkd": _per_image_ms(lambda p: train_image(p, g), files),
        }
        shown_rng = torch.Generator().manual_seed(1)
        draws = [crop_box(t.shape[1], t.shape[2], shown_rng) for t in tv for _ in range(20)]
        ms["imagenet_draft_fraction"] = float(np.mean([reduction(b[2], b[3], 224) > 1 for b in draws]))
    finally:
        torch.set_num_threads(threads)
    print(f"  per image, one thread, {len(files)} files: read {ms['imagenet_ms_read_file']:.3f} ms; header "
          f"{ms['imagenet_ms_header']:.3f}; decode PIL {ms['imagenet_ms_decode_pil']:.3f}, torchvision "
          f"{ms['imagenet_ms_decode_tv']:.3f}, PIL draft 1/2 {ms['imagenet_ms_decode_pil_draft_half']:.3f}; "
          f"crop + resize PIL {ms['imagenet_ms_crop_resize_pil']:.3f}, torch {ms['imagenet_ms_crop_resize_torch']:.3f}; "
          f"ToTensor + Normalize {ms['imagenet_ms_to_tensor_normalize']:.3f}")
    print(f"  whole sample: reference {ms['imagenet_ms_sample_ref']:.3f} ms, catkd {ms['imagenet_ms_sample_catkd']:.3f} ms "
          f"({ms['imagenet_ms_sample_ref'] / ms['imagenet_ms_sample_catkd']:.2f}x); training crops that allow a "
          f"DCT-domain reduction (>= 448 px both ways) on these files: {ms['imagenet_draft_fraction']:.1%}")
    return ms


def _draft(im, factor: int):
    im.draft("RGB", (im.width // factor, im.height // factor))
    return im.convert("RGB")
