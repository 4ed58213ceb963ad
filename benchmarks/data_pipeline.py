"""Samples/s of the data path alone vs what ResNet-18 consumes, measured side by side in one process.

Rows:

* ``TensorBatchLoader``: the project's data path (``deconcnn.training.data``): the uint8 training split
  resident on the device, per-epoch shuffle, batched pad-4 crop + flip + normalisation on that
  device; one full epoch timed after one warm-up epoch (CUDA-synchronised at the end).
* ``DataLoader, per-sample``: the usual reference pipeline: a ``torch.utils.data.DataLoader`` over the
  same uint8 images whose Dataset crops, flips and normalises one sample at a time in Python
  (torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip semantics), ``num_workers`` 0 and
  2, batches moved to the device (pinned memory on CUDA); worker start-up included.
* ``model``: forward + backward + SGD step of CIFAR ResNet-18 (batchnorm) at width 1.0 and 0.25 on
  batches already on the device: the samples/s training consumes.

The ratio columns are data samples/s divided by the model's samples/s: above 1 the data path keeps
up; the issue's goal on a GPU is >= 20x. On CUDA the script also counts the host-device
synchronisations the TensorBatchLoader makes per batch (``torch.cuda.set_sync_debug_mode``).
No asserts.

    python benchmarks/data_pipeline.py --quick          # a few minutes on a 2-core CPU
    python benchmarks/data_pipeline.py                  # cpu, and cuda if there is one
    python benchmarks/data_pipeline.py --device cuda
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deconcnn.training.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CROP_PADDING,
    SyntheticSource,
    TensorBatchLoader,
)
from deconcnn.training.resnet import CifarResNet18


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------
# The project's data path
# --------------------------------------------------------------------------------------------


def tensor_loader_rate(images: Tensor, labels: Tensor, batch: int, device: torch.device) -> float:
    images, labels = images.to(device), labels.to(device)
    epoch = {"value": 0}
    loader = TensorBatchLoader(
        images, labels, batch, shuffle=True, augment=True, seed=0, epoch_fn=lambda: epoch["value"]
    )
    for _ in loader:  # warm-up epoch
        pass
    sync(device)
    epoch["value"] = 1
    start = time.perf_counter()
    for _ in loader:
        pass
    sync(device)
    return len(labels) / (time.perf_counter() - start)


def count_syncs(images: Tensor, labels: Tensor, batch: int, device: torch.device, batches: int = 60) -> tuple[int, int]:
    """(synchronising CUDA calls, batches) over an epoch of TensorBatchLoader after its first batch."""
    loader = TensorBatchLoader(
        images[: batch * batches].to(device),
        labels[: batch * batches].to(device),
        batch,
        shuffle=True,
        augment=True,
        seed=0,
    )
    it = iter(loader)
    next(it)  # the epoch plan's host-to-device copy happens here, once per epoch
    sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            n = sum(1 for _ in it)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught), n


# --------------------------------------------------------------------------------------------
# The reference: per-sample Python transforms in a DataLoader
# --------------------------------------------------------------------------------------------


class PerSampleCifar(torch.utils.data.Dataset):
    """uint8 CHW images, augmented one at a time like torchvision's RandomCrop + RandomHorizontalFlip."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels
        self.mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CIFAR10_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        image = self.images[i]
        _, h, w = image.shape
        padded = nn.functional.pad(image, (CROP_PADDING,) * 4)
        top, left = random.randint(0, 2 * CROP_PADDING), random.randint(0, 2 * CROP_PADDING)
        crop = padded[:, top : top + h, left : left + w]
        if random.random() < 0.5:
            crop = crop.flip(-1)
        return (crop.float() / 255 - self.mean) / self.std, self.labels[i]


def per_sample_rate(images: Tensor, labels: Tensor, batch: int, device: torch.device, workers: int) -> float:
    loader = torch.utils.data.DataLoader(
        PerSampleCifar(images, labels),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),
    )
    sync(device)
    start = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    sync(device)
    return len(labels) / (time.perf_counter() - start)


# --------------------------------------------------------------------------------------------
# What the model consumes
# --------------------------------------------------------------------------------------------


def model_rate(width: float, batch: int, device: torch.device, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    model = CifarResNet18(width=width).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    criterion = nn.CrossEntropyLoss()
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        criterion(model(x), y).backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cpu, and cuda too when available"
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples and steps")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument(
        "--samples", type=int, default=None, help="images in the data path's epoch (default 45000, --quick 10000)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    if args.device == "auto":
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    else:
        devices = [torch.device(args.device)]

    n = args.samples or (10_000 if args.quick else 45_000)
    images, labels = SyntheticSource(n, seed=0).load()
    reference_n = min(n, 2_560 if args.quick else 10_240)

    print(f"\n## Data pipeline vs model consumption: batch {args.batch}, torch {torch.__version__}")
    print(
        f"TensorBatchLoader: one epoch of {n} images after a warm-up epoch; per-sample DataLoader: "
        f"{reference_n} images incl. worker start-up; model: ResNet-18 fwd+bwd+SGD step\n"
    )
    for device in devices:
        on_gpu = device.type == "cuda"
        steps = {1.0: 30 if on_gpu else (3 if args.quick else 6), 0.25: 50 if on_gpu else (6 if args.quick else 15)}
        model = {w: model_rate(w, args.batch, device, steps[w], warmup=5 if on_gpu else 1) for w in (1.0, 0.25)}
        rows = [
            ("TensorBatchLoader (device-resident, batched)", tensor_loader_rate(images, labels, args.batch, device))
        ]
        for workers in (0, 2):
            rate = per_sample_rate(images[:reference_n], labels[:reference_n], args.batch, device, workers)
            rows.append((f"DataLoader, per-sample transforms, num_workers={workers}", rate))

        print(f"### {describe(device)}\n")
        print("| path | samples/s | / ResNet-18 w1.0 | / ResNet-18 w0.25 |")
        print("|---|---:|---:|---:|")
        for name, rate in rows:
            print(f"| {name} | {rate:,.0f} | {rate / model[1.0]:.1f}x | {rate / model[0.25]:.1f}x |")
        for width in (1.0, 0.25):
            print(f"| model consumption: ResNet-18 width {width} ({steps[width]} steps) | {model[width]:,.0f} | | |")
        if on_gpu:
            syncs, batches = count_syncs(images, labels, args.batch, device)
            print(
                f"\nTensorBatchLoader: {syncs} synchronising CUDA calls in {batches} batches "
                "(after the epoch's first batch, which copies the epoch plan to the device)"
            )
        print()


if __name__ == "__main__":
    main()
