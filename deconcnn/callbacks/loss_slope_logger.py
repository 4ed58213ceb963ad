"""LossSlopeLogger: every batch's loss/accuracy/lr/wd and every validation's loss and norms.

The per-batch stream feeds the loss-curve fits, so it goes to the metric log directly (never through
`self.log`, which `log_every_n_steps` thins), as device tensors flushed every `flush_every_n_steps`.
Other Lightning loggers get it thinned like Lightning's own logging (deconcnn.callbacks.metrics_logger).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor
from torch.optim import Optimizer

from deconcnn.callbacks.metrics_logger import log_record, metrics_logs
from deconcnn.metrics.norms import global_grad_norm, global_param_norm

LN2 = math.log(2.0)


def nats_to_bits(loss: Tensor | None) -> Tensor | None:
    # float64, so the logged bits equal the logged (float32) nats / ln 2 to double precision
    return None if loss is None else loss.double() / LN2


def loss_and_accuracy(outputs: Any) -> tuple[Tensor | None, Any]:
    """(loss, acc) of a training batch from what `training_step` returned (as Lightning passes it
    to `on_train_batch_end`): a dict with "loss" and optionally "acc", or a plain loss tensor.
    A missing value is None: no "acc", or no loss at all (a batch `training_step` skipped)."""
    if isinstance(outputs, Mapping):
        loss, acc = outputs.get("loss"), outputs.get("acc")
    else:
        loss, acc = outputs, None
    return (loss.detach() if isinstance(loss, Tensor) else None), acc


def validates_after(trainer: pl.Trainer, batch_idx: int) -> bool:
    """Whether Lightning validates after this training batch (val_check_interval or epoch end); always
    True for a time-based val_check_interval, since the clock may end any batch."""
    done = batch_idx + 1
    every = trainer.val_check_batch
    if every is None:  # a time-based val_check_interval: Lightning validates on the clock, after any batch
        return True
    return done == trainer.num_training_batches or (every != float("inf") and done % int(every) == 0)


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, step: int) -> None:
        super().__init__(f"training loss is not finite at step {step}")
        self.step = step


class LossSlopeLogger(Callback):
    """Logs a ``train`` record after every training batch and a ``val`` record after every validation.

    Where the values come from (so it works in any Lightning project):

    - loss and accuracy: what ``training_step`` returns, a dict ``{"loss": ..., "acc": ...}`` or a
      plain loss tensor. Without ``"acc"`` the record's ``acc_train`` is null (the key stays); a
      batch without a loss (``training_step`` returned None) gets no record. The loss is Lightning's
      detached copy, which it divides by ``accumulate_grad_batches``.
    - ``lr`` / ``wd``: parameter group 0 of the first optimizer, read in ``on_train_batch_start``.
    - validation: ``trainer.callback_metrics[val_loss_key]`` and ``[val_acc_key]`` (what
      ``validation_step`` logged with ``self.log``); a metric not logged is null.

    Where the records go (deconcnn.callbacks.metrics_logger.log_record): a ``MetricsJsonlLogger``
    gets every record, buffered as device tensors (no host sync per batch); every other logger in
    ``trainer.loggers`` gets ``train/<key>`` and ``val/<key>`` floats, ``train`` only every
    ``trainer.log_every_n_steps`` steps.
    """

    def __init__(
        self,
        flush_every_n_steps: int = 50,
        stop_on_divergence: bool = True,
        val_loss_key: str = "loss_val_nats",
        val_acc_key: str = "acc_val",
    ) -> None:
        """
        Args:
            flush_every_n_steps: write the buffered records to the metric log (and check the
                losses for divergence) after every this many optimizer steps (default 50), besides
                after every validation and at the end of training; each flush is one host sync.
            stop_on_divergence: at each flush, raise `TrainingDiverged` (naming the first step)
                if a buffered training loss is NaN or infinite (default True; the records are
                written first). Costs one host copy of the buffered losses per flush.
            val_loss_key: the `self.log` name of the validation loss, in nats (default
                "loss_val_nats").
            val_acc_key: the `self.log` name of the validation accuracy, 0..1 (default "acc_val").
        """
        if flush_every_n_steps < 1:
            raise ValueError(f"flush_every_n_steps must be >= 1, got {flush_every_n_steps}")
        self.flush_every_n_steps = flush_every_n_steps
        self.stop_on_divergence = stop_on_divergence
        self.val_loss_key, self.val_acc_key = val_loss_key, val_acc_key
        self._lr_wd: tuple[float, float] = (math.nan, math.nan)
        self._step = self._batch_idx = 0
        self._grad_norm: Tensor | None = None
        self._unchecked: list[tuple[int, Tensor]] = []  # (step, loss) not yet checked for divergence

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Read here: the per-step scheduler has already moved on by on_train_batch_end.
        if trainer.optimizers:
            group = trainer.optimizers[0].param_groups[0]
            self._lr_wd = (float(group["lr"]), float(group.get("weight_decay", 0.0)))
        self._step, self._batch_idx = trainer.global_step, batch_idx

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        # Gradients exist here, before clipping; Lightning sets them to None before validation.
        # Only the step right before a validation is logged: taking the norm at every step cost
        # 10-12% of a GPU step in host time (benchmarks/logging_overhead.py).
        if validates_after(trainer, self._batch_idx):
            self._grad_norm = global_grad_norm(pl_module.parameters())

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss, acc = loss_and_accuracy(outputs)
        if loss is None:
            return
        lr, wd = self._lr_wd
        log_record(
            trainer,
            "train",
            step=self._step,
            batches_done_in_epoch=batch_idx + 1,
            per_batch=True,
            loss_train_nats=loss,
            loss_train_bits=nats_to_bits(loss),
            acc_train=acc,
            lr=lr,
            wd=wd,
        )
        if self.stop_on_divergence:
            self._unchecked.append((self._step, loss))
        if (self._step + 1) % self.flush_every_n_steps == 0:
            self._flush(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs before ModelCheckpoint's on_validation_end (Lightning orders checkpointing last),
        # so the record is on disk before the checkpoint that follows it.
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        loss = metrics.get(self.val_loss_key)
        log_record(
            trainer,
            "val",
            loss_val_nats=loss,
            loss_val_bits=nats_to_bits(loss),
            acc_val=metrics.get(self.val_acc_key),
            grad_norm=self._grad_norm if self._grad_norm is not None else math.nan,
            weight_norm=global_param_norm(pl_module.parameters()),
        )
        self._flush(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Keep what was measured up to the failure; a second divergence check would only re-raise.
        for log in metrics_logs(trainer):
            log.flush()

    def _flush(self, trainer: pl.Trainer) -> None:
        for log in metrics_logs(trainer):
            log.flush()
        unchecked, self._unchecked = self._unchecked, []
        if not unchecked:
            return
        finite = torch.stack([loss for _, loss in unchecked]).isfinite().tolist()  # one host copy
        if not all(finite):
            raise TrainingDiverged(unchecked[finite.index(False)][0])
