"""Data, module and trainer of one run, from its composed config: what `deconcnn-train` fits and
what the throughput probe times."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pytorch_lightning as pl
from hydra.utils import instantiate
from lightning_fabric.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback

from deconcnn.callbacks.metrics_logger import MetricsLogPosition
from deconcnn.runconfig import check_config
from deconcnn.runlog.rundir import RunDirIdentity
from deconcnn.training.checkpoints import AtomicCheckpointIO
from deconcnn.training.loggers import logger_specs, make_loggers
from deconcnn.training.module import ImageClassifier


def build_run(
    cfg: DictConfig,
    extra_callbacks: Sequence[Callback] = (),
    checkpoint_step: int | None = None,
    run_dir: RunDirIdentity | None = None,
) -> tuple[pl.LightningDataModule, ImageClassifier, pl.Trainer]:
    """`checkpoint_step`: the step of the checkpoint the run resumes from, None from step 0 (the
    loggers drop what an earlier attempt logged after it). `run_dir`: the directory the run started
    in; no checkpoint is written once it was deleted or replaced."""
    check_config(cfg)
    loggers = make_loggers(logger_specs(cfg), checkpoint_step)  # a missing package fails before any data loads
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # fail on missing data before the first step
    module = ImageClassifier(
        instantiate(cfg.model),
        instantiate(cfg.optim),
        warmup_epochs=cfg.schedule.warmup_epochs,
        channels_last=cfg.channels_last,
    )
    metrics_log = instantiate(cfg.metrics_log)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    plugins: list[object] = [AtomicCheckpointIO(run_dir)]
    # Under SLURM the sweep's job runner owns requeueing; Lightning's own SIGUSR1 requeue would be a
    # second handler racing it (submitit #1709), so it is switched off.
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    # trainer.logger (a Lightning user's way to add one) is among the loggers already.
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(trainer_cfg, dict)
    trainer_cfg.pop("logger", None)
    trainer: pl.Trainer = instantiate(
        trainer_cfg,
        callbacks=[*callbacks, MetricsLogPosition(metrics_log), *extra_callbacks],
        plugins=plugins,
        logger=[metrics_log, *loggers],
    )
    config = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))  # a DictConfig: a dict
    for logger in loggers:  # the composed config, as W&B's config, MLflow's params, TensorBoard's hparams
        logger.log_hyperparams(config)
    return datamodule, module, trainer
