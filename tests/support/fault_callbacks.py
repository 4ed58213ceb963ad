"""Callbacks that make a run end the ways real runs do, and one that watches gradients, for tests."""

from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from deconcnn.runlog.atomic import write_with


class KillAtStep(Callback):
    """SIGKILL the training process when it starts the batch of `step` (a node dying, an OOM kill)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class RaiseAtStep(Callback):
    def __init__(self, step: int, message: str = "injected failure") -> None:
        self.step, self.message = step, message

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(self.message)


class GradNormWitness(Callback):
    """Records the pre-clipping gradient norm at every optimizer step, computed independently."""

    def __init__(self) -> None:
        self.norms: dict[int, float] = {}

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        flat = torch.cat([p.grad.flatten() for p in pl_module.parameters() if p.grad is not None])
        self.norms[trainer.global_step] = float(flat.double().norm())


class KillDuringCheckpointWrite(Callback):
    """SIGKILL the process halfway through writing `name` at `step`, through the run's own atomic
    checkpoint writer (a node dying while a checkpoint is written)."""

    def __init__(self, step: int, name: str = "last.ckpt") -> None:
        self.step, self.name = step, name

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        checkpoint_io = trainer.strategy.checkpoint_io
        save = checkpoint_io.save_checkpoint

        def save_or_die(checkpoint: dict, path: str, storage_options: object = None) -> None:
            if checkpoint["global_step"] != self.step or Path(path).name != self.name:
                return save(checkpoint, path, storage_options)

            def half_then_kill(handle: object) -> None:
                buffer = io.BytesIO()
                torch.save(checkpoint, buffer)
                handle.write(buffer.getvalue()[: buffer.tell() // 2])
                handle.flush()
                os.kill(os.getpid(), signal.SIGKILL)

            write_with(Path(path), half_then_kill)

        checkpoint_io.save_checkpoint = save_or_die


class SleepEachStep(Callback):
    """Makes every training step take at least `seconds`, so a fault test can hit a run mid-training."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args: object) -> None:
        time.sleep(self.seconds)


class CutLogAtStep(Callback):
    """Empties the run's metric log when the batch of `step` starts, as a hand or a tool cutting the
    file would (its writer keeps appending)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.truncate(Path(trainer.default_root_dir) / "metrics.jsonl", 0)
