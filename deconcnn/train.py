"""deconcnn-train: the Hydra app for one instrumented run.

Composes the config, instantiates everything by `_target_`, resumes from `last.ckpt` when the run
directory has one, fits, and keeps `run.json` saying how the run ended.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from lightning_fabric.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.callbacks import Callback

from deconcnn.callbacks.loss_slope_logger import TrainingDiverged
from deconcnn.runconfig import CONF_DIR, ConfigError, check_config
from deconcnn.runlog.metrics_log import METRICS_FILE, truncate_for_resume
from deconcnn.runlog.metrics_reader import iter_records
from deconcnn.runlog.run_status import RunStatusFile
from deconcnn.training.data import DataNotFoundError
from deconcnn.training.module import ImageClassifier

LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


def checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def build_run(cfg: DictConfig, extra_callbacks: Sequence[Callback] = ()
              ) -> tuple[pl.LightningDataModule, ImageClassifier, pl.Trainer]:
    """Data, module and trainer of a run, exactly as `train` uses them (the throughput probe too)."""
    check_config(cfg)
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # fail on missing data before anything is marked running
    module = ImageClassifier(instantiate(cfg.model), instantiate(cfg.optim),
                             warmup_epochs=cfg.schedule.warmup_epochs, channels_last=cfg.channels_last)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    # Under SLURM the sweep's job runner owns requeueing; Lightning's own SIGUSR1 requeue would be a
    # second handler racing it (submitit #1709), so it is switched off.
    plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=[*callbacks, *extra_callbacks], plugins=plugins,
                                      logger=[instantiate(cfg.metrics_log)])
    return datamodule, module, trainer


def train(cfg: DictConfig) -> str:
    """Run one training run to its end; returns the final status written to run.json."""
    run_dir = Path(cfg.run_dir)
    datamodule, module, trainer = build_run(cfg)

    ckpt = run_dir / LAST_CHECKPOINT
    resume_step = None
    if cfg.resume and ckpt.is_file():
        resume_step = checkpoint_step(ckpt)
        if (run_dir / METRICS_FILE).exists():
            truncate_for_resume(run_dir, resume_step, list(iter_records(run_dir / METRICS_FILE)))
    status = RunStatusFile(run_dir, cfg.run_id)
    status.start(resumed_from_step=resume_step)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt if resume_step is not None else None)
    except TrainingDiverged as diverged:
        status.finish("diverged", diverged.step, diverged_step=diverged.step)
        print(f"deconcnn-train: run diverged at step {diverged.step} ({run_dir})", file=sys.stderr)
        return "diverged"
    except SIGTERMException:
        status.finish("failed", trainer.global_step, error="terminated by SIGTERM (preempted, requeued or cancelled)")
        raise
    except BaseException as error:
        status.finish("failed", trainer.global_step, error=f"{type(error).__name__}: {error}")
        raise
    status.finish("completed", trainer.global_step)
    return "completed"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> Any:
    try:
        return train(cfg)
    except (ConfigError, DataNotFoundError) as error:
        print(f"deconcnn-train: error: {error}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
