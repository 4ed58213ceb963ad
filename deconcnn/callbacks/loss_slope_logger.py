"""LossSlopeLogger: every batch's loss/accuracy/lr/wd and every validation's loss and norms.

The per-batch stream feeds the loss-curve fits, so it goes to the metric log directly (never through
`self.log`, which `log_every_n_steps` thins), as device tensors flushed every `flush_every_n_steps`.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from torch import Tensor
from torch.optim import Optimizer

from deconcnn.callbacks.metrics_logger import MetricsJsonlLogger, find_metrics_logger
from deconcnn.metrics.norms import global_grad_norm, global_param_norm

LN2 = math.log(2.0)


def nats_to_bits(loss: Tensor) -> Tensor:
    # float64, so the logged bits equal the logged (float32) nats / ln 2 to double precision
    return loss.double() / LN2


def validates_after(trainer: pl.Trainer, batch_idx: int) -> bool:
    """Whether Lightning validates after this training batch (val_check_interval or epoch end)."""
    done = batch_idx + 1
    every = trainer.val_check_batch
    return done == trainer.num_training_batches or (every != float("inf") and done % int(every) == 0)


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, step: int) -> None:
        super().__init__(f"training loss is not finite at step {step}")
        self.step = step


class LossSlopeLogger(Callback):
    def __init__(self, flush_every_n_steps: int = 50, stop_on_divergence: bool = True) -> None:
        if flush_every_n_steps < 1:
            raise ValueError(f"flush_every_n_steps must be >= 1, got {flush_every_n_steps}")
        self.flush_every_n_steps = flush_every_n_steps
        self.stop_on_divergence = stop_on_divergence
        self._lr_wd: tuple[float, float] = (math.nan, math.nan)
        self._step = self._batch_idx = 0
        self._grad_norm: Tensor | None = None
        self._log: MetricsJsonlLogger | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._log = find_metrics_logger(trainer)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        # Read here: the per-step scheduler has already moved on by on_train_batch_end.
        group = trainer.optimizers[0].param_groups[0]
        self._lr_wd = (float(group["lr"]), float(group.get("weight_decay", 0.0)))
        self._step, self._batch_idx = trainer.global_step, batch_idx
        self._log.note_batch_done(batch_idx)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: Optimizer) -> None:
        # Gradients exist here, before clipping; Lightning sets them to None before validation.
        # Only the step right before a validation is logged: taking the norm at every step cost
        # 10-12% of a GPU step in host time (benchmarks/logging_overhead.py).
        if validates_after(trainer, self._batch_idx):
            self._grad_norm = global_grad_norm(pl_module.parameters())

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"].detach()
        lr, wd = self._lr_wd
        self._log.note_batch_done(batch_idx + 1)
        self._log.record("train", trainer, step=self._step, loss_train_nats=loss,
                         loss_train_bits=nats_to_bits(loss), acc_train=outputs["acc"], lr=lr, wd=wd)
        if (self._step + 1) % self.flush_every_n_steps == 0:
            self._flush()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs before ModelCheckpoint's on_validation_end (Lightning orders checkpointing last),
        # so the record is on disk before the checkpoint that follows it.
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        loss = metrics["loss_val_nats"]
        self._log.record("val", trainer, loss_val_nats=loss, loss_val_bits=nats_to_bits(loss),
                         acc_val=metrics["acc_val"],
                         grad_norm=self._grad_norm if self._grad_norm is not None else math.nan,
                         weight_norm=global_param_norm(pl_module.parameters()))
        self._flush()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        # Keep what was measured up to the failure; a second divergence check would only re-raise.
        if self._log is not None:  # None when the failure came before setup
            self._log.flush()

    def _flush(self) -> None:
        written = self._log.flush()
        if not self.stop_on_divergence:
            return
        for record in written:
            if record["kind"] == "train" and not math.isfinite(record["loss_train_nats"]):
                raise TrainingDiverged(record["step"])
