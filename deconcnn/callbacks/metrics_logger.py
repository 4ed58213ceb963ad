"""How the callbacks log: `log_record` sends each record to every logger in `trainer.loggers`.

- A `MetricsJsonlLogger` (this project's metric log, `<run_dir>/metrics.jsonl`, the source of truth)
  gets every record whole: kind, stamps, every key of docs/metrics.md (strings and nulls included),
  with 0-dim device tensors kept on the device until its next flush (one host copy per flush).
- Any other Lightning logger (CSV, TensorBoard, W&B, ...) gets, as Lightning's own
  `LearningRateMonitor` feeds it, `log_metrics({"<kind>/<key>": float}, step=<the record's step>)`:
  numeric values only, bools as 0/1 (whether an estimate converged is worth plotting), strings and
  None left out. Per-batch records (`train`) reach it only at the batches where `step + 1` is a
  multiple of `trainer.log_every_n_steps`, as Lightning thins its own logging; those values are
  copied to the host then (one copy per record).

With no `MetricsJsonlLogger` the callbacks log to the other loggers only, and with no logger at all
they measure and log nothing anywhere (no error). Records do not go through `self.log`: Lightning
would thin the per-batch stream the loss-curve fits need whole.

`MetricsJsonlLogger` is a Logger rather than a Callback because `Logger.after_save_checkpoint` is
the only Lightning hook that runs after a checkpoint file exists on disk (`Callback.on_save_checkpoint`
runs before the write).
"""

from __future__ import annotations

import os
import time
from numbers import Real
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor

from deconcnn.runlog.metrics_log import METRICS_LOG_STATE, MetricsLog, host_values

MEGABYTE = 1024 * 1024


def epoch_position(trainer: pl.Trainer, batches_done_in_epoch: int) -> tuple[int, float]:
    """(epoch, epoch_frac) after `batches_done_in_epoch` batches of the current epoch."""
    per_epoch = trainer.num_training_batches
    epoch = trainer.current_epoch
    if not per_epoch or per_epoch == float("inf"):
        return epoch, float(epoch)
    return epoch, epoch + batches_done_in_epoch / per_epoch


@runtime_checkable
class RecordsSavedPath(Protocol):
    """A CheckpointIO that keeps the path of the file it wrote last (deconcnn's AtomicCheckpointIO).

    `checkpoint` records need it: ModelCheckpoint has no public attribute naming the file it just
    wrote (a top-k save is not necessarily `best_model_path`, nor `kth_best_model_path`).
    """

    last_saved_path: Path | None


class MetricsJsonlLogger(Logger):
    """Writes `<run_dir>/metrics.jsonl`; see docs/metrics.md for every key."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        """
        Args:
            run_dir: the run's directory; the log is `<run_dir>/metrics.jsonl` (appended to, created
                with its directory on the first record) and `checkpoint` records give their `path`
                relative to it.
        """
        super().__init__()
        self.run_dir = Path(run_dir)
        self._log: MetricsLog | None = None
        self._batches_done = 0
        self.trainer: pl.Trainer | None = None  # bound by metrics_logs(); Loggers get no trainer

    @property
    def log(self) -> MetricsLog:
        if self._log is None:
            self._log = MetricsLog(self.run_dir)
        return self._log

    def record(
        self,
        kind: str,
        trainer: pl.Trainer,
        *,
        step: int | None = None,
        batches_done_in_epoch: int | None = None,
        **metrics: Any,
    ) -> None:
        """Queue one record of `kind`, stamped with step, epoch, epoch_frac and wall-clock time.

        `batches_done_in_epoch` (training batches of the current epoch done when the record is made)
        gives epoch_frac; it also stands for later records made without one (`val` after the last
        `train` record, `checkpoint`).
        """
        if batches_done_in_epoch is not None:
            self._batches_done = batches_done_in_epoch
        epoch, epoch_frac = epoch_position(trainer, self._batches_done)
        self.log.append(
            {
                "kind": kind,
                "step": trainer.global_step if step is None else step,
                "epoch": epoch,
                "epoch_frac": epoch_frac,
                "time": time.time(),
                **metrics,
            }
        )

    def flush(self) -> list[dict[str, Any]]:
        # A log never opened has nothing to write: a run failing before its first record leaves no file.
        return self._log.flush() if self._log is not None else []

    # Lightning Logger interface
    @property
    def name(self) -> str:
        return "metrics_jsonl"

    @property
    def version(self) -> str:
        return self.run_dir.name

    @property
    def save_dir(self) -> str:
        return str(self.run_dir)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Hyperparameters live in the run's Hydra config (.hydra/config.yaml), not in the log."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """`self.log` values are Lightning's (ModelCheckpoint reads them); the log takes callbacks' records."""

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        if self.trainer is None:
            return
        io = self.trainer.strategy.checkpoint_io
        if not isinstance(io, RecordsSavedPath) or io.last_saved_path is None:
            return  # another project's checkpoint IO: no record rather than a guessed file
        path = Path(io.last_saved_path)
        if not path.is_file():
            return
        self.record(
            "checkpoint",
            self.trainer,
            checkpoint_size_mb=path.stat().st_size / MEGABYTE,
            path=os.path.relpath(path, self.run_dir),
        )
        self.flush()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def metrics_logs(trainer: pl.Trainer) -> list[MetricsJsonlLogger]:
    """The trainer's JSONL metric logs (none outside this project), bound to the trainer so that
    checkpoint records can be stamped."""
    logs = [logger for logger in trainer.loggers if isinstance(logger, MetricsJsonlLogger)]
    for log in logs:
        log.trainer = trainer
    return logs


def log_record(
    trainer: pl.Trainer,
    kind: str,
    *,
    step: int | None = None,
    batches_done_in_epoch: int | None = None,
    per_batch: bool = False,
    **metrics: Any,
) -> None:
    """Send one record of `kind` (keys as deconcnn.runlog.schema defines them) to every logger.

    Args:
        trainer: whose `loggers` get the record (see the module doc for what each kind of logger gets).
        kind: the record kind (`train`, `val`, `curvature`, `noise`); also the other loggers' key prefix.
        step: the record's `step` stamp, and the step the other loggers get; default `trainer.global_step`.
        batches_done_in_epoch: training batches of the current epoch done, for the JSONL `epoch_frac`
            stamp; default the latest one a record gave.
        per_batch: a record of every training batch: other loggers get it only when `step + 1` is a
            multiple of `trainer.log_every_n_steps` (never when that is 0); the JSONL log gets all.
        **metrics: the record's keys; 0-dim tensors (on any device), numbers, bools, strings, None.
    """
    step = trainer.global_step if step is None else step
    for log in metrics_logs(trainer):
        log.record(kind, trainer, step=step, batches_done_in_epoch=batches_done_in_epoch, **metrics)
    others = [logger for logger in trainer.loggers if not isinstance(logger, MetricsJsonlLogger)]
    every = trainer.log_every_n_steps  # type: ignore[attr-defined]  # set by Lightning's LoggerConnector, undeclared
    if not others or (per_batch and (every <= 0 or (step + 1) % every != 0)):
        return
    values = {f"{kind}/{key}": value for key, value in metrics.items() if isinstance(value, (Real, Tensor))}
    host_values([values])  # all tensors of the record in one host copy
    numbers = {key: float(value) for key, value in values.items()}
    for logger in others:
        logger.log_metrics(numbers, step=step)


class MetricsLogPosition(Callback):
    """Stores the metric log's size in every checkpoint, flushed and fsynced first: the point a
    resumed attempt cuts the log back to (deconcnn.runlog.metrics_log.truncate_to_resume_point);
    the other loggers are saved then too."""

    def __init__(self, logger: MetricsJsonlLogger) -> None:
        """
        Args:
            logger: the run's metric log, the one among `trainer.loggers` whose size is stored.
        """
        self.logger = logger

    @property
    def state_key(self) -> str:
        return METRICS_LOG_STATE

    def state_dict(self) -> dict[str, Any]:
        return {"offset": self.logger.log.sync()}

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # The other loggers write what they hold too (CSV and TensorBoard buffer for minutes), so
        # what a checkpoint covers is on their disk as well when a kill follows.
        for logger in trainer.loggers:
            if logger is not self.logger:
                logger.save()
