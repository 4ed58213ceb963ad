"""CurvatureMonitor: lambda_max and Hessian trace of the training loss every N optimizer steps.

A thin Lightning wrapper over :func:`deconcnn.metrics.curvature.curvature_estimates`; the estimators,
their error fields and their cost are documented there and in docs/metrics.md.

Schedule: in ``on_train_batch_start`` when ``trainer.global_step % compute_every_n_steps == 0``, i.e.
at steps 0, N, 2N, ... *before* the batch that performs update ``step + 1`` is trained, so the record
at step s describes the parameters after s optimizer steps. With gradient accumulation the same step
is seen by several batches; it is recorded once.

Curvature batch: the ``batch`` argument if given, else ``trainer.datamodule.fixed_batch(batch_size,
seed)`` (in this project un-augmented training images, the same samples for every run of the grid);
drawn once per run and kept on the module's device. The network is ``pl_module.model`` (or the
attribute ``model_attr`` names), else the LightningModule itself; the loss is ``criterion``, else
``pl_module.criterion``, else the mean cross-entropy (nats).

Logging: one ``curvature`` record per schedule point through ``log_record`` (see
deconcnn.callbacks.metrics_logger): whole to a ``MetricsJsonlLogger``, as ``curvature/<key>`` floats
(bools 0/1, strings left out) to every other logger in ``trainer.loggers``, unthinned.

Estimator state carried from record to record (and checkpointed, so a resumed run writes the
records the uninterrupted run writes, bit for bit on CPU): the previous record's ``rel_var`` (one
trace probe's relative variance), which plans the next record's probe count without a pilot
probe, and with ``warm_start: true`` its top eigenvector, the next Lanczos start (docs/metrics.md).
"""

from __future__ import annotations

import math
from typing import Any, TypedDict

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from torch import Tensor, nn

from deconcnn.callbacks.fixed_batch import BatchSource, FixedBatch, measured_criterion, measured_model
from deconcnn.callbacks.metrics_logger import log_record
from deconcnn.metrics.curvature import (
    CURVATURE_DEFAULTS,
    BNMode,
    TraceMethod,
    curvature_estimates,
    ggn_trace,
)


class _EstimatorSettings(TypedDict):
    """The monitor's settings that go to ``curvature_estimates`` as they are."""

    eig_tol: float
    eig_max_iter: int
    trace_method: TraceMethod
    trace_rel_tol: float
    trace_min_probes: int
    trace_max_probes: int


class CurvatureMonitor(Callback):
    """Logs a ``curvature`` record every ``compute_every_n_steps`` optimizer steps (see module doc)."""

    DEFAULTS: dict[str, Any] = CURVATURE_DEFAULTS

    def __init__(
        self,
        compute_every_n_steps: int = 500,
        batch_size: int = 128,
        seed: int = 0,
        bn_mode: BNMode = "train",
        eig_tol: float = DEFAULTS["eig_tol"],
        eig_max_iter: int = DEFAULTS["eig_max_iter"],
        trace_method: TraceMethod = DEFAULTS["trace_method"],
        trace_rel_tol: float = DEFAULTS["trace_rel_tol"],
        trace_min_probes: int = DEFAULTS["trace_min_probes"],
        trace_max_probes: int = DEFAULTS["trace_max_probes"],
        probe_batch: int | None = None,
        warm_start: bool = False,
        with_ggn_trace: bool = False,
        batch: BatchSource | None = None,
        model_attr: str | None = "model",
        criterion: nn.Module | None = None,
    ) -> None:
        """
        Args:
            compute_every_n_steps: a record at every optimizer step that is a multiple of this
                (default 500 steps), including step 0.
            batch_size: samples in the curvature batch drawn with ``fixed_batch`` or a ``batch``
                callable (default 128).
            seed: seed of that draw (default 0), and base of the probes' seeds (seed + step).
            bn_mode: "train" (default: BatchNorm normalises by the curvature batch's statistics,
                the trained objective; running statistics untouched) or "eval" (running statistics).
            eig_tol: Lanczos stops when ``||Hv - lambda v|| <= eig_tol * |lambda|`` (relative,
                default 0.01).
            eig_max_iter: at most this many Lanczos iterations, i.e. Hessian-vector products
                (default 30).
            trace_method: "auto" (default: exact GGN trace for BN-free ReLU nets, else
                "deflated"), "deflated", "hutchinson" or "ggn_exact".
            trace_rel_tol: target relative standard error of the trace: the probe count is
                planned for it from the previous record (default 0.1).
            trace_min_probes: at least this many Hutchinson probes (default 2).
            trace_max_probes: at most this many Hutchinson probes (default 16).
            probe_batch: trace probes per batched Hessian-vector product; None (default) = 3 on
                CUDA, 1 elsewhere.
            warm_start: start Lanczos from the previous record's top eigenvector (checkpointed).
            with_ggn_trace: also log BackPACK's exact GGN trace, ``ggn_*`` keys (default False).
            batch: the curvature batch, ``(inputs, labels)`` or a callable ``(batch_size, seed) ->
                (inputs, labels)``; None (default) = ``trainer.datamodule.fixed_batch(batch_size,
                seed)``. A pair is used as given (``batch_size`` and ``seed`` do not apply to it).
            model_attr: the LightningModule attribute holding the network measured (default
                "model"); None, or an attribute that is not an ``nn.Module``: the LightningModule
                itself (its ``forward``).
            criterion: the loss, an ``nn.Module`` mapping (outputs, labels) to a mean loss in nats;
                None (default) = ``pl_module.criterion`` if it is an ``nn.Module``, else
                ``nn.CrossEntropyLoss()``.
        """
        super().__init__()
        if compute_every_n_steps < 1:
            raise ValueError(f"compute_every_n_steps must be >= 1, got {compute_every_n_steps}")
        if bn_mode not in ("train", "eval"):
            raise ValueError(f"bn_mode must be 'train' or 'eval', got {bn_mode!r}")
        self.every = int(compute_every_n_steps)
        self.batch_size, self.seed, self.bn_mode = int(batch_size), int(seed), bn_mode
        self.estimator_kwargs: _EstimatorSettings = {
            "eig_tol": eig_tol,
            "eig_max_iter": eig_max_iter,
            "trace_method": trace_method,
            "trace_rel_tol": trace_rel_tol,
            "trace_min_probes": trace_min_probes,
            "trace_max_probes": trace_max_probes,
        }
        # Trace probes per batched HVP: None = 3 on CUDA (measured 12-15% cheaper per record on an
        # H100), 1 elsewhere (batched double-backward was slower on CPU).
        self.probe_batch = probe_batch
        self.warm_start, self.with_ggn_trace = warm_start, with_ggn_trace
        self._batch = FixedBatch(self.batch_size, self.seed, "CurvatureMonitor", batch)
        self.model_attr, self.criterion = model_attr, criterion
        self._v0: Tensor | None = None  # previous record's top eigenvector (warm start)
        self._trace_rel_var: float | None = None  # previous record's trace rel_var (probe count)
        self._last_step: int | None = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step % self.every != 0 or step == self._last_step:
            return
        self._last_step = step
        if trainer.global_rank != 0:
            return
        curv_batch = self._batch.get(trainer, pl_module)
        model = measured_model(pl_module, self.model_attr)
        res = curvature_estimates(
            model,
            curv_batch,
            measured_criterion(pl_module, self.criterion),
            bn_mode=self.bn_mode,
            v0=self._v0 if self.warm_start else None,
            trace_rel_var=self._trace_rel_var,
            seed=self.seed + step,
            probe_batch=self.probe_batch
            if self.probe_batch is not None
            else (3 if curv_batch[0].device.type == "cuda" else 1),
            **self.estimator_kwargs,
        )
        if self.warm_start:
            self._v0 = res.eig.eigenvector
        if res.trace.n_probes and math.isfinite(res.trace.rel_var):
            self._trace_rel_var = res.trace.rel_var
        metrics = res.record()
        if self.with_ggn_trace:
            try:
                metrics.update(ggn_trace(model, curv_batch, bn_mode=self.bn_mode))
                metrics["bn_mode"] = self.bn_mode
            except ValueError as err:
                metrics.update({"ggn_trace": None, "ggn_trace_reason": str(err)})
        # batch_idx batches of this epoch are done: stamp it explicitly (callback order must not
        # matter, e.g. at the first batch of an epoch).
        log_record(trainer, "curvature", step=step, batches_done_in_epoch=batch_idx, **metrics)

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_step": self._last_step,
            "trace_rel_var": self._trace_rel_var,
            "warm_vector": None if self._v0 is None else self._v0.detach().cpu(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_step = state_dict.get("last_step")
        self._trace_rel_var = state_dict.get("trace_rel_var")
        self._v0 = state_dict.get("warm_vector")  # moved to the model's device by lanczos_top_eig
