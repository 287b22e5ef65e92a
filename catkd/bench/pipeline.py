"""`pipeline`: our batched in-memory augmentation vs the reference's per-sample PIL transforms.

Ours: `TrainLoader`, a per-image random crop (padding 4) and flip of resident uint8 data as one gather
per batch. The reference's: torchvision's RandomCrop + RandomHorizontalFlip + ToTensor + Normalize per
PIL image through a DataLoader with 2 workers (what torchvision's CIFAR100 dataset does). Same
CIFAR-shaped random images; each side's epochs timed interleaved, median of the repeats.
"""
from __future__ import annotations

import statistics

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


def run(quick: bool = False) -> dict:
    """`quick`: 2,000 images, one timed epoch per side instead of 10,000 and three."""
    return bench_pipeline(**(QUICK if quick else {}))
