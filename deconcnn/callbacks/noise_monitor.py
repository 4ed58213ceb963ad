"""NoiseMonitor: loss-curve and gradient noise at the end of every ``log_every_n_epochs``-th epoch.

A thin Lightning wrapper over :mod:`deconcnn.metrics.noise` (estimators documented there and in
docs/metrics.md).

- Every training batch: the detached loss goes into a ring buffer of the last ``window`` (512)
  losses on the device (one device-side copy, no host sync), with the batch's step (optimizer steps
  completed after the batch, i.e. the update it performed, >= 1) kept on the host.
- At the end of epochs n, 2n, ... (``(trainer.current_epoch + 1) % n == 0`` in
  ``on_train_epoch_end``): the window is copied to the host once; ``resid_power`` and ``psd_tail``
  come from the power-law-detrended log losses, ``grad_var`` / ``noise_scale`` from per-sample
  gradients on a fixed batch: the ``batch`` argument if given, else
  ``trainer.datamodule.fixed_batch(grad_batch_size, grad_batch_seed)`` (in this project un-augmented
  training images). ``n_losses`` says how many losses were used (fewer than ``window`` early on);
  a value that cannot be computed is ``None`` and ``reason`` says why.

The loss of a batch is what ``training_step`` returned (a dict's "loss", or a plain tensor; see
LossSlopeLogger). The network of the gradient statistics is ``pl_module.model`` (or the attribute
``model_attr`` names), else the LightningModule itself; the per-sample loss is ``criterion``, else
``pl_module.criterion``, else cross-entropy (nats).

Logging: one ``noise`` record per schedule point through ``log_record`` (see
deconcnn.callbacks.metrics_logger): whole to a ``MetricsJsonlLogger``, as ``noise/<key>`` floats
(strings and None left out) to every other logger in ``trainer.loggers``, unthinned.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor, nn

from deconcnn.callbacks.fixed_batch import BatchSource, FixedBatch, measured_criterion, measured_model
from deconcnn.callbacks.loss_slope_logger import loss_and_accuracy
from deconcnn.callbacks.metrics_logger import log_record
from deconcnn.metrics.noise import GradBNMode, GradMethod, gradient_noise, loss_noise_metrics


class NoiseMonitor(Callback):
    """Logs a ``noise`` record after every ``log_every_n_epochs``-th epoch (see module doc)."""

    def __init__(
        self,
        log_every_n_epochs: int = 2,
        window: int = 512,
        min_points: int = 32,
        tail_fraction: float = 0.25,
        grad_batch_size: int = 128,
        grad_batch_seed: int = 0,
        grad_method: GradMethod = "backpack",
        grad_bn_mode: GradBNMode = "batch_stats_frozen",
        chunk_size: int = 32,
        with_grad_noise: bool = True,
        batch: BatchSource | None = None,
        model_attr: str | None = "model",
        criterion: nn.Module | None = None,
    ) -> None:
        """
        Args:
            log_every_n_epochs: a record after every epoch whose 1-based number is a multiple of
                this (default 2 epochs).
            window: the last this many per-batch training losses make the loss-noise statistics
                (default 512 batches; >= 2).
            min_points: fewer losses in the window than this (default 32) leave the loss-noise
                values null, with a reason.
            tail_fraction: ``psd_tail`` is the power in the top this fraction of the Welch
                frequency axis (default 0.25, i.e. [0.375, 0.5] cycles/batch).
            grad_batch_size: samples in the batch of the gradient statistics, drawn with
                ``fixed_batch`` or a ``batch`` callable (default 128; >= 2).
            grad_batch_seed: seed of that draw (default 0).
            grad_method: "backpack" (default: BackPACK SumGradSquared) or "vmap" (torch.func
                per-sample gradients); same numbers.
            grad_bn_mode: "batch_stats_frozen" (default: BatchNorm normalises by the batch's
                statistics, held fixed) or "eval" (running statistics).
            chunk_size: samples per vmap call with ``grad_method="vmap"`` (default 32).
            with_grad_noise: compute the gradient statistics at all (default True); False leaves
                them null with a reason and needs no batch.
            batch: the batch of the gradient statistics, ``(inputs, labels)`` or a callable
                ``(grad_batch_size, grad_batch_seed) -> (inputs, labels)``; None (default) =
                ``trainer.datamodule.fixed_batch(grad_batch_size, grad_batch_seed)``. A pair is
                used as given (``grad_batch_size`` and ``grad_batch_seed`` do not apply to it).
            model_attr: the LightningModule attribute holding the network (default "model");
                None, or an attribute that is not an ``nn.Module``: the LightningModule itself.
            criterion: the loss, an ``nn.Module`` class with a ``reduction`` argument (it is
                re-instantiated with reduction "sum" / "mean"); None (default) =
                ``pl_module.criterion`` if it is an ``nn.Module``, else ``nn.CrossEntropyLoss()``.
        """
        super().__init__()
        if log_every_n_epochs < 1 or window < 2 or grad_batch_size < 2:
            raise ValueError("NoiseMonitor needs log_every_n_epochs >= 1, window >= 2, grad_batch_size >= 2")
        self.every, self.window = int(log_every_n_epochs), int(window)
        self.min_points, self.tail_fraction = int(min_points), float(tail_fraction)
        self.grad_batch_size, self.grad_batch_seed = int(grad_batch_size), int(grad_batch_seed)
        self.grad_method, self.grad_bn_mode, self.chunk_size = grad_method, grad_bn_mode, chunk_size
        self.with_grad_noise = with_grad_noise
        self._losses: Tensor | None = None
        self._steps = np.zeros(self.window, dtype=np.int64)
        self._count = 0
        self._batch = FixedBatch(self.grad_batch_size, self.grad_batch_seed, "NoiseMonitor", batch)
        self.model_attr, self.criterion = model_attr, criterion

    # ---- per batch: ring buffer on the device ----
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss, _ = loss_and_accuracy(outputs)
        if loss is None:
            return  # a skipped batch (training_step returned None)
        if self._losses is None:
            self._losses = torch.zeros(self.window, dtype=torch.float32, device=loss.device)
        elif self._losses.device != loss.device:  # restored from a checkpoint on the CPU
            self._losses = self._losses.to(loss.device)
        slot = self._count % self.window
        self._losses[slot] = loss  # device-side copy; no .item()
        self._steps[slot] = trainer.global_step
        self._count += 1

    def _window(self) -> tuple[np.ndarray, np.ndarray]:
        n = min(self._count, self.window)
        if n == 0 or self._losses is None:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        start = self._count % self.window if self._count > self.window else 0
        order = (np.arange(n) + start) % self.window  # oldest first
        losses = self._losses[:n].double().cpu().numpy()  # the one host copy per record
        return self._steps[:n][order], losses[order]

    # ---- every n epochs: one record ----
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every != 0:
            return
        steps, losses = self._window()
        curve = loss_noise_metrics(steps, losses, min_points=self.min_points, tail_fraction=self.tail_fraction)
        grads = self._gradient_noise(trainer, pl_module) if self.with_grad_noise else {}
        reasons = [r for r in (curve.pop("noise_reason"), grads.get("grad_noise_reason")) if r]
        if not self.with_grad_noise:
            reasons.append("gradient noise disabled (with_grad_noise=false)")
        if trainer.global_rank != 0:
            return
        slope, intercept = curve.pop("trend_slope"), curve.pop("trend_intercept")
        record = {
            **curve,
            "detrend_slope": slope,
            "detrend_intercept": intercept,
            "grad_var": grads.get("grad_var"),
            "grad_trace_cov": grads.get("tr_sigma"),
            "grad_mean_sq_norm": grads.get("grad_mean_sq_norm"),
            "noise_scale": grads.get("noise_scale"),
            "noise_scale_biased": grads.get("noise_scale_biased"),
            "grad_batch_size": grads.get("grad_noise_n", self.grad_batch_size),
            "grad_noise_method": grads.get("grad_noise_method"),
            "grad_bn_mode": grads.get("grad_noise_bn_mode"),
            "noise_seconds": grads.get("grad_noise_seconds"),
            "reason": "; ".join(reasons) or None,
        }
        # Every batch of the epoch is done; an unsized loader has inf of them, and its epoch_frac is the epoch.
        done = trainer.num_training_batches
        log_record(trainer, "noise", batches_done_in_epoch=None if math.isinf(done) else int(done), **record)

    def _gradient_noise(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        return gradient_noise(
            measured_model(pl_module, self.model_attr),
            self._batch.get(trainer, pl_module),
            measured_criterion(pl_module, self.criterion),
            bn_mode=self.grad_bn_mode,
            method=self.grad_method,
            vmap_chunk=self.chunk_size,
        )

    def state_dict(self) -> dict[str, Any]:
        # The loss window survives a resume (512 floats), so the first record after it is full.
        n = min(self._count, self.window)
        losses = self._losses[:n].detach().cpu() if self._losses is not None else torch.zeros(0)
        # Tensors only: Lightning loads checkpoints with torch.load(weights_only=True), which refuses numpy.
        return {"count": self._count, "steps": torch.from_numpy(self._steps.copy()), "losses": losses}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._count = int(state_dict.get("count", 0))
        steps = np.asarray(state_dict.get("steps", np.zeros(self.window, dtype=np.int64)))
        self._steps[: min(len(steps), self.window)] = steps[: self.window]
        losses = state_dict.get("losses")
        if isinstance(losses, Tensor) and losses.numel():
            self._losses = torch.zeros(self.window, dtype=torch.float32)
            self._losses[: losses.numel()] = losses.float()
