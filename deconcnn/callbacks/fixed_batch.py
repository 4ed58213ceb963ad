"""What a monitor measures: a fixed batch (the same samples for every run of a grid), the network
and its loss, each from the monitor's arguments or, failing those, from the LightningModule and its
datamodule."""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
from torch import Tensor, nn

Batch = tuple[Tensor, Tensor]
#: A monitor's ``batch`` argument: (inputs, labels), or a callable (size, seed) -> (inputs, labels).
BatchSource = Batch | Callable[[int, int], Batch]


class FixedBatch:
    """Drawn once and kept on the model's device, from (first that exists) the monitor's ``batch``
    argument, else ``trainer.datamodule.fixed_batch(size, seed)``."""

    def __init__(self, size: int, seed: int, user: str, source: BatchSource | None = None) -> None:
        self.size, self.seed, self.user, self.source = size, seed, user, source
        self._batch: Batch | None = None

    def get(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Batch:
        if self._batch is None or self._batch[0].device != pl_module.device:
            inputs, labels = self._draw(trainer)
            self._batch = (inputs.to(pl_module.device), labels.to(pl_module.device))
        return self._batch

    def _draw(self, trainer: pl.Trainer) -> Batch:
        if callable(self.source):
            return self.source(self.size, self.seed)
        if self.source is not None:
            return self.source
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "fixed_batch"):
            return datamodule.fixed_batch(self.size, self.seed)
        raise RuntimeError(
            f"{self.user} has no batch to measure on: pass {self.user}(batch=(inputs, labels)) or "
            f"batch=<callable (size, seed) -> (inputs, labels)>, or give the datamodule a "
            "fixed_batch(size, seed) method"
        )


def measured_model(pl_module: pl.LightningModule, model_attr: str | None) -> nn.Module:
    """``pl_module.<model_attr>`` if that is a module, else the LightningModule itself."""
    model = getattr(pl_module, model_attr, None) if model_attr else None
    return model if isinstance(model, nn.Module) else pl_module


def measured_criterion(pl_module: pl.LightningModule, criterion: nn.Module | None) -> nn.Module:
    """``criterion`` if given, else ``pl_module.criterion`` if that is a module, else the mean
    cross-entropy in nats."""
    if criterion is not None:
        return criterion
    own = getattr(pl_module, "criterion", None)
    return own if isinstance(own, nn.Module) else nn.CrossEntropyLoss()
