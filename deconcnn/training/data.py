"""CIFAR-10 and a synthetic CIFAR-shaped dataset, served from uint8 tensors with batched augmentation.

The whole split lives in one uint8 tensor (150 MB for CIFAR-10), on the GPU when there is one, and
crop+flip+normalise run as batched tensor ops. Small-CNN training is otherwise limited by per-sample
Python transforms in DataLoader workers; torchvision is not a dependency (its PyPI build does not load
beside every torch build).
"""

from __future__ import annotations

import hashlib
import http.client
import pickle
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from deconcnn.runlog.run_status import SYNTHETIC_DATA

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_DIRNAME = "cifar-10-batches-py"
CROP_PADDING = 4


class DataNotFoundError(FileNotFoundError):
    """The dataset is not on disk and may not be downloaded."""


class Cifar10Source:
    """The 50k CIFAR-10 training images from the official python-pickle archive."""

    def __init__(self, data_dir: str | None, download: bool = False) -> None:
        self.data_dir = Path(data_dir) if data_dir else None
        self.download = download

    def describe(self) -> str:
        return f"CIFAR-10 from {self.data_dir / CIFAR10_DIRNAME if self.data_dir else '(location unset)'}"

    def _batches_dir(self) -> Path:
        if self.data_dir is None:
            raise DataNotFoundError(
                "CIFAR-10 location unset: pass data.source.data_dir=DIR or set DECONCNN_DATA_DIR, with "
                f"{CIFAR10_URL} (MD5 {CIFAR10_MD5}) unpacked into DIR (DIR/{CIFAR10_DIRNAME}/), or add "
                "data.source.download=true to fetch it there"
            )
        batches = self.data_dir / CIFAR10_DIRNAME
        if not (batches / "data_batch_1").is_file():
            if not self.download:
                raise DataNotFoundError(
                    f"CIFAR-10 not found in {self.data_dir} (expected {CIFAR10_DIRNAME}/data_batch_1..5): set "
                    f"data.source.download=true, or download {CIFAR10_URL} (MD5 {CIFAR10_MD5}) and unpack it there"
                )
            download_cifar10(self.data_dir)
        return batches

    def prepare(self) -> None:
        self._batches_dir()

    def load(self) -> tuple[Tensor, Tensor]:
        batches = self._batches_dir()
        images, labels = [], []
        for i in range(1, 6):
            with open(batches / f"data_batch_{i}", "rb") as f:
                # The archive holds Python 2 pickles whose str keys load as bytes with this encoding.
                entry = {_text(k): v for k, v in pickle.load(f, encoding="bytes").items()}
            images.append(torch.as_tensor(entry["data"], dtype=torch.uint8).reshape(-1, 3, 32, 32))
            labels.append(torch.as_tensor(entry["labels"], dtype=torch.int64))
        return torch.cat(images), torch.cat(labels)


def _text(key: str | bytes) -> str:
    return key.decode("latin1") if isinstance(key, bytes) else key


def _why(error: BaseException) -> str:
    # A URLError's str wraps the socket error in "<urlopen error ...>"; HTTPError's str has the code.
    if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError):
        error_text = str(error.reason)
    else:
        error_text = str(error) or type(error).__name__
    return " ".join(error_text.split())


def download_cifar10(data_dir: Path, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5) -> None:
    """Download the official archive, verify its MD5 and unpack it into data_dir.

    A failed download (no network, refused, cut short) raises DataNotFoundError saying how to get the
    archive by hand, and leaves no partial file behind.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = data_dir / Path(url).name
    if not archive.exists():
        partial = archive.with_suffix(".part")
        try:
            urllib.request.urlretrieve(url, partial)
            partial.rename(archive)
        except (OSError, http.client.HTTPException) as error:  # URLError and socket timeouts are OSErrors
            raise DataNotFoundError(
                f"CIFAR-10 download of {url} failed ({_why(error)}): download it elsewhere, check that its MD5 "
                f"is {md5}, unpack it into DIR so that DIR/{CIFAR10_DIRNAME}/ exists, and pass "
                "data.source.data_dir=DIR or set DECONCNN_DATA_DIR"
            ) from error
        finally:
            partial.unlink(missing_ok=True)
    digest = hashlib.md5(archive.read_bytes()).hexdigest()
    if digest != md5:
        raise DataNotFoundError(f"{archive} has MD5 {digest}, expected {md5}: delete it and retry")
    with tarfile.open(archive, "r:gz") as tar:
        # The "data" filter refuses links and paths outside data_dir; Pythons before 3.10.12 lack it.
        if hasattr(tarfile, "data_filter"):
            tar.extractall(data_dir, filter="data")
        else:
            tar.extractall(data_dir)


class SyntheticSource:
    """A deterministic, learnable CIFAR-shaped dataset: a smooth per-class pattern plus pixel noise."""

    def __init__(
        self, num_samples: int = 50_000, num_classes: int = 10, seed: int = 0, signal: float = 0.35, noise: float = 0.25
    ) -> None:
        self.num_samples, self.num_classes, self.seed = num_samples, num_classes, seed
        self.signal, self.noise = signal, noise

    def prepare(self) -> None:
        """Nothing to fetch: the data is generated."""

    def describe(self) -> str:
        return (
            f"{SYNTHETIC_DATA}, not CIFAR-10: {self.num_samples} generated CIFAR-shaped images "
            f"(seed {self.seed}; data=cifar10 for the real set)"
        )

    def load(self) -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        # Low-frequency templates: 8x8 noise upsampled, so the classes need convolutions to tell apart.
        coarse = torch.randn(self.num_classes, 3, 8, 8, generator=gen)
        templates = torch.nn.functional.interpolate(coarse, size=32, mode="bilinear", align_corners=False)
        labels = torch.randint(0, self.num_classes, (self.num_samples,), generator=gen)
        images = torch.empty(self.num_samples, 3, 32, 32, dtype=torch.uint8)
        for start in range(0, self.num_samples, 4096):  # chunks keep the float intermediate small
            idx = slice(start, start + 4096)
            pixels = 0.5 + self.signal * templates[labels[idx]]
            pixels += self.noise * torch.randn(pixels.shape, generator=gen)
            images[idx] = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
        return images, labels


def split_indices(num_samples: int, val_size: int, split_seed: int) -> tuple[Tensor, Tensor]:
    """A fixed train/validation split of the training set."""
    if not 0 < val_size < num_samples:
        raise ValueError(f"data.val_size must be in (0, {num_samples}), got {val_size}")
    perm = torch.randperm(num_samples, generator=torch.Generator().manual_seed(split_seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


_MEAN_STD: dict[torch.device, tuple[Tensor, Tensor]] = {}


def _mean_std(device: torch.device) -> tuple[Tensor, Tensor]:
    # Made once per device: torch.tensor(..., device="cuda") is a blocking host-to-device copy,
    # which per batch would synchronise the stream (stall the host behind the GPU) every step.
    if device not in _MEAN_STD:
        _MEAN_STD[device] = (
            torch.tensor(CIFAR10_MEAN, device=device).view(1, 3, 1, 1),
            torch.tensor(CIFAR10_STD, device=device).view(1, 3, 1, 1),
        )
    return _MEAN_STD[device]


def normalize(images: Tensor) -> Tensor:
    """uint8 NCHW -> float, normalised with the CIFAR-10 mean and std."""
    mean, std = _mean_std(images.device)
    return (images.float() / 255 - mean) / std


def crop_flip(images: Tensor, offsets: Tensor, flips: Tensor) -> Tensor:
    """Batched zero-pad-4 random crop and horizontal flip of uint8 NCHW images.

    offsets: (N, 2) crop corner (row, col) in [0, 2*pad]; flips: (N,) bool.
    """
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (CROP_PADDING,) * 4)
    rows = offsets[:, 0, None] + torch.arange(h, device=images.device)
    cols = offsets[:, 1, None] + torch.arange(w, device=images.device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=images.device)[:, None, None]
    # Advanced indexing puts the indexed dims first: (N, H, W, C) -> NCHW.
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


@dataclass
class EpochPlan:
    order: Tensor
    offsets: Tensor
    flips: Tensor


class TensorBatchLoader:
    """Iterates (images, labels) batches from uint8 tensors, augmenting on their device.

    Each epoch's shuffle and augmentation draw from a generator seeded by (seed, epoch), so batch b
    of epoch e is a pure function of (seed, e, b). Resumable: `state_dict()` holds the epoch and the
    number of its batches already trained, and after `load_state_dict()` the next `iter()` of that
    epoch starts at the first batch not trained, so a run resumed mid-epoch sees exactly the
    batches, crops and flips the uninterrupted run saw. Lightning stores this state in its
    checkpoints (`lightning_fabric.utilities.types._Stateful`).

    `position_fn` says how far training got, as (epoch, batches trained in it). The batches a loader
    has yielded are not that: Lightning's data fetcher runs one batch ahead. Without it (outside a
    trainer) the yielded count is used.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool,
        seed: int,
        epoch_fn: Callable[[], int] = lambda: 0,
        position_fn: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.seed, self.epoch_fn, self.position_fn = seed, epoch_fn, position_fn
        self._yielded = (0, 0)
        self._resume_at: tuple[int, int] | None = None

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def plan(self, epoch: int) -> EpochPlan:
        n = len(self.labels)
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        offsets = torch.randint(0, 2 * CROP_PADDING + 1, (n, 2), generator=gen)
        flips = torch.rand(n, generator=gen) < 0.5
        device = self.images.device
        return EpochPlan(order.to(device), offsets.to(device), flips.to(device))

    def _identity(self) -> dict[str, int]:
        return {"seed": self.seed, "num_samples": len(self.labels), "batch_size": self.batch_size}

    def state_dict(self) -> dict[str, Any]:
        epoch, done = self.position_fn() if self.position_fn is not None else self._yielded
        return {"epoch": int(epoch), "batches_done": int(done), **self._identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = {key: state.get(key) for key in self._identity()}
        if saved != self._identity():
            raise ValueError(
                f"the checkpoint's training data order was made for {saved}, this run has "
                f"{self._identity()}: resume it with the data settings it started with"
            )
        self._resume_at = (int(state["epoch"]), int(state["batches_done"]))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch = self.epoch_fn()
        first = 0
        if self._resume_at is not None:
            resume_epoch, done = self._resume_at
            self._resume_at = None
            first = done if resume_epoch == epoch else 0
        plan = self.plan(epoch)
        for batch in range(first, len(self)):
            idx = plan.order[batch * self.batch_size : (batch + 1) * self.batch_size]
            images = self.images[idx]
            if self.augment:
                images = crop_flip(images, plan.offsets[idx], plan.flips[idx])
            self._yielded = (epoch, batch + 1)
            yield normalize(images), self.labels[idx]


class CifarDataModule(pl.LightningDataModule):
    """Train/validation split of a CIFAR-shaped source, served by TensorBatchLoader."""

    def __init__(
        self,
        source: Cifar10Source | SyntheticSource,
        batch_size: int = 128,
        val_size: int = 5000,
        split_seed: int = 0,
        augment: bool = True,
        device_resident: str | bool = "auto",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.source, self.batch_size, self.val_size = source, batch_size, val_size
        self.split_seed, self.augment, self.seed = split_seed, augment, seed
        self.device_resident = device_resident
        self._train: tuple[Tensor, Tensor] | None = None
        self._val: tuple[Tensor, Tensor] | None = None

    def prepare_data(self) -> None:
        self.source.prepare()

    def _device(self) -> torch.device:
        root = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        resident = root.type == "cuda" if self.device_resident == "auto" else bool(self.device_resident)
        return root if resident else torch.device("cpu")

    def setup(self, stage: str | None = None) -> None:
        if self._train is not None:
            return
        images, labels = self.source.load()
        train_idx, val_idx = split_indices(len(labels), self.val_size, self.split_seed)
        device = self._device()
        self._train = (images[train_idx].to(device), labels[train_idx].to(device))
        self._val = (images[val_idx].to(device), labels[val_idx].to(device))

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def _trained(self) -> tuple[int, int]:
        """(epoch, batches of it trained): Lightning's own progress, which it restores on resume."""
        assert self.trainer is not None
        return self.trainer.current_epoch, self.trainer.fit_loop.epoch_loop.batch_progress.current.completed

    def train_dataloader(self) -> TensorBatchLoader:
        assert self._train is not None, "setup() first"
        return TensorBatchLoader(
            *self._train,
            self.batch_size,
            shuffle=True,
            augment=self.augment,
            seed=self.seed,
            epoch_fn=self._epoch,
            position_fn=self._trained if self.trainer is not None else None,
        )

    def val_dataloader(self) -> TensorBatchLoader:
        assert self._val is not None, "setup() first"
        return TensorBatchLoader(*self._val, self.batch_size, shuffle=False, augment=False, seed=0)

    def fixed_batch(self, size: int, seed: int) -> tuple[Tensor, Tensor]:
        """Un-augmented, normalised training samples chosen by `seed` alone: the same for every run."""
        if self._train is None:
            self.setup()
        assert self._train is not None
        images, labels = self._train
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(labels), generator=gen)[:size].to(images.device)
        return normalize(images[idx]).cpu(), labels[idx].cpu()
