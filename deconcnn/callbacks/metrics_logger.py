"""The metric log's Lightning face: a Logger that stamps records and reports checkpoint sizes.

Records come from the callbacks through `record()`, not from `self.log`: Lightning's
`log_every_n_steps` thins what reaches `log_metrics`, and the per-batch stream must not be thinned.
It is a Logger rather than a Callback because `Logger.after_save_checkpoint` is the only Lightning hook
that runs after a checkpoint file exists on disk (`Callback.on_save_checkpoint` runs before the write).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_only

from deconcnn.runlog.metrics_log import METRICS_LOG_STATE, MetricsLog

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
        super().__init__()
        self.run_dir = Path(run_dir)
        self._log: MetricsLog | None = None
        self._batches_done = 0
        self.trainer: pl.Trainer | None = None  # bound by find_metrics_logger; Loggers get no trainer

    @property
    def log(self) -> MetricsLog:
        if self._log is None:
            self._log = MetricsLog(self.run_dir)
        return self._log

    def note_batch_done(self, batches_done_in_epoch: int) -> None:
        """Training progress inside the epoch, for the epoch_frac of records made between batches."""
        self._batches_done = batches_done_in_epoch

    def record(self, kind: str, trainer: pl.Trainer, *, step: int | None = None,
               batches_done_in_epoch: int | None = None, **metrics: Any) -> None:
        """Queue one record of `kind`, stamped with step, epoch, epoch_frac and wall-clock time."""
        done = self._batches_done if batches_done_in_epoch is None else batches_done_in_epoch
        epoch, epoch_frac = epoch_position(trainer, done)
        self.log.append({
            "kind": kind,
            "step": trainer.global_step if step is None else step,
            "epoch": epoch,
            "epoch_frac": epoch_frac,
            "time": time.time(),
            **metrics,
        })

    def flush(self) -> list[dict[str, Any]]:
        return self.log.flush()

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
        self.record("checkpoint", self.trainer, checkpoint_size_mb=path.stat().st_size / MEGABYTE,
                    path=os.path.relpath(path, self.run_dir))
        self.flush()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def find_metrics_logger(trainer: pl.Trainer) -> MetricsJsonlLogger:
    """The run's metric log; binds the trainer to it, so checkpoint records can be stamped."""
    for logger in trainer.loggers:
        if isinstance(logger, MetricsJsonlLogger):
            logger.trainer = trainer
            return logger
    raise RuntimeError("no MetricsJsonlLogger among trainer.loggers: the metric log is not set up")


class MetricsLogPosition(Callback):
    """Stores the metric log's size in every checkpoint, flushed and fsynced first: the point a
    resumed attempt cuts the log back to (deconcnn.runlog.metrics_log.truncate_to_resume_point)."""

    def __init__(self, logger: MetricsJsonlLogger) -> None:
        self.logger = logger

    @property
    def state_key(self) -> str:
        return METRICS_LOG_STATE

    def state_dict(self) -> dict[str, Any]:
        return {"offset": self.logger.log.sync()}
