"""Any LightningDataModule whose batches are (inputs, labels)."""

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


class BlobsDataModule(pl.LightningDataModule):
    """Gaussian blobs, one per class; a quarter of the points for validation."""

    def __init__(self, num_samples: int = 512, dim: int = 16, num_classes: int = 4, batch_size: int = 32) -> None:
        super().__init__()
        self.num_samples, self.dim, self.num_classes, self.batch_size = num_samples, dim, num_classes, batch_size

    def setup(self, stage: str | None = None) -> None:
        g = torch.Generator().manual_seed(0)  # the same data for every run
        centers = 2.0 * torch.randn(self.num_classes, self.dim, generator=g)
        labels = torch.randint(self.num_classes, (self.num_samples,), generator=g)
        points = centers[labels] + torch.randn(self.num_samples, self.dim, generator=g)
        n_val = self.num_samples // 4
        self.train_set = TensorDataset(points[n_val:], labels[n_val:])
        self.val_set = TensorDataset(points[:n_val], labels[:n_val])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def fixed_batch(self, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples the curvature and noise monitors measure on: the same for every run."""
        if not hasattr(self, "train_set"):
            self.setup()
        points, labels = self.train_set.tensors
        idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:size]
        return points[idx], labels[idx]
