"""NoiseMonitor: loss-curve and gradient noise every `log_every_n_epochs` epochs.

Per-batch losses go into a ring buffer on the device (no host sync per batch); at the end of
epochs n, 2n, ... the window is copied to the host once and the metrics of deconcnn.metrics.noise
are logged as a `noise` record.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor

from deconcnn.callbacks.metrics_logger import find_metrics_logger
from deconcnn.metrics.noise import loss_noise, per_sample_gradient_noise


class NoiseMonitor(Callback):
    def __init__(self, log_every_n_epochs: int = 2, window: int = 512, grad_batch_size: int = 64,
                 grad_batch_seed: int = 0, chunk_size: int = 32) -> None:
        if log_every_n_epochs < 1 or window < 2 or grad_batch_size < 2:
            raise ValueError("NoiseMonitor needs log_every_n_epochs >= 1, window >= 2, grad_batch_size >= 2")
        self.log_every_n_epochs, self.window = log_every_n_epochs, window
        self.grad_batch_size, self.grad_batch_seed, self.chunk_size = grad_batch_size, grad_batch_seed, chunk_size
        self._losses: Tensor | None = None
        self._steps = np.zeros(window, dtype=np.int64)
        self._count = 0
        self._batch: tuple[Tensor, Tensor] | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"].detach()
        if self._losses is None:
            self._losses = torch.zeros(self.window, dtype=loss.dtype, device=loss.device)
        slot = self._count % self.window
        self._losses[slot] = loss
        self._steps[slot] = trainer.global_step - 1  # the step this batch performed
        self._count += 1

    def _window(self) -> tuple[np.ndarray, np.ndarray]:
        n = min(self._count, self.window)
        if n == 0 or self._losses is None:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        order = np.argsort(self._steps[:n]) if self._count > self.window else np.arange(n)
        losses = self._losses[:n].double().cpu().numpy()  # the one host copy per record
        return self._steps[:n][order], losses[order]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.log_every_n_epochs:
            return
        steps, losses = self._window()
        curve = loss_noise(steps, losses)
        grads = self._gradient_noise(trainer, pl_module)
        reasons = [r for r in (curve.reason, grads.reason) if r]
        find_metrics_logger(trainer).record(
            "noise", trainer, batches_done_in_epoch=trainer.num_training_batches,
            n_losses=curve.n_losses, resid_power=curve.resid_power, psd_tail=curve.psd_tail,
            psd_tail_ratio=curve.psd_tail_ratio, detrend_slope=curve.detrend_slope,
            grad_var=grads.grad_var, grad_trace_cov=grads.trace_cov,
            grad_mean_sq_norm=grads.mean_grad_sq_norm, noise_scale=grads.noise_scale,
            grad_batch_size=grads.n_samples, reason="; ".join(reasons) or None)

    def _gradient_noise(self, trainer: pl.Trainer, pl_module: pl.LightningModule):  # type: ignore[no-untyped-def]
        if self._batch is None:
            images, labels = trainer.datamodule.fixed_batch(self.grad_batch_size, self.grad_batch_seed)
            self._batch = (images.to(pl_module.device), labels.to(pl_module.device))
        model = pl_module.model
        was_training = model.training
        model.eval()  # per-sample gradients need per-sample BN: running statistics, left untouched
        try:
            with torch.enable_grad():
                return per_sample_gradient_noise(model, pl_module.criterion, *self._batch, self.chunk_size)
        finally:
            model.train(was_training)
