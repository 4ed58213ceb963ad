"""The fixed, un-augmented batch a monitor measures on: the same samples for every run of a grid."""

from __future__ import annotations

import pytorch_lightning as pl
from torch import Tensor


class FixedBatch:
    """Drawn once from `trainer.datamodule.fixed_batch(size, seed)`, kept on the model's device."""

    def __init__(self, size: int, seed: int, user: str) -> None:
        self.size, self.seed, self.user = size, seed, user
        self._batch: tuple[Tensor, Tensor] | None = None

    def get(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[Tensor, Tensor]:
        if self._batch is None or self._batch[0].device != pl_module.device:
            datamodule = getattr(trainer, "datamodule", None)
            if datamodule is None or not hasattr(datamodule, "fixed_batch"):
                raise RuntimeError(f"{self.user} needs trainer.datamodule.fixed_batch(size, seed)")
            images, labels = datamodule.fixed_batch(self.size, self.seed)
            self._batch = (images.to(pl_module.device), labels.to(pl_module.device))
        return self._batch
