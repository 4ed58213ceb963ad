"""The Lightning module: cross-entropy in nats, accuracy, optimiser from config, warm-up + cosine."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warm-up from 0 over warmup_steps, then cosine to 0 at total_steps.

    The warm-up multiplier is (step + 1) / warmup_steps so that the first step already moves.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class ImageClassifier(pl.LightningModule):
    def __init__(
        self, model: nn.Module, optimizer: OptimizerFactory, warmup_epochs: float = 5.0, channels_last: bool = False
    ) -> None:
        super().__init__()
        if channels_last:  # Module.to takes memory_format; torch's overloads of it leave it out
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.model = model
        self.channels_last = channels_last
        self.optimizer_factory = optimizer
        self.warmup_epochs = warmup_epochs
        self.criterion = nn.CrossEntropyLoss()

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def _loss_acc(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        images, labels = batch
        logits = self(images)
        loss = self.criterion(logits, labels)
        acc = (logits.argmax(dim=1) == labels).float().mean()
        return loss, acc

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        loss, acc = self._loss_acc(batch)
        return {"loss": loss, "acc": acc.detach()}

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, acc = self._loss_acc(batch)
        n = len(batch[1])
        # Sample-weighted means over the validation set; ModelCheckpoint monitors loss_val_nats.
        self.log("loss_val_nats", loss, on_epoch=True, batch_size=n)
        self.log("acc_val", acc, on_epoch=True, batch_size=n)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        optimizer = self.optimizer_factory(self.parameters())
        per_epoch = self._steps_per_epoch()
        total = per_epoch * max(1, self.trainer.max_epochs or 1)
        warmup = max(1, round(self.warmup_epochs * per_epoch)) if self.warmup_epochs > 0 else 0
        schedule = LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _steps_per_epoch(self) -> int:
        # Not trainer.estimated_stepping_batches: that builds the training loader and starts iterating
        # it here, before Lightning restores a checkpoint, and Lightning then never applies the
        # loader's saved position, so a run resumed mid-epoch would start its epoch over.
        datamodule = self.trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning's DataConnector, undeclared
        if datamodule is None:
            raise RuntimeError("ImageClassifier needs a datamodule (trainer.fit(module, datamodule=...))")
        return -(-len(datamodule.train_dataloader()) // self.trainer.accumulate_grad_batches)
